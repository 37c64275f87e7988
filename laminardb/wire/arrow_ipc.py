"""Arrow IPC framing: tables to bytes and back, into a fixed buffer when one is given."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

ALIGNMENT = 64


def dumps(table: pa.Table) -> pa.Buffer:
    """One IPC stream holding `table` (schema kept even with zero rows)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def loads(data: bytes | memoryview | pa.Buffer) -> pa.Table:
    """The table of an IPC stream, over memory aligned as the engine requires.

    The native engine panics on Arrow buffers that are not aligned to their type (a ZeroMQ
    frame or a bytes object gives no such guarantee), so unaligned input is first copied
    into an Arrow allocation; aligned input is read without a copy and must outlive the table.
    """
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    if buf.address % ALIGNMENT:
        buf = _aligned_copy(buf)
    return pa.ipc.open_stream(buf).read_all()


def copy_out(view: memoryview) -> pa.Table:
    """A table over an aligned private copy of the IPC stream in `view` (which may be reused)."""
    return pa.ipc.open_stream(_aligned_copy(pa.py_buffer(view))).read_all()


def _aligned_copy(buf: pa.Buffer) -> pa.Buffer:
    aligned = pa.allocate_buffer(buf.size)
    np.frombuffer(aligned, dtype=np.uint8)[:] = np.frombuffer(buf, dtype=np.uint8)
    return aligned


def write_into(table: pa.Table, target: memoryview) -> int:
    """Serialise `table` into `target`; returns the bytes written, raises if it does not fit."""
    sink = pa.FixedSizeBufferWriter(pa.py_buffer(target))
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return int(sink.tell())
