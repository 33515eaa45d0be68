"""Exact-match response cache for deterministic requests.

Bounded three ways: entries (LRU eviction), bytes (LRU eviction) and age (TTL, checked on
read). The key is built by the caller from the tier, the tier's serving checkpoint and
the request bytes, so a checkpoint promotion never serves the previous model's answers.
The clock is injected.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    content_type: str
    stored_at: float


def cache_key(path: str, tier: str, checkpoint: str | None, body: bytes) -> bytes:
    """The key of one request: byte-exact body, endpoint, tier and serving checkpoint."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (path.encode(), tier.encode(), (checkpoint or "").encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(body)
    return digest.digest()


class ResponseCache:
    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[bytes, CachedResponse] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, max_entries: int, max_bytes: int, ttl_seconds: float) -> None:
        self.max_entries, self.max_bytes, self.ttl_seconds = max_entries, max_bytes, ttl_seconds
        self._evict()

    def get(self, key: bytes) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.stored_at >= self.ttl_seconds:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, body: bytes, content_type: str) -> bool:
        """Store a response; False when it alone is larger than the byte bound."""
        if len(body) > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = CachedResponse(body, content_type, self._clock())
        self.bytes += len(body)
        self._evict()
        return True

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.body)

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
            _, entry = self._entries.popitem(last=False)
            self.bytes -= len(entry.body)
