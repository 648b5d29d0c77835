"""Sandboxes opened ahead: the next episodes' sandboxes are prepared while the running ones generate.

The episode loops (RL rollouts, eval, synth) know which tasks come next. `WarmPool.expect(args...)` queues
the opener arguments of the episodes in the order they will start; a background thread opens them through
the wrapped opener, never more than `depth` opened and not yet claimed; `WarmPool.open(*args)` (the
opener's own signature) hands over the sandbox prepared for those arguments, waits for one being prepared,
or opens one itself. An open that failed in the background is retried in the foreground by the caller's
own path (its gate, backoff, error reporting). Closing the pool closes what nobody claimed. rLLM keeps
such a pool of prepared sandboxes ahead of its schedule; with the checkout cache a local open is tens of
milliseconds, so the pool matters most for a checkout's first build and for container backends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class WarmPool:
    """At most `depth` sandboxes opened ahead by `opener`, for the arguments `expect` queued."""

    def __init__(self, opener: Callable[..., Any], depth: int) -> None:
        self.opener, self.depth = opener, depth
        self._lock = threading.Condition()
        self._queue: deque[tuple[Any, ...]] = deque()
        self._ready: list[tuple[tuple[Any, ...], Any]] = []
        self._preparing: list[tuple[Any, ...]] = []
        self._closed = False
        self.hits = self.misses = 0
        self._thread = threading.Thread(target=self._prepare, name="warm-pool", daemon=True)
        if depth > 0:
            self._thread.start()

    def expect(self, *calls: tuple[Any, ...]) -> None:
        """Queue the opener arguments of the coming episodes, first to start first."""
        if self.depth <= 0:
            return
        with self._lock:
            self._queue.extend(calls)
            self._lock.notify_all()

    def _prepare(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(
                    lambda: (
                        self._closed or (self._queue and len(self._ready) + len(self._preparing) < self.depth)
                    )
                )
                if self._closed:
                    return
                args = self._queue.popleft()
                self._preparing.append(args)
            sandbox = None
            try:
                sandbox = self.opener(*args)
            except Exception as err:  # noqa: BLE001 - the episode opens it again itself and reports
                log.info("opening a sandbox ahead failed (the episode will retry): %s", err)
            with self._lock:
                self._preparing.remove(args)
                if sandbox is not None and self._closed:
                    with contextlib.suppress(Exception):
                        sandbox.close()
                elif sandbox is not None:
                    self._ready.append((args, sandbox))
                self._lock.notify_all()

    def open(self, *args: Any) -> Any:
        """The sandbox prepared for args, else one opened now (the wrapped opener's errors propagate)."""
        with self._lock:
            self._lock.wait_for(lambda: args not in self._preparing)
            for n, (ready_args, sandbox) in enumerate(self._ready):
                if ready_args == args:  # episodes with equal arguments (a GRPO group) share the queue
                    del self._ready[n]
                    self.hits += 1
                    self._lock.notify_all()
                    return sandbox
            with contextlib.suppress(ValueError):
                self._queue.remove(args)  # it starts now: never prepare it on top
            self.misses += 1
        return self.opener(*args)

    def close(self) -> None:
        """Stop preparing; close every sandbox nobody claimed."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._lock.notify_all()
            self._lock.wait_for(lambda: not self._preparing)
            unclaimed, self._ready = self._ready, []
        for _, sandbox in unclaimed:
            with contextlib.suppress(Exception):
                sandbox.close()

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
