"""The bounded cache behind final rows and rendered cards."""
from cache import BoundedCache


def test_least_recently_used_entries_go_first_within_the_byte_budget():
    cache = BoundedCache(max_bytes=10)
    cache.put("a", "aaaa")
    cache.put("b", "bbbb")
    assert cache.get("a") == "aaaa"  # now b is the least recently used
    cache.put("c", "cccc")
    assert cache.get("b") is None and cache.get("a") == "aaaa" and cache.get("c") == "cccc"


def test_a_value_larger_than_the_budget_is_returned_but_not_kept():
    cache = BoundedCache(max_bytes=3)
    assert cache.put("big", "too large") == "too large"
    assert cache.get("big") is None


def test_a_kept_value_is_never_replaced():
    cache = BoundedCache(max_bytes=100)
    cache.put("k", "first")
    cache.put("k", "second")
    assert cache.get("k") == "first"
