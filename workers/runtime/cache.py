"""The per-process cache of loaded engines and predictors."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from core.settings import get_settings


class LRUCache:
    """A small thread-safe LRU whose size follows ``settings.model_cache_size``. A key being built blocks
    only callers of that key, so one slow export does not stall cache hits for other backbones."""

    def __init__(self) -> None:
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def _hit(self, key: Hashable) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def get_or_create(self, key: Hashable, make: Callable[[], Any], keep: Callable[[Any], bool] | None = None) -> Any:
        """The cached value, or ``make()`` run once however many callers miss at the same time. ``keep``
        (checked under the lock) can refuse to cache what was made, e.g. a model deleted meanwhile."""
        with self._lock:
            if (found := self._hit(key)) is not None:
                return found
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if (found := self._hit(key)) is not None:
                    return found
            try:
                value = make()
                with self._lock:
                    if keep is None or keep(value):
                        self._items[key] = value
                    while len(self._items) > max(1, get_settings().model_cache_size):
                        self._items.popitem(last=False)
            finally:
                with self._lock:  # also after a failed build: junk keys must not pile up here
                    self._building.pop(key, None)
            return value

    def peek(self, key: Hashable) -> Any:
        with self._lock:
            return self._hit(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def discard(self, match: Callable[[Hashable], bool]) -> None:
        """Drop every entry whose key matches (e.g. a deleted model's, whichever tenant asked)."""
        with self._lock:
            for key in [k for k in self._items if match(k)]:
                del self._items[key]
