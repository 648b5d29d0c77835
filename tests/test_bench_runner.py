"""`python -m bench`: a help that lists the benchmarks, names checked before anything runs, knobs settable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True)


def test_help_lists_every_benchmark_without_running_one():
    done = _bench("--help")
    assert done.returncode == 0, done.stderr
    for path in sorted((ROOT / "bench").glob("bench_*.py")):
        assert path.stem in done.stdout
    assert "--set MODULE.KNOB=VALUE" in done.stdout


def test_an_unknown_benchmark_is_refused_by_name():
    done = _bench("checkout", "no_such_thing")
    assert done.returncode == 2
    assert "unknown benchmark(s): bench_no_such_thing" in done.stderr


def test_a_knob_is_set_with_its_type_and_an_unknown_knob_is_refused():
    from bench import __main__ as runner
    from bench import bench_checkout

    before = bench_checkout.OPENS
    try:
        runner._apply_settings(["bench_checkout.OPENS=3"])
        assert bench_checkout.OPENS == 3
        with pytest.raises(SystemExit, match="bench_checkout has no knob NOPE"):
            runner._apply_settings(["bench_checkout.NOPE=1"])
    finally:
        bench_checkout.OPENS = before
