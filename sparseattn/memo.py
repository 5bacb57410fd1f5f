"""Memoisation of derived state: the one mechanism for lowered layouts and launch state.

Two shapes of reuse occur in the package, and each has one tool here:

- `attached`: state derived from one object and valid as long as it lives (a layout's row statistics,
  its work lists and kv-major view; a mask context's tile classes). Stored in a weak map, so it goes
  away with its owner and never keeps a layout alive.
- `LRU`: a bounded map from hashable values to results that are costly to rebuild (layouts lowered
  from a pattern at given lengths). Bounded because the keys (prompt lengths) are unbounded.

Pure functions of a few immutable values (device properties) use ``functools.cache`` directly: there
is nothing to invalidate and nothing to bound. Device tensors shared by shape (tile bounds, causal
bitmaps) come from `shared_cache`, a bounded cache whose values a `keeping` block collects: a CUDA graph
captured inside one reads those tensors on every replay, so it must hold them past their eviction.
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar

_Value = TypeVar("_Value")
_Key = TypeVar("_Key", bound=Hashable)
_Params = ParamSpec("_Params")

_ATTACHED: weakref.WeakKeyDictionary[Any, dict[Hashable, Any]] = weakref.WeakKeyDictionary()
_KEEPER: ContextVar[list[Any] | None] = ContextVar("sparseattn_keeper", default=None)


@contextmanager
def keeping() -> Iterator[list[Any]]:
    """Collect every value that `shared_cache` functions and `attached` return inside the block, computed
    or found, into the list it yields; the caller holds the list as long as it needs those values alive."""
    kept: list[Any] = []
    token = _KEEPER.set(kept)
    try:
        yield kept
    finally:
        _KEEPER.reset(token)


def _keep(value: _Value) -> _Value:
    kept = _KEEPER.get()
    if kept is not None:
        kept.append(value)
    return value


def shared_cache(maxsize: int) -> Callable[[Callable[_Params, _Value]], Callable[_Params, _Value]]:
    """``functools.lru_cache(maxsize)`` whose results an active `keeping` block also collects."""

    def decorate(fn: Callable[_Params, _Value]) -> Callable[_Params, _Value]:
        cached: Callable[..., _Value] = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def wrapper(*args: _Params.args, **kwargs: _Params.kwargs) -> _Value:
            return _keep(cached(*args, **kwargs))

        return wrapper

    return decorate


def attached(owner: object, key: Hashable, compute: Callable[[], _Value]) -> _Value:
    """``compute()``, memoised on ``owner`` under ``key`` for as long as ``owner`` lives.

    Owners compare by their own ``__eq__``: value-equal owners (equal mask contexts) share entries,
    which is what value equality promises. A key that cannot be hashed (a pattern holding tensors) is
    computed every time.
    """
    entries = _ATTACHED.get(owner)
    if entries is None:
        entries = _ATTACHED[owner] = {}
    try:
        if key in entries:
            found: _Value = entries[key]
            return _keep(found)
    except TypeError:
        return _keep(compute())
    entries[key] = result = compute()
    return _keep(result)


class LRU(Generic[_Key, _Value]):
    """At most ``maxsize`` results, the least recently used dropped first."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize: expected a positive number of entries, got {maxsize}")
        self.maxsize = maxsize
        self._entries: OrderedDict[_Key, _Value] = OrderedDict()
        self.misses = 0

    def get(self, key: _Key, compute: Callable[[], _Value]) -> _Value:
        """The result stored under ``key``, computed (and counted as a miss) on first use."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        result = self._entries[key] = compute()
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return result

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def peek(owner: object, key: Hashable) -> Any | None:
    """What `attached` holds for ``owner`` under ``key``, or None when nothing was computed yet."""
    entries = _ATTACHED.get(owner)
    return None if entries is None else _keep(entries.get(key))


def seed(owner: object, key: Hashable, value: object) -> None:
    """Store ``value`` for ``owner`` under ``key``, as if `attached` had computed it (derived state
    known from another owner, such as tile classes shared along a run of equal tiles)."""
    _ATTACHED.setdefault(owner, {})[key] = value
