"""The DNS thread: where the stub's UDP side runs, and what each thread owns.

The daemon runs two threads. Each thing below belongs to one of them; the other thread may only
do what the last column says.

    thread          owns                                    the other thread may
    --------------  --------------------------------------  ------------------------------------
    DNS thread      the stub's UDP sockets (reads,          hand it work: call_soon_threadsafe();
    (portal-dns,    replies); the forwarder's upstream      read Forwarder.in_flight
    this reactor)   sockets, queries in flight, expiry
                    timer and pools (edges/upstream.py);
                    the stub's forwards per client; the
                    counters of an armed DNS alarm
                    (core/expiry.py AnswerWatch)
    asyncio loop    TCP clients and their forwards; D-Bus,  replace the stub's Answers: one
    (main)          detection, probes, the overrides and    reference to the overrides, routes
                    the state file, resolver wiring; the    and answer cache together (the DNS
                    TCP retry of a truncated UDP answer     thread reads it per packet), then
                    (run_coroutine)                         the one item of the C wait's table
                                                            reference (read per wakeup); replace
                                                            the forwarder's upstreams (one tuple);
                                                            arm or disarm the DNS alarm (one
                                                            reference to a new AnswerWatch; the
                                                            thread calls back with
                                                            call_soon_threadsafe, once)

The forwarder needs five things from a loop: the time, read callbacks on its sockets, timers, a
way to be called from another thread, and a coroutine run for it (the rare TCP retry).
`ThreadReactor` provides them in a thread that does nothing but the stub's UDP side, so that a
query is read as soon as the kernel has it:

- With nothing else to wait for (no forwarded query in flight, no timer due), the thread sleeps
  in a plain blocking `recvfrom()` on the stub's one UDP socket (`serve_solo`), the shortest path
  from a packet's arrival to its answer (bench/: an epoll round and asyncio's loop cost 4 and
  10 µs per wakeup, which is most of what separated the stub's latency from dnsmasq's). The
  stub may give a wait of its own instead (with portal._udpbatch, one that answers what its
  answer cache holds in C and returns only the rest).
- Otherwise it waits in epoll on every registered socket, with the next timer as timeout.
- Another thread hands it work with `call_soon_threadsafe()`: a queue plus one datagram from a
  private loopback socket, to the solo socket (which wakes either kind of wait; the stub drops
  datagrams from `waker_address`) or, without one, to the reactor's own inbox socket.

The daemon's own loop stays free for D-Bus, detection and TCP clients; when it is idle it holds
no lock the thread needs (the interpreter lock is released in its epoll wait).

The thread may start before there is an asyncio loop, or asyncio at all (`start_thread()`: the
daemon answers its first queries while it still imports the rest, portal/early.py); `attach()`
hands it the loop later. This module imports asyncio only when a loop is attached.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("portal.dns")

Done = Callable[[Any], None]


class Timer:
    """A timer of the DNS thread (call_at); cancel() before it fires and it never does."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ThreadReactor:
    """A minimal loop in a thread of its own for the stub's UDP side (see the module text).

    `serve_solo()` names the stub's UDP socket when it has exactly one (blocking mode, see
    above); `busy()` says whether anything besides that socket may need attention (forwards in
    flight); `on_fatal(exc)` is called on the main loop if the thread dies. Every callback runs
    in this thread.
    """

    def __init__(self) -> None:
        self.main_loop: asyncio.AbstractEventLoop | None = None  # the loop attach()ed
        self._epoll = select.epoll()
        self._readers: dict[int, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._calls: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.solo: socket.socket | None = None
        self.on_solo: Callable[[bytes, Any], None] | None = None
        self.solo_wait: Callable[[], list[tuple[bytes, Any]]] | None = None
        self.busy: Callable[[], bool] = lambda: False
        # called at the end of every round of callbacks (the stub sends its replies then)
        self.after: Callable[[], None] = lambda: None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._failure: BaseException | None = None  # why the thread died, if it did
        # Wakes the thread: a datagram from this private socket to the inbox, a loopback socket
        # of the reactor's own in epoll, or to the solo socket once there is one.
        self._inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._inbox.bind(("127.0.0.1", 0))
        self._inbox.setblocking(False)
        self.add_reader(self._inbox.fileno(), self._drain_inbox)
        self._wake_to: tuple[Any, ...] = self._inbox.getsockname()
        self._waker = self._new_waker(socket.AF_INET)
        self.waker_address = self._waker.getsockname()

    @staticmethod
    def _new_waker(family: socket.AddressFamily) -> socket.socket:
        waker = socket.socket(family, socket.SOCK_DGRAM)
        waker.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        waker.setblocking(False)
        return waker

    def serve_solo(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, Any], None],
        wait: Callable[[], list[tuple[bytes, Any]]] | None = None,
    ) -> None:
        """Read `sock` (blocking) with a plain recvfrom() whenever nothing else needs the thread,
        and hand each datagram to `on_datagram(data, addr)`; wake-ups are sent to `sock` from
        then on, from `waker_address` (the handler drops those). `wait()`, when given, is the
        read instead: it blocks on `sock` and returns the datagrams for `on_datagram`, at least
        one, having dealt with any others itself. Before start()."""
        if sock.family != self._waker.family:
            self._waker.close()
            self._waker = self._new_waker(sock.family)
            self.waker_address = self._waker.getsockname()
        self.solo, self.on_solo, self.solo_wait = sock, on_datagram, wait
        self._wake_to = sock.getsockname()

    def _drain_inbox(self) -> None:
        while True:
            try:
                self._inbox.recv(64)
            except OSError:  # BlockingIOError: drained
                return

    # -- the reactor interface (called in the thread) ------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def add_reader(self, fd: int, callback: Callable[..., None], *args: Any) -> None:
        if fd in self._readers:
            self._epoll.modify(fd, select.EPOLLIN)
        else:
            self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = (callback, args)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):  # already closed
                pass

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def run_coroutine(self, coro: Coroutine[Any, Any, Any], done: Done) -> None:
        """Run `coro` on the daemon's loop; `done(result or None)` back in this thread. Before
        a loop is attached (the first moments of a start) it is not run: done(None)."""
        if self.main_loop is None:
            coro.close()
            self.call_soon_threadsafe(done, None)
            return
        import asyncio  # imported by whoever attached the loop: a dictionary lookup

        future = asyncio.run_coroutine_threadsafe(coro, self.main_loop)

        def finished(f: Any) -> None:
            result = None if f.cancelled() or f.exception() is not None else f.result()
            self.call_soon_threadsafe(done, result)

        future.add_done_callback(finished)

    # -- from any thread -----------------------------------------------------------------------

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        self._calls.append((callback, args))
        try:
            self._waker.sendto(b"\0", self._wake_to)
        except OSError as exc:  # a full buffer: the thread is awake and busy anyway
            log.debug("waking the DNS thread: %s", exc)

    def in_thread(self) -> bool:
        """Whether the caller runs in the reactor's thread (before start: whoever sets it up)."""
        return self._thread is None or self._thread is threading.current_thread()

    def start(self) -> None:
        """attach() the running loop and start the thread, unless start_thread() already did."""
        import asyncio

        self.attach(asyncio.get_running_loop())
        if not self.started():
            self.start_thread()

    def start_thread(self) -> None:
        """Start the thread, with or without a loop attached yet."""
        self._thread = threading.Thread(target=self._main, name="portal-dns", daemon=True)
        self._thread.start()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the thread hands coroutines (run_coroutine) and its failure (on_fatal) to.
        A failure before it is attached is handed over here."""
        self.main_loop = loop
        failure = self._failure
        if failure is not None and self.on_fatal is not None:
            loop.call_soon_threadsafe(self.on_fatal, failure)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after what it is doing; wait for it (blocking: call off the loop)."""
        self.call_soon_threadsafe(self._stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._epoll.close()
        self._waker.close()
        self._inbox.close()

    def started(self) -> bool:
        return self._thread is not None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ----------------------------------------------------------------------------

    def _stop(self) -> None:
        self._stopping = True

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the stub never dies silently: the daemon is told
            log.critical("the DNS thread failed: %r", exc, exc_info=True)
            self._failure = exc
            if self.on_fatal is not None and self.main_loop is not None:
                self.main_loop.call_soon_threadsafe(self.on_fatal, exc)

    def _loop(self) -> None:
        readers, calls = self._readers, self._calls
        on_solo, busy, after = self.on_solo, self.busy, self.after
        wait = self._solo_read()
        while not self._stopping:
            if calls:
                self._run_calls()
                self._after(after)
                continue
            if wait is not None and not busy():
                # the hot loop of a stub that answers locally: one blocking read per wakeup
                try:
                    datagrams = wait()
                except OSError as exc:
                    log.debug("udp receive failed: %s, ignoring", exc)
                    continue
                for data, addr in datagrams:
                    try:
                        on_solo(data, addr)  # type: ignore[misc]
                    except Exception:
                        log.exception("internal error on a datagram, continuing")
                self._after(after)
                continue
            timeout = self._run_timers()
            if calls:
                self._after(after)
                continue
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in events:
                entry = readers.get(fd)
                if entry is not None:
                    try:
                        entry[0](*entry[1])
                    except Exception:  # as asyncio does: log, and serve the rest
                        log.exception("internal error in a DNS thread reader, continuing")
            self._run_timers()
            self._after(after)

    def _solo_read(self) -> Callable[[], Sequence[tuple[bytes, Any]]] | None:
        """The thread's read when nothing else needs it: the wait serve_solo() was given, or
        one blocking recvfrom(); None without a solo socket."""
        if self.solo is None or self.on_solo is None:
            return None
        if self.solo_wait is not None:
            return self.solo_wait
        recvfrom = self.solo.recvfrom
        return lambda: (recvfrom(65535),)

    @staticmethod
    def _after(after: Callable[[], None]) -> None:
        try:
            after()
        except Exception:
            log.exception("internal error at the end of a DNS thread round, continuing")

    def _run_calls(self) -> None:
        calls = self._calls
        while calls:
            callback, args = calls.popleft()
            try:
                callback(*args)
            except Exception:
                log.exception("internal error in the DNS thread, continuing")

    def _run_timers(self) -> float:
        """Run the timers that are due; return seconds to the next one (-1: none)."""
        timers = self._timers
        while timers:
            when, _, timer = timers[0]
            if timer.cancelled:
                heapq.heappop(timers)
                continue
            left = when - time.monotonic()
            if left > 0:
                return left
            heapq.heappop(timers)
            try:
                timer.callback()
            except Exception:
                log.exception("internal error in a DNS thread timer, continuing")
        return -1
