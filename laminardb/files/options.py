"""File formats and load/write options: from the extension, the `format=` argument or COPY's
`WITH (...)`, checked up front so that a typo fails before any file is read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from laminardb.api.errors import QueryError, codes

FORMATS = ("parquet", "csv", "json")
_ALIASES = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "tsv": "csv"}
_ALIASES |= {"json": "json", "ndjson": "json", "jsonl": "json"}
COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
_KNOWN = {"format", "header", "delimiter"}


def bad_option(message: str) -> QueryError:
    return QueryError(f"Query failed ({codes.QUERY_FAILED}): {message}", code=codes.QUERY_FAILED)


@dataclass(frozen=True)
class FileOptions:
    """How to read or write a file: `format` is parquet, csv or json."""

    format: str
    header: bool = True
    delimiter: str = ","

    def to_wire(self) -> dict[str, Any]:
        return {"header": self.header, "delimiter": self.delimiter}


def compression_of(path: str) -> str | None:
    """The compression named by the file's last extension (`x.csv.gz` -> gzip), or None."""
    return COMPRESSIONS.get(os.path.splitext(path)[1].lower())


def format_of(path: str) -> str | None:
    """The format named by the extension, looking through a compression suffix."""
    stem, ext = os.path.splitext(path)
    if ext.lower() in COMPRESSIONS:
        ext = os.path.splitext(stem)[1]
    return _ALIASES.get(ext.lower().lstrip("."))


def resolve(
    path: str, fmt: str | None, options: dict[str, Any], files: Sequence[str] = ()
) -> FileOptions:
    """Check `options` and settle the format: given, else from `path`'s extension, else
    (a folder, a glob without one) from the extension its `files` all share."""
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise bad_option(
            f"unknown file option {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(_KNOWN))}"
        )
    given = fmt if fmt is not None else options.get("format")
    if given is not None:
        name = _ALIASES.get(str(given).lower())
        if name is None:
            raise bad_option(f"unknown file format {str(given)!r}; use one of {', '.join(FORMATS)}")
    else:
        name = format_of(path)
        found = {format_of(f) for f in files}
        if name is None and len(found) == 1:
            name = found.pop()
        if name is None:
            of = "its files' extensions" if files and files[0] != path else "its extension"
            raise bad_option(
                f"cannot tell the format of {path!r} from {of}; "
                f"pass format= (one of {', '.join(FORMATS)})"
            )
    header = _bool(options.get("header", True), "header")
    delimiter = str(options.get("delimiter", "\t" if path.lower().endswith(".tsv") else ","))
    if len(delimiter) != 1:
        raise bad_option(f"delimiter must be one character, got {delimiter!r}")
    return FileOptions(name, header, delimiter)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise bad_option(f"option {name} must be true or false, got {value!r}")
