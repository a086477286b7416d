"""Classes only the library builds: calling them raises, the library calls ``_create``."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass of a public class a user receives but never builds (a :class:`Reply`).

    ``Class(...)`` raises :class:`TypeError`, so an object built by hand cannot drift from what
    the library hands out; the library builds it with ``Class._create(...)``. Type checkers see
    the same: ``Class(...)`` is typed ``NoReturn``.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{cls.__qualname__} objects are built by the library, not by hand")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]
