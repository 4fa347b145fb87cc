"""What the commands print: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import click

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def sha256_arg(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """click callback: a 64-hex sha256, lower-cased."""
    if not SHA256.match(value):
        raise click.BadParameter(f"{value!r} is not a sha256 (64 hex characters)")
    return value.lower()


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    # Names come from samples: keep a row on one line whatever they hold.
    return " ".join(str(value).split()) or "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [v.ljust(w) for v, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    """`key: value` lines with the values aligned."""
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {cell(v)}" for k, v in items)
