"""Argument checks of the public API: a `str` or `int` parameter given anything else fails
as the native bindings fail (their generated argument parsing: `TypeError: argument
'table': 'NoneType' object cannot be cast as 'str'`), before any work is done, rather than
deep in the coordinator with an `AttributeError` or a "not found" for the wrong reason."""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")
_Check = tuple[int, str, str]  # position (self is 0), name, annotation
_CHECKED = ("str", "str | None", "int")


def typed_arguments(cls: type[_T]) -> type[_T]:
    """`cls` with each public method that takes `str` or `int` parameters checking them on
    call."""
    return checked_by(argument_checks(cls))(cls)


def argument_checks(cls: type) -> dict[str, list[_Check]]:
    """Per public method of `cls`, its `str` / `int` parameters (position, name, type)."""
    found: dict[str, list[_Check]] = {}
    for name, member in vars(cls).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        checks = [
            (i, p.name, p.annotation)
            for i, p in enumerate(inspect.signature(member).parameters.values())
            if isinstance(p.annotation, str) and p.annotation in _CHECKED
        ]
        if checks:
            found[name] = checks
    return found


def checked_by(table: Mapping[str, Sequence[_Check]]) -> Callable[[type[_T]], type[_T]]:
    """A class decorator checking the methods named in `table` as it says (for a class whose
    methods are generated, such as the service client, from `argument_checks(Connection)`)."""

    def decorate(cls: type[_T]) -> type[_T]:
        for name, checks in table.items():
            member = vars(cls).get(name)
            if inspect.isfunction(member):
                setattr(cls, name, _checked(member, checks))
        return cls

    return decorate


def not_text(name: str, value: object) -> TypeError:
    """The native bindings' error for argument `name` given `value`, not a string."""
    return TypeError(f"argument '{name}': '{type(value).__name__}' object cannot be cast as 'str'")


def not_integer(name: str, value: object) -> TypeError:
    """The native bindings' error for argument `name` given `value`, not an integer."""
    kind = type(value).__name__
    return TypeError(f"argument '{name}': '{kind}' object cannot be interpreted as an integer")


def integer_arg(name: str, value: object) -> int:
    """`value` as an int (anything with `__index__`: a float is not truncated, a string not
    parsed), or the native error."""
    if not hasattr(type(value), "__index__"):
        raise not_integer(name, value)
    return operator.index(value)  # type: ignore[arg-type]


def unsigned_arg(name: str, value: object) -> int:
    """`value` as a non-negative 64-bit int, failing as the native argument parser fails."""
    number = integer_arg(name, value)
    if number < 0:
        raise OverflowError("can't convert negative int to unsigned")
    if number >= 2**64:
        raise OverflowError("int too big to convert")
    return number


def signed_arg(name: str, value: object) -> int:
    """`value` as a 64-bit int, failing as the native argument parser fails."""
    number = integer_arg(name, value)
    if not -(2**63) <= number < 2**63:
        raise OverflowError("Python int too large to convert to C long")
    return number


def _check(checks: Sequence[_Check], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for i, name, annotation in checks:
        if i < len(args):
            value = args[i]
        elif name in kwargs:
            value = kwargs[name]
        else:
            continue  # left to its default, or to Python's own missing-argument error
        if annotation == "int":  # native `Connection` takes only unsigned ones (query ids)
            unsigned_arg(name, value)
        elif not isinstance(value, str) and not (annotation == "str | None" and value is None):
            raise not_text(name, value)


def _checked(fn: Callable[..., Any], checks: Sequence[_Check]) -> Callable[..., Any]:
    """`fn` checking its arguments first (an `async def` stays one: checked when awaited)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            _check(checks, args, kwargs)
            return await fn(*args, **kwargs)

        return checked_async

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check(checks, args, kwargs)
        return fn(*args, **kwargs)

    return checked
