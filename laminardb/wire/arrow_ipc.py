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
    Buffers of wide types (see `copy_out`) are realigned one by one.
    """
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    if buf.address % ALIGNMENT:
        buf = _aligned_copy(buf)
    return _read(buf)


ALIGNED = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.At64Byte)
"""Read options that copy any buffer off a 64-byte boundary into aligned memory."""


def copy_out(view: memoryview) -> pa.Table:
    """A table over an aligned private copy of the IPC stream in `view` (which may be reused).

    The IPC stream aligns buffers to 8 bytes only, and the engine's Arrow import panics (the
    worker exits) on 16-byte values (decimals, month-day-nano intervals) off a 16-byte
    boundary, which a NULL bitmap before them easily causes: such streams are read with
    every buffer realigned."""
    return _read(_aligned_copy(pa.py_buffer(view)))


def _read(buf: pa.Buffer) -> pa.Table:
    """The table of the IPC stream in `buf`, each buffer of a wide type realigned (copied)."""
    reader = pa.ipc.open_stream(buf)
    if any(wide(f.type) for f in reader.schema):
        reader = pa.ipc.open_stream(buf, options=ALIGNED)
    return reader.read_all()


def wide(kind: pa.DataType) -> bool:
    """Whether `kind` holds, at any depth, values wider than 8 bytes (decimals, intervals)."""
    if pa.types.is_decimal(kind) or pa.types.is_interval(kind):
        return True
    if isinstance(kind, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        return wide(kind.value_type)
    if isinstance(kind, pa.MapType):
        return wide(kind.key_type) or wide(kind.item_type)
    if isinstance(kind, pa.StructType):
        return any(wide(kind.field(i).type) for i in range(kind.num_fields))
    return False


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
