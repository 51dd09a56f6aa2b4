"""A tensor in the native TensorProto's shape, so tensors that arrive over other protocols
pass through codec's own checks (`decode_tensor`) and casts (`fill_tensor`) unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class WireTensor:
    """`shape`, `dtype` (a native wire name such as 'float') and little-endian `data`."""

    shape: Sequence[int] = field(default_factory=list)
    dtype: str = ""
    data: bytes | memoryview = b""
