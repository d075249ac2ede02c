"""Text files a user gives fastconvex (labels ``.txt``/``.csv``, audio CSV
manifests), decoded one way everywhere.

Accepted: UTF-8 with or without a byte-order mark, UTF-16 with a byte-order
mark (little or big endian, as Windows tools write it), and any line ends
(``\\n``, ``\\r\\n``, ``\\r``). Anything else is refused with one line naming
the file and the first byte that does not decode, so a label is never read
with a stray mark or a mis-decoded character in it (a byte-order mark left in
the first label would make it a class of its own). A mark anywhere after
the start (two marked files joined with ``cat``) is refused too, naming its
line.
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
        would silently become part of the labels), or a byte-order mark after
        the start of the text.
    """
    encoding, start = "utf-8", 0
    for bom, name in _BOMS:
        if data.startswith(bom):
            if name is None:
                raise TextDecodeError(
                    f"{what} is UTF-32 text (it starts with a UTF-32 byte-order mark); save it as {_ACCEPTED}"
                )
            encoding, start = name, len(bom)
            break
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        # the bytes before the bad one decode (the decoder got that far); their line ends give the line
        line = _line_of(data[start:offset].decode(encoding, errors="replace"), None)
        if encoding == "utf-8":
            label, hint = "UTF-8", "convert the file, e.g. from Latin-1: iconv -f latin1 -t utf-8"
        else:  # a UTF-16 mark, then bytes that are not UTF-16: cut short (an odd length) or damaged
            label = encoding.upper().replace("-LE", " LE").replace("-BE", " BE")
            hint = "the file starts with a UTF-16 byte-order mark but is cut short or damaged; save it again"
        raise TextDecodeError(
            f"{what}: byte 0x{data[offset]:02x} at offset {offset} (line {line}) is not valid {label}; "
            f"fastconvex reads {_ACCEPTED}: {hint}"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        offset = start + len(text[:nul].encode(encoding))
        raise TextDecodeError(
            f"{what}: byte 0x00 at offset {offset} (line {_line_of(text, nul)}) is a NUL character, which text "
            f"never holds (UTF-16 without a byte-order mark?); fastconvex reads {_ACCEPTED}"
        )
    # a mark after the first character: two marked files joined (cat a.txt b.txt > y.txt); left in,
    # it would become part of a label, and str.strip() does not remove it
    mark = text.find("\ufeff")
    if mark >= 0:
        raise TextDecodeError(
            f"{what}: a byte-order mark (U+FEFF) at line {_line_of(text, mark)}, not at the start of the "
            "file: files joined with cat? Remove it (each file's mark belongs only at its start)"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _line_of(text: str, index: int | None) -> int:
    """The 1-based line of ``text[index]`` (``None``: of the end of ``text``), counting
    ``\\r\\n``, ``\\r`` and ``\\n`` each as one line end."""
    head = text if index is None else text[:index]
    return head.count("\n") + head.count("\r") - head.count("\r\n") + 1


def read_text_input(path: str | os.PathLike[str], what: str | None = None) -> str:
    """The text of the file at ``path`` (:func:`decode_text`); ``what`` names it
    in errors (default: its path)."""
    p = Path(path)
    return decode_text(p.read_bytes(), what or repr(str(p)))
