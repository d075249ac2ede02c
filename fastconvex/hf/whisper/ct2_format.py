"""Reading CTranslate2's ``model.bin`` (no CTranslate2 needed); the layout is in
:mod:`fastconvex.hf.ct2_whisper`."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CT2Model", "read_ct2_model_bin"]

_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: "bfloat16",
}
_ITEMSIZE_TO_DTYPE = {4: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2")}  # binary versions < 4


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"CTranslate2 model has no variable {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str, default: Any = None) -> Any:
        if name not in self:
            return default
        return self.get(name).reshape(-1)[0].item()


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_model_bin(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 1-6) into numpy arrays.

    Arrays are copies (not views of the file buffer); float16 stays float16,
    bfloat16 becomes float32.
    """
    path = Path(path)
    buf = memoryview(path.read_bytes())
    off = 0

    def take(fmt: str):
        nonlocal off
        try:
            (val,) = struct.unpack_from("<" + fmt, buf, off)
        except struct.error:
            raise ValueError(f"{path}: truncated CTranslate2 model at byte {off}") from None
        off += struct.calcsize("<" + fmt)
        return val

    def take_str() -> str:
        nonlocal off
        n = take("H")
        if n < 1 or off + n > len(buf):
            raise ValueError(f"{path}: bad string length {n} at byte {off - 2}")
        s = bytes(buf[off : off + n - 1]).decode("utf-8")
        off += n
        return s

    version = take("I")
    if not 1 <= version <= 6:
        raise ValueError(f"{path}: unsupported CTranslate2 binary version {version} (this reader knows 1-6)")
    spec, revision = "", 1
    if version >= 2:
        spec = take_str()
        revision = take("I")
    model = CT2Model(version=version, spec=spec, revision=revision)
    for _ in range(take("I")):
        name = take_str()
        rank = take("B")
        shape = tuple(take("I") for _ in range(rank))
        if version >= 4:
            code = take("B")
            if code not in _DTYPES:
                raise ValueError(f"{path}: variable {name!r} has unknown dtype code {code}")
            dtype = _DTYPES[code]
            nbytes = take("I")
        else:
            itemsize = take("B")
            dtype = _ITEMSIZE_TO_DTYPE.get(itemsize)
            if dtype is None:
                raise ValueError(f"{path}: variable {name!r} has unknown item size {itemsize}")
            nbytes = take("I") * itemsize
        if off + nbytes > len(buf):
            raise ValueError(f"{path}: variable {name!r} runs past the end of the file")
        raw = buf[off : off + nbytes]
        off += nbytes
        if dtype == "bfloat16":
            arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            arr = np.frombuffer(raw, dtype=dtype).copy()
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise ValueError(f"{path}: variable {name!r} holds {arr.size} values, its shape {shape} needs {expected}")
        model.variables[name] = arr.reshape(shape)
    if version >= 3 and off < len(buf):
        for _ in range(take("I")):
            alias = take_str()
            model.aliases[alias] = take_str()
    return model
