"""Reading the JSON documents of a bundle (model.sig, provenance.json, reports/gates.json, ...)
as untrusted input: whatever the bytes, the reader gets a dict or one `InvalidInput` line
naming the file — never a UnicodeDecodeError or a RecursionError from deep nesting."""

from __future__ import annotations

import json
from pathlib import Path

from tapeout.compilers.errors import InvalidInput


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`.

    Raises:
        InvalidInput: the file is missing or unreadable, not UTF-8, not JSON, nested too
            deeply for the parser, or not an object (each named with the file).
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidInput(f"{path}: cannot read it ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{path}: not JSON ({error})") from None
    except RecursionError:
        raise InvalidInput(f"{path}: not a document tapeout writes: the JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{path}: expected a JSON object, found {type(document).__name__}")
    return document
