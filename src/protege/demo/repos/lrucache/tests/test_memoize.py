from lrucache.memoize import lru_memoize


def test_memoized_function_runs_once_per_argument():
    calls = []

    @lru_memoize(capacity=4)
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]
    assert square.cache.stats.hits == 1
