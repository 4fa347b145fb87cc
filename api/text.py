"""What text the API accepts, and how values it answers with are kept serialisable.

JSON lets a client escape a lone UTF-16 surrogate (`"\\ud800"`), which Python decodes
into a str that cannot be encoded as UTF-8, so no response could carry it; a NUL
cannot be stored by PostgreSQL. Request strings with either are refused (422).
Values read from the database or from Temporal pass through `serialisable` before they
are answered, so a row written by an older version or by a worker (a tar member name
decoded with surrogateescape) can always be read.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# Longest request string echoed back in a validation error.
ECHO_MAX_CHARS = 200


def _storable(value: str) -> str:
    if _LONE_SURROGATE.search(value):
        raise ValueError("text contains a lone UTF-16 surrogate (\\ud800-\\udfff), "
                         "which is not Unicode text")
    if "\x00" in value:
        raise ValueError("text contains a NUL character")
    return value


# A request string the API stores: Unicode text without lone surrogates or NUL.
Text = Annotated[str, AfterValidator(_storable)]


def serialisable(value: Any) -> Any:
    """The value with lone surrogates replaced by U+FFFD and non-finite floats by None."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {serialisable(k): serialisable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [serialisable(v) for v in value]
    return value


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors, made safe to answer: the offending input is echoed only when it
    is a scalar (strings shortened), with surrogates and NaN/Infinity neutralised."""
    safe = []
    for error in errors:
        item = {key: serialisable(error[key]) for key in ("type", "loc", "msg") if key in error}
        if "ctx" in error:
            item["ctx"] = {k: serialisable(str(v)) for k, v in error["ctx"].items()}
        value = error.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            item["input"] = str(value)  # "nan", "inf", "-inf": what the client sent
        elif isinstance(value, str):
            item["input"] = serialisable(value[:ECHO_MAX_CHARS])
        elif value is None or isinstance(value, bool | int | float):
            item["input"] = value
        safe.append(item)
    return safe
