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

    def get_or_create(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if (found := self._hit(key)) is not None:
                return found
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if (found := self._hit(key)) is not None:
                    return found
            value = make()
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                while len(self._items) > max(1, get_settings().model_cache_size):
                    self._items.popitem(last=False)
            return value

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
