"""LaminarConfig: connection settings, with the native argument checks and repr.

The native repr is Rust's Debug output (`storage_dir=Some("st")`), so strings are escaped the
way Rust escapes them, not as Python would.
"""

from __future__ import annotations

import unicodedata

from laminardb.api.args import not_text, unsigned_arg

__all__ = ["LaminarConfig"]

_SIMPLE_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}


def _rust_debug(text: str) -> str:
    """`text` quoted as Rust's `{:?}` prints a String (non-printables as \\u{hex})."""
    out = []
    for char in text:
        if char in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[char])
        elif not char.isprintable() or unicodedata.category(char) in ("Mn", "Me"):
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _option(value: str | int | None) -> str:
    if value is None:
        return "None"
    return f"Some({_rust_debug(value) if isinstance(value, str) else value})"


class LaminarConfig:
    """Settings for `open()`: buffer size, checkpoint storage folder and interval."""

    __slots__ = ("_buffer_size", "_checkpoint_interval_ms", "_storage_dir")

    def __init__(
        self,
        *,
        buffer_size: int = 65536,
        storage_dir: str | None = None,
        checkpoint_interval_ms: int | None = None,
    ) -> None:
        self._buffer_size = unsigned_arg("buffer_size", buffer_size)
        if storage_dir is not None:
            if not isinstance(storage_dir, str):
                raise not_text("storage_dir", storage_dir)
            storage_dir.encode("utf-8")
        self._storage_dir = storage_dir
        self._checkpoint_interval_ms = (
            None
            if checkpoint_interval_ms is None
            else unsigned_arg("checkpoint_interval_ms", checkpoint_interval_ms)
        )

    @property
    def buffer_size(self) -> int:
        """Per-source buffer size."""
        return self._buffer_size

    @property
    def storage_dir(self) -> str | None:
        """Folder for checkpoints and logs; None keeps everything in memory."""
        return self._storage_dir

    @property
    def checkpoint_interval_ms(self) -> int | None:
        """Automatic checkpoint period in milliseconds, or None."""
        return self._checkpoint_interval_ms

    def __repr__(self) -> str:
        return (
            f"LaminarConfig(buffer_size={self._buffer_size}, "
            f"storage_dir={_option(self._storage_dir)}, "
            f"checkpoint_interval_ms={_option(self._checkpoint_interval_ms)})"
        )
