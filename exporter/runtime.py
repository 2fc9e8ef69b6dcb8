"""What the process needs of its host: the event-loop thread, signals, a periodic task,
the open-files limit, memory handed back."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import resource
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from exporter.cec.text import fields

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class LoopThread:
    """An asyncio event loop in a daemon thread; other threads submit coroutines to it.

    Every collection and every HTTP answer runs on this one loop, so a slow target
    holds up nothing but its own coroutines.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cec-io", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result (raises TimeoutError past
        ``timeout``, CancelledError if the loop cancels it)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def on_signals(stop: Callable[[], object], reload: Callable[[], object] | None = None) -> None:
    """Call ``stop`` on SIGTERM or SIGINT and ``reload`` (if any) on SIGHUP, each in a thread
    of its own (a signal handler must not block, and both may wait for the loop)."""

    def handler(action: Callable[[], object]) -> Callable[[int, object], None]:
        return lambda _signum, _frame: threading.Thread(target=action, daemon=True).start()

    signal.signal(signal.SIGTERM, handler(stop))
    signal.signal(signal.SIGINT, handler(stop))
    if reload is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, handler(reload))


def every(seconds: float, action: Callable[[], object], name: str) -> Callable[[], None]:
    """Call ``action`` every ``seconds`` in a daemon thread named ``name``; returns what stops it.

    A thread of its own, not the event loop: ``action`` may wait for the loop (a reload
    does). An exception is logged and the next call made on time: a watch that died on
    one bad read would leave the operator believing that it still watched.
    """
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.wait(seconds):
            try:
                action()
            except Exception:
                log.exception("periodic task failed", extra=fields(task=name))

    threading.Thread(target=loop, name=name, daemon=True).start()
    return stopped.set


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, as Go's runtime does; the new soft limit.

    systemd's default soft limit (1024) is a legacy of ``select()``; the event loop
    uses epoll and needs a descriptor per connection.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as nr_open:
                wanted = int(nr_open.read())
        except (OSError, ValueError):
            return soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as err:
            log.info(
                "open files limit not raised",
                extra=fields(limit=soft, wanted=wanted, error=err),
            )
            return soft
        log.info("open files limit raised", extra=fields(limit=wanted, was=soft))
        return wanted
    return soft


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_TRIM = _malloc_trim()


def return_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc), at once.

    Connections are many small allocations; once a few hundred close, their memory is free
    but scattered among live objects, and glibc returns only the heap's top on its own: a
    burst of hostile connections would keep the process's RSS at its peak for good. A call
    takes tens of microseconds.
    """
    if _TRIM is not None:
        _TRIM(0)


__all__ = ["raise_open_files_limit", "return_free_memory"]
