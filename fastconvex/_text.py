"""Text files a user gives fastconvex (labels ``.txt``/``.csv``, audio CSV
manifests), decoded one way everywhere.

Accepted: UTF-8 with or without a byte-order mark, UTF-16 with a byte-order
mark (little or big endian, as Windows tools write it), and any line ends
(``\\n``, ``\\r\\n``, ``\\r``). Anything else is refused with one line naming
the file and the first byte that does not decode, so a label is never read
with a stray mark or a mis-decoded character in it (a byte-order mark left in
the first label would make it a class of its own).
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

__all__ = ["TextDecodeError", "decode_text", "read_text_input"]

# longest first: UTF-32 LE's mark begins with UTF-16 LE's
_BOMS = (
    (codecs.BOM_UTF32_LE, None),
    (codecs.BOM_UTF32_BE, None),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

_ACCEPTED = "UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark"


class TextDecodeError(ValueError):
    """A text input in an encoding fastconvex does not read; the message
    names the file, the byte's offset and value."""


def decode_text(data: bytes, what: str) -> str:
    """``data`` decoded as described in the module docstring, with every line
    end turned into ``\\n``.

    Parameters
    ----------
    data : bytes
        The file's contents.
    what : str
        How the error names the file, e.g. ``"LABELS 'y.txt'"``.

    Returns
    -------
    str
        The text without its byte-order mark.

    Raises
    ------
    TextDecodeError
        A UTF-32 mark, bytes that are not valid in the detected encoding, or a
        NUL byte (UTF-16 without a mark decodes as UTF-8 full of NULs, which
        would silently become part of the labels).
    """
    encoding, start = "utf-8", 0
    for bom, name in _BOMS:
        if data.startswith(bom):
            if name is None:
                raise TextDecodeError(f"{what} is UTF-32 text (it starts with a UTF-32 byte-order mark); "
                                      f"save it as {_ACCEPTED}")
            encoding, start = name, len(bom)
            break
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data[:offset].count(b"\n") + 1 if encoding == "utf-8" else None
        where = f"offset {offset}" + (f" (line {line})" if line is not None else "")
        label = "UTF-8" if encoding == "utf-8" else encoding.upper().replace("-LE", " LE").replace("-BE", " BE")
        raise TextDecodeError(
            f"{what}: byte 0x{data[offset]:02x} at {where} is not valid {label}; fastconvex reads {_ACCEPTED}: "
            "convert the file, e.g. iconv -f latin1 -t utf-8"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        offset = start + len(text[:nul].encode(encoding))
        raise TextDecodeError(
            f"{what}: byte 0x00 at offset {offset} is a NUL character, which text never holds (UTF-16 "
            f"without a byte-order mark?); fastconvex reads {_ACCEPTED}"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_input(path: str | os.PathLike[str], what: str | None = None) -> str:
    """The text of the file at ``path`` (:func:`decode_text`); ``what`` names it
    in errors (default: its path)."""
    p = Path(path)
    return decode_text(p.read_bytes(), what or repr(str(p)))
