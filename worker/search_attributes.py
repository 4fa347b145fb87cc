"""Register the search attributes the workflows upsert (Sha256, ModelName, Stage, all
Keyword) on a real Temporal cluster, through the operator service, with the connection
settings every process uses (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_TLS_*,
TEMPORAL_API_KEY). Attributes already there are left alone; one there with another type
is an error. The dev server of `make up` registers them itself.

    python -m worker.search_attributes
"""

from __future__ import annotations

import asyncio
import os
import sys

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client

from common import search_attributes
from common.config import load_or_exit
from common.temporal import connect

KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def register(client: Client, namespace: str) -> list[str]:
    """Add the missing attributes; returns the names added."""
    wanted = {key.name: KEYWORD for key in search_attributes.ALL}
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace))
    existing = {**dict(listed.system_attributes), **dict(listed.custom_attributes)}
    clashes = [f"{name} is {IndexedValueType.Name(existing[name])}, not Keyword"
               for name in wanted if name in existing and existing[name] != KEYWORD]
    if clashes:
        raise RuntimeError("search attributes of another type: " + "; ".join(clashes))
    missing = {name: kind for name, kind in wanted.items() if name not in existing}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=namespace))
    return sorted(missing)


async def _main() -> None:
    settings = load_or_exit("search_attributes")
    client = await connect(settings)
    added = await register(client, settings.temporal_namespace)
    names = ", ".join(key.name for key in search_attributes.ALL)
    print(f"{settings.temporal_address} namespace {settings.temporal_namespace}: {names} "
          f"registered" + (f" (added {', '.join(added)})" if added else " (all were there)"))


def main() -> None:
    code = 0
    try:
        asyncio.run(_main())
    except Exception as exc:  # a clear line for the operator, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    # The Temporal client's native runtime can crash while the interpreter tears it
    # down (seen once in CI: SIGSEGV after the success line). The work is done and its
    # line printed: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
