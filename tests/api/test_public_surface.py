"""The public surface of `laminardb` is that of the native bindings (plus a few named extras).

Code written for the single-process `laminardb_native` must run unchanged: the same module
names, classes, public methods and properties, parameter names, exceptions and codes, and
the same module-level helpers (`open`, `connect`, `sql`, `execute`, `mv`).
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
from collections.abc import Iterator
from typing import Any

import laminardb_native as native
import pytest

import laminardb

pytestmark = pytest.mark.timeout(120)

#: Names ours exports beyond native's `__all__`, each on purpose.
EXTRA_EXPORTS = {"WorkerInfo"}  # one record per worker process (`Connection.workers()`)

#: Public members ours has beyond the native class, each on purpose.
EXTRA_MEMBERS: dict[str, set[str]] = {
    "Connection": {"workers", "load"},  # WorkerInfo of every worker; parallel file loads
    "SourceInfo": {"partition_by"},  # the PARTITION BY key
    # from_batches builds a result from gathered Arrow batches; write_* save it to files
    "QueryResult": {"from_batches", "write_csv", "write_parquet"},
    "ExecuteResult": {"affected", "ddl", "metadata", "query"},  # constructors per result type
}

#: Classes whose members are checked by the streams tests instead (none since issue 4's
#: first slice: the subscription classes are served by laminardb/streams).
STREAM_LAYER: set[str] = set()

ERRORS = [
    "LaminarError",
    "ConnectionError",
    "QueryError",
    "IngestionError",
    "SchemaError",
    "SubscriptionError",
    "StreamError",
    "CheckpointError",
    "ConnectorError",
]


def public(obj: Any) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def native_classes() -> list[str]:
    return sorted(
        n for n in native.__all__ if isinstance(getattr(native, n), type) and n not in ERRORS
    )


def test_all_has_every_native_name_and_only_named_extras() -> None:
    ours, theirs = set(laminardb.__all__), set(native.__all__)
    assert len(laminardb.__all__) == len(ours), "duplicates in __all__"
    assert theirs <= ours, sorted(theirs - ours)
    assert ours - theirs == EXTRA_EXPORTS
    for name in laminardb.__all__:
        assert hasattr(laminardb, name), name
    assert laminardb.__version__ == native.__version__


@pytest.mark.parametrize("name", [n for n in native_classes() if n not in STREAM_LAYER])
def test_class_has_native_public_members(name: str) -> None:
    ours, theirs = getattr(laminardb, name), getattr(native, name)
    assert isinstance(ours, type), name
    missing = public(theirs) - public(ours)
    assert not missing, f"{name} lacks {sorted(missing)}"
    assert public(ours) - public(theirs) == EXTRA_MEMBERS.get(name, set())


def test_stream_subscriptions_have_native_members_or_raise_stream_error() -> None:
    """Subscriptions have native's members; a stream the cluster cannot merge (here a STDDEV
    per group over an unkeyed source) fails clearly instead of half-working."""
    with laminardb.open(":memory:", workers=2) as db:
        db.execute("CREATE SOURCE ev (ts BIGINT, device VARCHAR)")
        db.execute("CREATE STREAM st AS SELECT device, stddev(ts) AS sd FROM ev GROUP BY device")
        db.execute("CREATE STREAM rows_of AS SELECT ts, device FROM ev")
        with pytest.raises(laminardb.StreamError, match="'st'"):
            db.subscribe_stream("st")
        calls = {
            "StreamSubscription": lambda: db.subscribe_stream("rows_of"),
            "CallbackSubscription": lambda: db.subscribe_stream_callback("rows_of", print),
        }
        for name, call in calls.items():
            sub = call()
            assert isinstance(sub, getattr(laminardb, name))
            assert public(getattr(native, name)) == public(type(sub)), name
            sub.cancel()


def test_aliases_like_native() -> None:
    assert (native.Config is native.LaminarConfig) == (laminardb.Config is laminardb.LaminarConfig)
    assert (native.BatchWriter is native.Writer) == (laminardb.BatchWriter is laminardb.Writer)


def _parameters(func: Any) -> tuple[list[str], set[str]] | None:
    """(positional parameter names in order, keyword-only names) without self/conn."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = [p for p in sig.parameters.values() if p.name not in ("self", "conn")]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional, {p.name for p in params if p.kind is p.KEYWORD_ONLY}


def _compatible(ours_func: Any, theirs: tuple[list[str], set[str]]) -> None:
    ours = _parameters(ours_func)
    assert ours is not None
    assert ours[0][: len(theirs[0])] == theirs[0], (ours, theirs)
    assert theirs[1] <= ours[1], (ours, theirs)
    sig = inspect.signature(ours_func)
    for extra in ours[0][len(theirs[0]) :] + sorted(ours[1] - theirs[1]):
        assert sig.parameters[extra].default is not inspect.Parameter.empty, extra


