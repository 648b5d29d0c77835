"""WarmPool: sandboxes opened ahead for the episodes next in line, bounded, handed over, closed if unclaimed."""

from __future__ import annotations

import threading
import time

import pytest

from protege.agent.protocols import SandboxError
from protege.agent.sandbox.warm_pool import WarmPool


class Box:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


class Opener:
    """Records each open; `gate` holds the background opens until set; names in `fail` raise."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.opened: list[Box] = []
        self.threads: list[str] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, name: str) -> Box:
        self.threads.append(threading.current_thread().name)
        self.gate.wait(5)
        if name in self.fail:
            raise SandboxError(f"cannot open {name}")
        box = Box(name)
        self.opened.append(box)
        return box


def _settle(pool: WarmPool, ready: int) -> None:
    deadline = time.monotonic() + 5
    while len(pool._ready) < ready and time.monotonic() < deadline:
        time.sleep(0.01)


def test_prepares_ahead_in_order_and_never_more_than_depth():
    opener = Opener()
    with WarmPool(opener, depth=2) as pool:
        pool.expect(("a",), ("b",), ("c",))
        _settle(pool, 2)
        time.sleep(0.05)
        assert [b.name for b in opener.opened] == ["a", "b"]  # c waits for room
        assert pool.open("a") is opener.opened[0]
        _settle(pool, 2)
        assert [b.name for b in opener.opened] == ["a", "b", "c"]
        assert pool.open("b").name == "b" and pool.open("c").name == "c"
    assert (pool.hits, pool.misses) == (3, 0)
    assert set(opener.threads) == {"warm-pool"}


def test_an_unexpected_open_is_opened_in_the_callers_thread_and_dropped_from_the_queue():
    opener = Opener()
    opener.gate.clear()
    with WarmPool(opener, depth=1) as pool:
        pool.expect(("a",), ("b",))
        time.sleep(0.05)  # the pool is stuck opening a
        threading.Timer(0.1, opener.gate.set).start()
        box = pool.open("b")  # b was queued but not started: opened here, never prepared on top
        assert box.name == "b" and opener.threads[-1] == threading.current_thread().name
        assert pool.open("a").name == "a"  # waited for the one being prepared
        time.sleep(0.05)
    assert sorted(b.name for b in opener.opened) == ["a", "b"]
    assert (pool.hits, pool.misses) == (1, 1)


def test_a_failed_open_ahead_is_retried_by_the_caller_and_its_error_propagates():
    opener = Opener(fail=("bad",))
    with WarmPool(opener, depth=1) as pool:
        pool.expect(("bad",))
        time.sleep(0.05)
        with pytest.raises(SandboxError, match="cannot open bad"):
            pool.open("bad")
    assert opener.threads.count("warm-pool") == 1 and len(opener.threads) == 2


def test_close_closes_what_nobody_claimed_and_depth_zero_prepares_nothing():
    opener = Opener()
    pool = WarmPool(opener, depth=2)
    pool.expect(("a",), ("b",))
    _settle(pool, 2)
    pool.close()
    assert [b.closed for b in opener.opened] == [True, True]
    idle = Opener()
    with WarmPool(idle, depth=0) as off:
        off.expect(("a",))
        time.sleep(0.05)
        assert idle.opened == []
        assert off.open("a").name == "a"


def test_episodes_with_equal_arguments_take_the_prepared_sandboxes_in_turn():
    """A GRPO group: the same task G times; each claim after the first finds one prepared."""
    opener = Opener()
    with WarmPool(opener, depth=1) as pool:
        pool.expect(("t",), ("t",))
        _settle(pool, 1)
        first = pool.open("t")
        _settle(pool, 1)
        second = pool.open("t")
        _settle(pool, 1)
        third = pool.open("t")
    assert len({id(first), id(second), id(third)}) == 3
    assert len(opener.opened) == 3 and (pool.hits, pool.misses) == (2, 1)
