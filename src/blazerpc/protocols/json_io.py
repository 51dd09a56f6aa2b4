"""JSON in and out of the HTTP protocols: parsed as the client's error when malformed, and
always valid JSON when written (`http_wire` reads the bodies, bounded).

Python's JSON parser holds the event loop (and the GIL) for the whole document, so a JSON
body has its own, smaller limit (`Limits.max_json_bytes`) checked against Content-Length
before a byte is read; large tensors travel as binary data instead. Non-finite floats are
written as the strings "NaN", "Infinity" and "-Infinity" (protobuf's JSON mapping), which
strict parsers accept, and read back from those strings.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..exceptions import ValidationError

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class BodyTooLarge(ValidationError):
    """A body over its limit: HTTP 413, whatever protocol the port speaks."""


def loads(data: bytes | memoryview, what: str = "the request") -> Any:
    """Parse JSON; malformed or too deeply nested input is the client's error."""
    try:
        return json.loads(data if isinstance(data, bytes) else bytes(data))
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to be parsed") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None


def dumps(body: Any) -> bytes:
    """Valid JSON; the walk that replaces non-finite floats runs only when there are any."""
    try:
        return json.dumps(body, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(body), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
