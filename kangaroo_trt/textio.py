"""User text in: files, JSONL lines, standard input and command-line text, as UTF-8, with one-line errors.

JSONL lines end at ``\\n`` only (as JSON Lines defines them): U+2028, U+2029, U+0085 and other characters that
``str.splitlines`` would also break at are valid inside a JSON string, so a record holding them stays whole
and line numbers stay those of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import InputError


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{where} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}): "
                         "save it as UTF-8") from err


def read_text(path: Path, what: str = "file") -> str:
    """A UTF-8 text file; a missing, unreadable or non-UTF-8 file is an ``InputError`` naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from err
    return decode_utf8(data, f"{what} {path}")


def read_stream(stream: BinaryIO, where: str) -> str:
    """All of a binary stream (e.g. standard input) as UTF-8."""
    return decode_utf8(stream.read(), where)


def check_text(text: str, where: str, fix: str = "pass UTF-8 text") -> str:
    """``text`` if it encodes as UTF-8, else an ``InputError``. Python strings can hold lone surrogates that UTF-8
    cannot encode: undecodable bytes of ``sys.argv`` arrive as them, and so does a JSON escape such as ``"\\ud800"``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"{where} is not UTF-8 text (character {err.start} is a lone surrogate, "
                         f"U+{ord(text[err.start]):04X}): {fix}") from err
    return text


def check_json_text(value, where: str):
    """A parsed JSON value whose strings (keys included) all pass ``check_text``."""
    if isinstance(value, str):
        check_text(value, where, "fix the \\u escape (a surrogate needs its pair)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_text(key, where)
            check_json_text(item, where)
    elif isinstance(value, list):
        for item in value:
            check_json_text(item, where)
    return value


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each non-blank line, split at ``\\n`` only."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line
