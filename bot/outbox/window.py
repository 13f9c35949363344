"""The relay's window of deliveries in flight: up to `size` sink calls running at once.

The relay's thread submits a unit of work (one report, or one batch of them) with `submit`; the
sink call runs in one of `size` threads, and its outcome (what the call returned, or what it
raised) comes back to the relay's thread, which settles it (breaker, ack, backoff, dead letter)
through the `settle` callback given at construction. So the relay's own state is only ever
touched by its thread; the sink is the one thing the threads share (the HTTP sink's connection
pool is thread safe, and its per-request deadline is per thread).

`submit` waits for a free slot when all are taken, settling what ends meanwhile; `reap` settles
what has ended (waiting up to a timeout for the first); `drain` waits for all of them. Nothing
is settled before its call has returned, which is what makes the relay ack a report only after
its own delivery succeeded. With `size` 1 there is no thread: the call runs inside `submit` and
is settled before it returns (the relay as it was, one delivery at a time in its own thread).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

U = TypeVar("U")

#: What a call came to: the unit, its keys, the call's return value, and what it raised.
Done = tuple[Any, tuple[Hashable, ...], Any, BaseException | None]
#: `settle(unit, value, error)`: error is None when the call returned `value`.
Settle = Callable[[U, Any, BaseException | None], None]
#: What a thread of the window is handed: the unit, its keys, the call (None: stop).
Task = tuple[Any, tuple[Hashable, ...], Callable[[], Any]] | None


class DeliveryWindow(Generic[U]):
    def __init__(self, size: int, settle: Settle[U], name: str = "relay") -> None:
        if size < 1:
            raise ValueError(f"a delivery window holds at least one call, not {size}")
        self.size = size
        self._settle = settle
        self._busy = 0
        self._held: set[Hashable] = set()
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._todo: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._name = name
        self._threads: list[threading.Thread] = []  # started as calls need them, up to size
        self._inline = size == 1

    @property
    def busy(self) -> int:
        """Calls submitted and not settled yet (running, or ended and waiting to be settled)."""
        return self._busy

    def holds(self, key: Hashable) -> bool:
        """Whether a unit with this key is in flight (not to be submitted again)."""
        return key in self._held

    def submit(self, unit: U, keys: Iterable[Hashable], call: Callable[[], Any]) -> None:
        """Run `call` for `unit` in a free slot, waiting for one (and settling) if none is."""
        held = tuple(keys)
        if self._inline:
            self._finish(self._run(unit, held, call))
            return
        while self._busy >= self.size:
            self.reap(None)
        self._busy += 1
        self._held.update(held)
        if len(self._threads) < self._busy:
            self._start_thread()
        self._todo.put((unit, held, call))

    def reap(self, timeout_s: float | None = 0.0) -> int:
        """Settle every call that has ended; wait up to `timeout_s` (None: for ever) for the
        first when none has. Returns how many were settled."""
        if not self._busy:
            return 0
        try:
            if timeout_s is not None and timeout_s <= 0:
                first = self._done.get_nowait()
            else:
                first = self._done.get(timeout=timeout_s)
        except queue.Empty:
            return 0
        settled = 1
        self._finish(first)
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return settled
            settled += 1
            self._finish(done)

    def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every call in flight, settling each; how many are left."""
        deadline = time.monotonic() + timeout_s
        while self._busy:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.reap(left)
        return self._busy

    def close(self) -> None:
        """Stop the threads once their calls end (daemon threads: none holds up an exit).
        A closed window is not used again."""
        for _ in self._threads:
            self._todo.put(None)
        self._threads = []

    def _start_thread(self) -> None:
        number = len(self._threads) + 1
        thread = threading.Thread(target=self._work, name=f"bot-{self._name}-{number}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (task := self._todo.get()) is not None:
            self._done.put(self._run(*task))

    @staticmethod
    def _run(unit: U, held: tuple[Hashable, ...], call: Callable[[], Any]) -> Done:
        try:
            return unit, held, call(), None
        except BaseException as exc:  # handed back to the relay's thread, which decides
            return unit, held, None, exc

    def _finish(self, done: Done) -> None:
        unit, held, value, error = done
        if not self._inline:
            self._busy -= 1
            self._held.difference_update(held)
        self._settle(unit, value, error)
