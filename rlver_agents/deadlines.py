"""Deadlines that measure hangs, not queues.

A turn's deadline (``timeouts.turn_s``) is there to catch a side that stopped answering. A
request waiting in an in-process engine's queue behind every other dialogue of the run has not
stopped: on a loaded machine it waits as long as the load says, and a deadline that counted
that wait would fail every dialogue of a large campaign at once, and its retries again.

So a :class:`Deadline`'s clock stops while a request made inside it waits in a local engine's
queue (:class:`QueueWait`), and runs again when the engine takes the request into a batch.
Decoding counts; waiting for a turn does not. A server's queue is the server's own and cannot
be seen from here: calls to a server keep their whole deadline. Torch-free.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Self

_OPEN: ContextVar[tuple[Deadline, ...]] = ContextVar("rlver_deadlines", default=())
"""The deadlines the running code is inside, outermost first."""


class Deadline:
    """``async with Deadline(seconds):`` an ``asyncio.timeout`` whose clock stops while a
    request made inside it waits in a local engine's queue; ``None`` never expires.

    ``queued_s`` is how long the clock stood still, for logs and tests.
    """

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._timeout: asyncio.Timeout | None = None
        self._token: Token[tuple[Deadline, ...]] | None = None
        self._waiting = 0
        self._left = 0.0
        self._stopped_at = 0.0
        self._open = False
        self.queued_s = 0.0

    async def __aenter__(self) -> Self:
        self._timeout = asyncio.timeout(self._seconds)
        await self._timeout.__aenter__()
        self._open = True
        self._token = _OPEN.set((*_OPEN.get(), self))
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        assert self._timeout is not None and self._token is not None
        self._open = False
        _OPEN.reset(self._token)
        return await self._timeout.__aexit__(kind, error, trace)

    def expired(self) -> bool:
        """Whether this deadline ran out (so a ``TimeoutError`` is its own, not a client's)."""
        return self._timeout is not None and self._timeout.expired()

    def _running(self) -> bool:
        timeout = self._timeout
        return self._open and timeout is not None and not timeout.expired()

    def _stop(self, now: float) -> None:
        self._waiting += 1
        if self._waiting == 1 and self._running():
            assert self._timeout is not None
            when = self._timeout.when()
            self._left = float("inf") if when is None else when - now
            self._stopped_at = now
            self._timeout.reschedule(None)

    def _resume(self, now: float) -> None:
        self._waiting -= 1
        if self._waiting == 0 and self._running():
            assert self._timeout is not None
            self.queued_s += now - self._stopped_at
            self._timeout.reschedule(None if self._left == float("inf") else now + self._left)


class QueueWait:
    """One request's stay in a local engine's queue: made where the request is queued, it
    stops the clock of every deadline the caller is inside until :meth:`end`.

    Both run on the caller's event loop; ``end`` may be called more than once (the engine
    calls it when a batch takes the request, the caller when it stops waiting for any reason).
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadlines = _OPEN.get()
        self._ended = False
        now = self._loop.time()
        for deadline in self._deadlines:
            deadline._stop(now)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        now = self._loop.time()
        for deadline in self._deadlines:
            deadline._resume(now)
