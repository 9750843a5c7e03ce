"""A small in-memory cache bounded by size, for values that never change once made (final tasks, rendered cards)."""
from collections import OrderedDict


class BoundedCache:
    """Least recently used entries go first once `max_bytes` (as measured by `size`) would be exceeded."""

    def __init__(self, max_bytes: int, size=len):
        self.max_bytes, self.size = max_bytes, size
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0

    def get(self, key):
        value = self._entries.get(key)
        if value is not None: self._entries.move_to_end(key)
        return value

    def put(self, key, value):
        cost = self.size(value)
        if cost > self.max_bytes or key in self._entries: return value
        while self._bytes + cost > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= self.size(dropped)
        self._entries[key] = value
        self._bytes += cost
        return value
