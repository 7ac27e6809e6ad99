"""A scripted OpenAI-compatible chat server on 127.0.0.1, with injected faults.

It lets the collector and the CLI be exercised against a real HTTP server without a model:
the chaos test drives ``rlver collect`` through HTTP 500s, dropped connections, hung calls and
malformed bodies, and the concurrency benchmark measures the collector against a server of
known latency. A bare asyncio HTTP/1.1 server with keep-alive keeps the server's own cost per
request far below the client's. Stdlib only; torch-free.

The server is bounded: it stops after ``max_requests`` chat completions or ``deadline_s``
seconds, whichever comes first, so a test or benchmark that goes wrong cannot leave it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Reply = Callable[[dict[str, Any]], str]
"""The scripted model: the request's JSON body in, the reply text out."""

Fault = Literal["error_500", "drop", "hang", "malformed", "null_content"]
FAULTS: tuple[Fault, ...] = ("error_500", "drop", "hang", "malformed", "null_content")


class Faults(BaseModel):
    """The share of chat completions that fail, per kind of failure.

    ``error_500`` answers HTTP 500; ``drop`` closes the connection without an answer; ``hang``
    answers only after ``hang_s`` (longer than any sane client timeout); ``malformed`` answers
    HTTP 200 with a body that holds no choices; ``null_content`` answers a well-formed
    completion whose message has ``content: null``. ``/models`` is never faulted unless
    ``broken_status`` is set, which answers every request with that status.
    """

    model_config = ConfigDict(extra="forbid")

    error_500: float = Field(0.0, ge=0, le=1)
    drop: float = Field(0.0, ge=0, le=1)
    hang: float = Field(0.0, ge=0, le=1)
    malformed: float = Field(0.0, ge=0, le=1)
    null_content: float = Field(0.0, ge=0, le=1)
    hang_s: float = Field(30.0, gt=0)
    broken_status: int | None = Field(None, ge=400, le=599)
    seed: int = 0

    @model_validator(mode="after")
    def _at_most_one(self) -> Self:
        if self.total > 1:
            raise ValueError(f"fault rates add up to {self.total}, more than 1")
        return self

    @property
    def total(self) -> float:
        return sum(getattr(self, kind) for kind in FAULTS)

    def draw(self, rng: random.Random) -> Fault | None:
        """The fault for one request, or ``None`` to answer it properly."""
        roll = rng.random()
        for kind in FAULTS:
            rate: float = getattr(self, kind)
            if roll < rate:
                return kind
            roll -= rate
        return None


def completion_body(number: int, model: str, text: str | None) -> bytes:
    """A minimal but complete ``chat.completion`` response (``None``: ``content: null``)."""
    return json.dumps(
        {
            "id": f"cmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
        }
    ).encode()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakeServer:
    """Serve ``reply`` as model ``model`` on ``127.0.0.1:port``, in a thread or in the caller.

    ``start()``/``stop()`` (or ``with``) run it in a daemon thread; ``run()`` blocks, which is
    what a separate process calls. ``counts`` tallies the model listings (``models``), the chat
    completions answered properly (``ok``) and each fault injected (by its name).
    """

    def __init__(
        self,
        reply: Reply,
        *,
        model: str = "fake",
        port: int | None = None,
        delay_s: float = 0.0,
        faults: Faults | None = None,
        max_requests: int = 10_000,
        deadline_s: float = 120.0,
    ) -> None:
        self.reply = reply
        self.model = model
        self.port = port or free_port()
        self.delay_s = delay_s
        self.faults = faults or Faults()
        self.max_requests = max_requests
        self.deadline_s = deadline_s
        self.counts: Counter[str] = Counter()
        self._served = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Change the faults, even while serving; their seed restarts the draws."""
        self._faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def run(self) -> None:
        """Serve until the request budget or the deadline runs out, or ``stop()``."""
        asyncio.run(self._main())

    def start(self) -> Self:
        """Serve in a daemon thread; returns once the port accepts connections."""
        self._thread = threading.Thread(target=self.run, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError(f"fake server on port {self.port} did not start")
        return self

    def stop(self) -> None:
        """Stop the thread's server; requests still hanging are dropped."""
        if self._loop is not None and self._done is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended by itself
                self._loop.call_soon_threadsafe(self._done.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._ready.set()
        with contextlib.suppress(TimeoutError):  # the deadline is a normal way to stop
            await asyncio.wait_for(self._done.wait(), timeout=self.deadline_s)
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *headers = head.split("\r\n")
                length = next(
                    (
                        int(h.split(":", 1)[1])
                        for h in headers
                        if h.lower().startswith("content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length) if length else b""
                answer = await self._answer(request_line, body)
                if answer is None:  # a dropped connection
                    return
                status, data = answer
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            # Shutdown cancels the handlers still open; ending them quietly spares Python 3.11's
            # stream callback from logging each cancellation as an error.
            return
        finally:
            writer.close()

    async def _answer(self, request_line: str, body: bytes) -> tuple[str, bytes] | None:
        """Status line and body for one request; ``None`` to drop the connection."""
        if self.faults.broken_status is not None:
            return f"{self.faults.broken_status} Server Error", b'{"error": "broken"}'
        method, _, rest = request_line.partition(" ")
        path = rest.split(" ", 1)[0]
        if method == "GET" and path.rstrip("/").endswith("/models"):
            self.counts["models"] += 1
            listing = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            return "200 OK", json.dumps(listing).encode()
        if method == "GET" and path.startswith("/health"):
            return "200 OK", b"{}"
        if not (method == "POST" and path.endswith("/chat/completions")):
            return "404 Not Found", b'{"error": "not found"}'
        number = next(self._served)
        if number >= self.max_requests and self._done is not None:
            self._done.set()
        fault = self.faults.draw(self._rng)
        self.counts[fault or "ok"] += 1
        if fault == "drop":
            return None
        if fault == "error_500":
            return "500 Internal Server Error", b'{"error": {"message": "injected fault"}}'
        await asyncio.sleep(self.faults.hang_s if fault == "hang" else self.delay_s)
        if fault == "malformed":
            return "200 OK", json.dumps({"id": f"cmpl-{number}", "object": "error"}).encode()
        text = None if fault == "null_content" else self.reply(json.loads(body))
        return "200 OK", completion_body(number, self.model, text)


def prompt_text(request: dict[str, Any]) -> str:
    """Every message's text content of a chat request, joined, for scripts that look at it."""
    parts: list[str] = []
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "\n".join(parts)


def serve(reply: Reply, **options: Any) -> None:
    """Run a :class:`FakeServer` in the calling thread: a target for a separate process."""
    FakeServer(reply, **options).run()
