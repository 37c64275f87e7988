"""The coordinator's view of the catalog: every relation rows can be inserted into or read from.

Workers hold identical catalogs (every DDL reaches all of them); the coordinator keeps what
it needs to route and validate inserts (schema, partition key, home worker) and to rebuild a
relation in a gather engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

_SQL_TYPES: dict[str, str] = {
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INT",
    "int64": "BIGINT",
    "uint8": "TINYINT UNSIGNED",
    "uint16": "SMALLINT UNSIGNED",
    "uint32": "INT UNSIGNED",
    "uint64": "BIGINT UNSIGNED",
    "float": "REAL",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "date32[day]": "DATE",
    "timestamp[us]": "TIMESTAMP",
    "binary": "BYTEA",
}


@dataclass
class Relation:
    """A source (sharded by `partition_by`, or spread) or a table (kept on `home`)."""

    name: str
    kind: str
    schema: pa.Schema
    create_sql: str
    partition_by: tuple[str, ...] = ()
    watermark_column: str | None = None
    home: int | None = None
    alters: list[str] = field(default_factory=list)

    def definition(self) -> tuple[object, ...]:
        """Everything about the relation that a plan, a probe or a cached read depends on:
        equal definitions mean the same relation as far as the planner can tell."""
        return (
            self.name,
            self.kind,
            self.create_sql,
            tuple(self.alters),
            self.partition_by,
            self.home,
            self.schema.to_string(),
        )

    def gather_ddl(self) -> list[str]:
        """Statements that recreate this relation as a plain source with the same schema."""
        columns = []
        for f in self.schema:
            sql_type = _sql_type(f.type)
            if sql_type is None:
                return [self.create_sql.replace("CREATE TABLE", "CREATE SOURCE", 1), *self.alters]
            null = "" if f.nullable else " NOT NULL"
            columns.append(f"{quote(f.name)} {sql_type}{null}")
        return [f"CREATE SOURCE {self.name} ({', '.join(columns)})"]


def _sql_type(t: pa.DataType) -> str | None:
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    return _SQL_TYPES.get(str(t))


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Catalog:
    """Relations by lower-cased name, in creation order."""

    def __init__(self) -> None:
        self._relations: dict[str, Relation] = {}

    def get(self, name: str) -> Relation | None:
        return self._relations.get(name) or self._relations.get(name.lower())

    def add(self, relation: Relation) -> None:
        self._relations[relation.name] = relation

    def remove(self, name: str) -> Relation | None:
        return self._relations.pop(name, None) or self._relations.pop(name.lower(), None)

    def names(self) -> list[str]:
        return list(self._relations)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None