def _method_pairs() -> list[tuple[str, str]]:
    pairs = []
    for cls in (
        "Connection",
        "QueryResult",
        "ExecuteResult",
        "Writer",
        "LaminarConfig",
        "MaterializedView",
    ):
        for member in sorted(public(getattr(native, cls))):
            if callable(getattr(getattr(native, cls), member, None)):
                pairs.append((cls, member))
    return pairs


@pytest.mark.parametrize(("cls", "member"), _method_pairs())
def test_method_parameters_like_native(cls: str, member: str) -> None:
    """Native's parameter names, in order, so keyword calls work; ours may add optional ones."""
    theirs = _parameters(getattr(getattr(native, cls), member))
    if theirs is None:
        pytest.skip(f"native {cls}.{member} has no inspectable signature")
    _compatible(getattr(getattr(laminardb, cls), member), theirs)


#: Wrong values for each kind of native Connection parameter, by parameter name.
_WRONG: dict[str, tuple[Any, ...]] = {
    **dict.fromkeys(("table", "sql", "query", "name", "data"), (5, None)),
    "filter": (5,),  # None is its default
    "query_id": ("7", None, 1.5),
}


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[Any, Any]]:
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=2)
    for conn in (theirs, ours):
        conn.execute("CREATE SOURCE s (a BIGINT)")
    yield theirs, ours
    ours.close()
    theirs.close()


def _typed_calls() -> list[tuple[str, int, Any]]:
    """(method, position, a wrong value) for every native Connection parameter that takes
    a string or an integer."""
    calls = []
    for member in sorted(public(native.Connection)):
        params = _parameters(getattr(native.Connection, member))
        for i, param in enumerate(params[0] if params else []):
            if not (member == "insert" and param == "data"):  # data: any Arrow-like object
                calls += [(member, i, value) for value in _WRONG.get(param, ())]
    return calls


@pytest.mark.parametrize(("member", "position", "value"), _typed_calls())
def test_a_parameter_of_another_type_fails_as_natively(
    both: tuple[Any, Any], member: str, position: int, value: Any
) -> None:
    """The same TypeError, message and all, before anything is done (not an AttributeError
    from deep inside the coordinator)."""
    errors = []
    for conn in both:
        args = ["s"] * position + [value, None]  # a later argument: never reached
        params = _parameters(getattr(native.Connection, member))
        assert params is not None
        with pytest.raises(TypeError) as info:
            called = getattr(conn, member)(*args[: len(params[0])])
            if inspect.iscoroutine(called):  # ours: an async def, checked when awaited
                asyncio.run(called)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert both[1].sql("SELECT count(*) FROM s").fetchall() == [(0,)]


def test_an_integer_out_of_range_fails_as_natively(both: tuple[Any, Any]) -> None:
    """OverflowError, message and all, for the u64 query id and the i64 watermark."""
    for conn in both:
        conn.execute("CREATE SOURCE wm (ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")
    calls = [
        *((lambda c, v=v: c.cancel_query(v)) for v in (-1, 2**64)),
        *((lambda c, v=v: c.writer("wm").watermark(v)) for v in (2**63, -(2**63) - 1)),
    ]
    for call in calls:
        errors = []
        for conn in both:
            with pytest.raises(OverflowError) as info:
                call(conn)
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1]
    both[1].writer("wm").watermark(2**63 - 1)  # the edge itself is taken


def test_next_timeout_checks_its_argument_as_natively(both: tuple[Any, Any]) -> None:
    subs = []
    for conn in both:
        conn.execute("CREATE SOURCE nt (ts BIGINT)")
        conn.execute("CREATE STREAM nt_s AS SELECT ts FROM nt")
        subs.append(conn.subscribe_stream("nt_s"))
    for value in (1.5, None, "10", -1, 2**64):
        errors = []
        for sub in subs:
            with pytest.raises((TypeError, OverflowError)) as info:
                sub.next_timeout(value)
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1], value
    with pytest.raises(laminardb.SubscriptionError, match="timeout"):
        subs[1].next_timeout(0)


@pytest.mark.parametrize("name", ["open", "sql", "execute", "mv"])
def test_module_function_parameters_like_native(name: str) -> None:
    theirs = _parameters(getattr(native, name))
    assert theirs is not None
    _compatible(getattr(laminardb, name), theirs)


