import pytest

from ratelimit.clock import ManualClock


def test_manual_clock_advances():
    clock = ManualClock(5.0)
    clock.advance(2.5)
    assert clock.now() == 7.5


def test_manual_clock_cannot_go_backwards():
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)
