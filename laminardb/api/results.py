"""Result values of the public API: QueryResult, ExecuteResult and CheckpointResult.

The native classes are built by the engine and cannot be pickled, so the coordinator builds
these from Arrow data that came back from the workers. They behave like the native ones:
same reprs, same row conversion (pyarrow's `to_pylist`, so TIMESTAMP gives `datetime`,
timestamp[ns] gives `pandas.Timestamp`), and `fetchone`/`fetchmany` are not a cursor: they
always read from the first row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from laminardb.api.args import unsigned_arg

__all__ = ["CheckpointResult", "ExecuteResult", "QueryResult"]

_RESULT_TYPES = ("ddl", "rows_affected", "query", "metadata")


def _rows(table: Any) -> list[tuple[Any, ...]]:
    """Rows of an Arrow table as tuples of Python values."""
    if table.num_columns == 0:
        return [()] * table.num_rows
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


class QueryResult:
    """The result of a query: an immutable Arrow table with the native accessors.

    It can be read any number of times; every accessor starts again from the first row.
    """

    __slots__ = ("_table",)

    _table: Any

    def __init__(self, table: Any) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        elif not isinstance(table, pa.Table):
            raise TypeError(f"QueryResult needs a pyarrow.Table, got {type(table).__name__}")
        self._table = table

    @classmethod
    def from_batches(cls, batches: Iterable[Any], schema: Any) -> QueryResult:
        """A result made of these record batches (the schema is kept when there are none)."""
        return cls(pa.Table.from_batches(list(batches), schema=schema))

    @property
    def schema(self) -> Any:
        """The schema as a pyarrow.Schema (kept for empty results too)."""
        return self._table.schema

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return int(self._table.num_rows)

    @property
    def num_columns(self) -> int:
        """Number of columns."""
        return int(self._table.num_columns)

    @property
    def num_batches(self) -> int:
        """Number of record batches the rows arrived in (0 for an empty result)."""
        return len(self._table.to_batches())

    @property
    def columns(self) -> list[str]:
        """Column names in order."""
        return list(self._table.column_names)

    def __repr__(self) -> str:
        return f"QueryResult(rows={self.num_rows}, columns={self.num_columns})"

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())

    def to_arrow(self) -> Any:
        """The rows as a pyarrow.Table."""
        return self._table

    def arrow(self) -> Any:
        """DuckDB-style alias of `to_arrow()`."""
        return self._table

    def write_parquet(self, path: str) -> int:
        """Write the rows to a Parquet file (a folder of parts when `path` ends with '/')."""
        from laminardb.files.write import write_result

        return write_result(self._table, path, "parquet")

    def write_csv(self, path: str, *, header: bool = True, delimiter: str = ",") -> int:
        """Write the rows to a CSV file (gzip/zstd by extension); returns the row count."""
        from laminardb.files.write import write_result

        return write_result(self._table, path, "csv", header=header, delimiter=delimiter)

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (pyarrow's default conversion)."""
        import pandas  # noqa: F401 - pyarrow may hold a cached pandas; fail like native without it

        return self._table.to_pandas()

    def df(self) -> Any:
        """DuckDB-style alias of `to_pandas()`."""
        return self.to_pandas()

    def to_polars(self) -> Any:
        """The rows as a polars DataFrame."""
        import polars

        return polars.from_arrow(self._table)

    def pl(self, *, lazy: bool = False) -> Any:
        """The rows as a polars DataFrame, or a LazyFrame when `lazy` is true."""
        frame = self.to_polars()
        return frame.lazy() if lazy else frame

    def to_df(self) -> Any:
        """The best frame available: polars, else pandas, else the Arrow table."""
        try:
            return self.to_polars()
        except ImportError:
            pass
        try:
            return self.to_pandas()
        except ImportError:
            return self._table

    def to_dicts(self) -> dict[str, list[Any]]:
        """A columnar dict: column name to its list of Python values."""
        return {
            name: column.to_pylist()
            for name, column in zip(self._table.column_names, self._table.columns, strict=True)
        }

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every row as a tuple."""
        return _rows(self._table)

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None when empty (the same row on every call)."""
        rows = _rows(self._table.slice(0, 1))
        return rows[0] if rows else None

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        """The first `size` rows (always from the start, not a cursor)."""
        count = unsigned_arg("size", size)
        return _rows(self._table.slice(0, count))

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """Arrow PyCapsule stream export, so `pa.table(result)` and polars read it directly."""
        return self._table.__arrow_c_stream__(requested_schema)

    def show(self, max_rows: int = 20) -> None:
        """Print the first `max_rows` rows as a pandas table (needs pandas)."""
        count = unsigned_arg("max_rows", max_rows)
        import pandas  # noqa: F401 - fail early, like native, when pandas is missing

        print(self._table.slice(0, count).to_pandas().to_string())

    def _repr_html_(self) -> str:
        """HTML for Jupyter: pandas' rendering, or the repr in <pre> without pandas."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            return f"<pre>{self!r}</pre>"
        html: str = self._table.to_pandas()._repr_html_()
        return html


class ExecuteResult:
    """What `execute()` returns: a DDL outcome, a row count, or a query/metadata result.

    `result_type` is one of 'ddl', 'rows_affected', 'query', 'metadata'.
    """

    __slots__ = ("_ddl_object", "_ddl_type", "_query_result", "_result_type", "_rows_affected")

    def __init__(
        self,
        result_type: str,
        rows_affected: int = 0,
        ddl_type: str | None = None,
        ddl_object: str | None = None,
        query_result: QueryResult | None = None,
    ) -> None:
        if result_type not in _RESULT_TYPES:
            raise ValueError(f"result_type must be one of {_RESULT_TYPES}, got {result_type!r}")
        self._result_type = result_type
        self._rows_affected = unsigned_arg("rows_affected", rows_affected)
        self._ddl_type = ddl_type
        self._ddl_object = ddl_object
        self._query_result = query_result

    @classmethod
    def ddl(cls, ddl_type: str, ddl_object: str) -> ExecuteResult:
        """A DDL statement's result, e.g. ('CREATE SOURCE', 's1')."""
        return cls("ddl", ddl_type=ddl_type, ddl_object=ddl_object)

    @classmethod
    def affected(cls, rows: int) -> ExecuteResult:
        """A DML statement's row count (INSERT INTO ... VALUES)."""
        return cls("rows_affected", rows_affected=rows)

    @classmethod
    def query(cls, result: QueryResult) -> ExecuteResult:
        """A query's result; like native, `rows_affected` is its row count."""
        return cls("query", rows_affected=result.num_rows, query_result=result)

    @classmethod
    def metadata(cls, result: QueryResult) -> ExecuteResult:
        """A SHOW/DESCRIBE/EXPLAIN result; like native, `rows_affected` stays 0."""
        return cls("metadata", query_result=result)

    @property
    def result_type(self) -> str:
        """One of 'ddl', 'rows_affected', 'query', 'metadata'."""
        return self._result_type

    @property
    def rows_affected(self) -> int:
        """Rows affected (a query's row count; 0 for DDL and metadata)."""
        return self._rows_affected

    @property
    def ddl_type(self) -> str | None:
        """The DDL statement kind, e.g. 'CREATE SOURCE' (None unless DDL)."""
        return self._ddl_type

    @property
    def ddl_object(self) -> str | None:
        """The object a DDL statement named (None unless DDL)."""
        return self._ddl_object

    def to_query_result(self) -> QueryResult | None:
        """The rows of a query or metadata result, else None."""
        return self._query_result

    def __int__(self) -> int:
        return self._rows_affected

    def __bool__(self) -> bool:
        return self._rows_affected > 0 or self._result_type != "rows_affected"

    def __repr__(self) -> str:
        kind = self._result_type
        if kind == "ddl":
            return f"ExecuteResult(ddl, {self._ddl_type or '?'} {self._ddl_object or '?'})"
        if kind == "rows_affected":
            return f"ExecuteResult(rows_affected={self._rows_affected})"
        if self._query_result is None:
            return f"ExecuteResult({kind})"
        return f"ExecuteResult({kind}, rows={self._query_result.num_rows})"


class CheckpointResult:
    """The id of a completed checkpoint; always true, `int()` gives the id."""

    __slots__ = ("_checkpoint_id",)

    def __init__(self, checkpoint_id: int) -> None:
        self._checkpoint_id = unsigned_arg("checkpoint_id", checkpoint_id)

    @property
    def checkpoint_id(self) -> int:
        """The checkpoint id assigned by the database."""
        return self._checkpoint_id

    def __int__(self) -> int:
        return self._checkpoint_id

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"CheckpointResult(checkpoint_id={self._checkpoint_id})"