@pytest.mark.parametrize("name", ERRORS)
def test_exception_hierarchy_like_native(name: str) -> None:
    ours, theirs = getattr(laminardb, name), getattr(native, name)
    assert [c.__name__ for c in ours.__mro__] == [c.__name__ for c in theirs.__mro__]
    assert issubclass(ours, laminardb.LaminarError) and issubclass(ours, Exception)
    assert public(theirs) <= public(ours)
    assert ours is not getattr(builtins, name, None)  # our ConnectionError is not the builtin
    error = ours("Table not found (200): Table not found: x")
    assert error.code == 200
    assert str(error) == "Table not found (200): Table not found: x"


def test_codes_like_native() -> None:
    theirs = {n: getattr(native.codes, n) for n in public(native.codes)}
    ours = {n: getattr(laminardb.codes, n) for n in public(laminardb.codes)}
    assert ours == theirs


# ---------------------------------------------------------------------------------------------
# Module-level functions
# ---------------------------------------------------------------------------------------------


def test_open_refuses_a_path_or_worker_count_of_another_type(tmp_path: Any) -> None:
    for path in (None, 5):
        with pytest.raises(TypeError) as theirs:
            native.open(path)
        with pytest.raises(TypeError) as ours:
            laminardb.open(path, workers=1)
        assert str(ours.value) == str(theirs.value)
    for count in ("2", 2.5):
        with pytest.raises(TypeError, match=r"argument 'workers': .* interpreted as an integer"):
            laminardb.open(":memory:", workers=count)
    with laminardb.open(tmp_path / "db", workers=1) as conn:  # a Path, beyond native
        assert conn.path == str(tmp_path / "db")


def test_connect_refuses_a_uri_of_another_type_and_a_bad_address() -> None:
    for uri in (None, b"ipc:///tmp/x.sock", 5):  # not an in-memory database in disguise
        with pytest.raises(TypeError) as theirs:
            native.connect(uri)
        with pytest.raises(TypeError) as ours:
            laminardb.connect(uri)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(laminardb.ConnectionError, match=r"cannot connect to tcp://127\.0\.0\.1"):
        laminardb.connect("tcp://127.0.0.1")  # no port


def test_open_and_connect_give_working_connections() -> None:
    for conn in (
        laminardb.open(":memory:", workers=1),
        laminardb.connect("laminar://localhost:5432/mydb", workers=1),
    ):
        with conn:
            assert isinstance(conn, laminardb.Connection)
            assert len(conn.workers()) == 1
            assert conn.execute("CREATE SOURCE s (a BIGINT)").ddl_object == "s"
            assert conn.insert("s", {"a": [1, 2, 3]}) == 3
            assert conn.sql("SELECT sum(a) AS total FROM s").fetchall() == [(6,)]
        assert conn.is_closed


def test_mv_helper_like_native() -> None:
    theirs = native.open(":memory:")
    try:
        with laminardb.open(":memory:", workers=1) as ours:
            for conn in (ours, theirs):
                conn.execute("CREATE SOURCE ev (ts BIGINT, device VARCHAR)")
                conn.execute(
                    "CREATE MATERIALIZED VIEW m1 AS SELECT device, count(*) AS n FROM ev GROUP BY device"
                )
            mine, native_mv = laminardb.mv(ours, "m1"), native.mv(theirs, "m1")
            assert isinstance(mine, laminardb.MaterializedView)
            assert repr(mine) == repr(native_mv)
            assert (mine.name, mine.sql) == (native_mv.name, native_mv.sql)
            with_sql = laminardb.mv(ours, "m1", "SELECT 1")
            assert with_sql.sql == native.mv(theirs, "m1", "SELECT 1").sql == "SELECT 1"
    finally:
        theirs.close()


@pytest.fixture
def default_connection() -> Iterator[None]:
    """Whatever a test does with the module's default connection, it is closed afterwards."""
    yield
    if laminardb._default is not None:
        laminardb._default.close()


def test_module_sql_and_execute_use_one_default_connection(default_connection: None) -> None:
    assert laminardb.sql("SELECT 1 + 1 AS answer").fetchall() == [(2,)]
    assert native.sql("SELECT 1 + 1 AS answer").fetchall() == [(2,)]
    first = laminardb._default
    assert isinstance(first, laminardb.Connection) and not first.is_closed
    result = laminardb.execute("CREATE SOURCE surface_default (a BIGINT)")
    assert repr(result) == "ExecuteResult(ddl, CREATE SOURCE surface_default)"
    first.insert("surface_default", {"a": [5, 6]})
    assert laminardb.sql("SELECT sum(a) FROM surface_default").fetchall() == [(11,)]
    assert laminardb._default is first  # reused, not reopened per call
    assert isinstance(laminardb.execute("SELECT 3 AS x"), laminardb.ExecuteResult)
    first.close()
    # A closed default is replaced by a fresh one.
    assert laminardb.sql("SELECT 2 * 21 AS answer").fetchall() == [(42,)]
    assert laminardb._default is not first and not laminardb._default.is_closed
