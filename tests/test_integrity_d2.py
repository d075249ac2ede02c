"""Issue 24, part D review: a byte-order mark inside a labels file, line numbers and hints of
decode errors, --label-map among the inputs, directories written into, the --keeps check."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest

from fastconvex._text import TextDecodeError, decode_text
from fastconvex.cli import main


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ text inputs

@pytest.mark.parametrize("codec, bom", [("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE)])
def test_two_marked_label_files_joined_with_cat_are_refused_naming_the_line(tmp_path, capsys, codec, bom):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(2, 4, 3)).astype(np.float32))
    a = bom + "yes\nno\n".encode(codec)
    b = bom + "yes\nno\n".encode(codec)
    (tmp_path / "y.txt").write_bytes(a + b)  # cat a.txt b.txt > y.txt
    code, out, err = _run(capsys, ["score", tmp_path / "emb.npy", "--labels", tmp_path / "y.txt"])
    line = _one_error_line(err)
    assert code == 1 and out == ""
    assert line.startswith(f"fastconvex score: error: LABELS {str(tmp_path / 'y.txt')!r}: a byte-order mark")
    assert "at line 3" in line and "cat" in line


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_decode_errors_count_every_kind_of_line_end(newline):
    data = newline.join(["a", "b", "caf\xe9"]).encode("latin-1")
    with pytest.raises(TextDecodeError, match=r"byte 0xe9 at offset \d+ \(line 3\)"):
        decode_text(data, "LABELS 'y.txt'")
    nul = newline.join(["a", "b", "c\x00"]).encode("utf-8")
    with pytest.raises(TextDecodeError, match=r"byte 0x00 at offset \d+ \(line 3\)"):
        decode_text(nul, "LABELS 'y.txt'")


def test_utf16_decode_errors_get_a_utf16_hint_not_latin1():
    cut = codecs.BOM_UTF16_LE + "ab\ncd\n".encode("utf-16-le") + b"\x00\xdc"  # a lone low surrogate
    with pytest.raises(TextDecodeError) as info:
        decode_text(cut, "LABELS 'y.txt'")
    message = str(info.value)
    assert "not valid UTF-16 LE" in message and "(line 3)" in message
    assert "latin1" not in message and "cut short or damaged" in message
    with pytest.raises(TextDecodeError, match="iconv -f latin1"):
        decode_text(b"caf\xe9\n", "LABELS 'y.txt'")
