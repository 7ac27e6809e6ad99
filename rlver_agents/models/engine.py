"""One copy of each local model per process, and a batcher that shares it between requests.

Every ``LocalChatCompletionClient`` of the same checkpoint talks to the same ``Engine``. Requests
are queued from any event loop; a single worker thread takes everything queued (after a short
gathering window), runs it as one left-padded batch through a decode loop with a KV cache, and
hands each result back to the loop that asked. Requests arriving while a batch runs form the
next batch.

Sampling is vectorised over the batch: temperature, top-p and repetition penalty are per-row
tensors, and each row draws Gumbel noise from its own seeded generator, so a request's output
depends only on its prompt, settings and seed, not on who it shares a batch with (up to float
rounding between batch shapes). Each decode step makes one device-to-host copy for the whole
batch.

Log-probabilities: for each sampled token we record the sampling policy's log-probability,
``log_softmax(logits / temperature)`` after any repetition penalty and before top-p (what a
trainer recomputes at the sampling temperature), and the raw model's (temperature 1).

A live policy: ``Engine.from_model`` wraps a model a trainer holds in memory, and
``register_engine`` makes it reachable as ``live:<name>`` by clients and model specs. The
trainer holds ``engine.pause()`` while it changes the weights; ``policy_version`` counts the
changes and is returned with every generation.

Rounds: ``in_rounds(engines, waiting_for)`` makes the engines' batches wait until every
running caller (a count the caller keeps) is queued at one of them, so dialogues that drift
apart still decode each turn as one batch.

Prefix reuse across turns: a request may name a dialogue (``prefix_key``; the local client
passes its own). When one of its rows ends, the engine keeps that dialogue's token ids (prompt
and sampled completion) and their KV cache, and the dialogue's next request prefills only what
follows the longest common prefix of its prompt with those ids. Rows of one batch reuse
different lengths: each row's cached keys and values are left-padded to the longest, masked
out on the padding, and the new tokens get explicit positions, so a row computes what a full
prefill computes (up to float rounding between shapes, as batching already does). A cache is
reused only under the policy version that wrote it, and the store is bounded by its total
tokens (least recently used dialogues leave first).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer
from transformers.utils import logging as hf_logging

from rlver_agents.deadlines import QueueWait
from rlver_agents.models.records import FinishReason, SamplingParams

DEFAULT_BATCH_WINDOW_S = 0.005
DEFAULT_ROUND_WAIT_S = 60.0
"""How long a batch in rounds (:func:`in_rounds`) waits for stragglers at most."""
ROUND_POLL_S = 0.02
"""How often a batch in rounds re-reads how many requests it waits for."""
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_PREFIX_STORE_TOKENS = 32_768
"""Tokens of KV cache kept for prefix reuse per engine (SmolLM2-135M: 46 KB a token in
float32, so 1.5 GB at most)."""
DEFAULT_PREFILL_CHUNK_TOKENS = 4096
"""Prompt tokens per prefill forward pass, over all rows of a batch: a long batch's prefill
runs in chunks, so shutdown and abandoned rows are seen between them, not minutes later."""
MIN_PREFILL_CHUNK = 128
"""Prompt positions per chunk at least, however many rows a batch has."""
PREFIX_KEY: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar(
    "rlver_prefix_key", default=None
)
"""The dialogue a ``generate`` call belongs to when it names none: set by the local client
around its call, so ``generate`` keeps its two-argument shape for other callers and doubles."""
LIVE_PREFIX = "live:"
"""Model names starting with this refer to an engine registered with ``register_engine``."""


class GenerationOutput(BaseModel):
    """What the engine returns for one request."""

    completion_ids: list[int]
    logprobs: list[float]
    """The sampling policy's: temperature-scaled, after the repetition penalty, before top-p."""
    raw_logprobs: list[float]
    """The raw model's: temperature 1, no penalty."""
    finish_reason: FinishReason
    policy_version: int = 0


@dataclass(frozen=True)
class EngineKey:
    """Identity of a loaded model: the same key always maps to the same weights in memory.

    A live engine's ``path`` is ``live:<name>``.
    """

    path: str
    dtype: str
    device: str


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[GenerationOutput]
    wait: QueueWait
    """Stops the caller's deadlines while the request is queued (``rlver_agents.deadlines``)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    prefix_key: Hashable | None = None


@dataclass
class _Prefix:
    """A dialogue's last finished sequence and its KV cache: (heads, tokens, dim) per layer."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    version: int


@dataclass
class EngineStats:
    """Where generation time went, for benchmarks: prefill vs decode, tokens, attention."""

    batches: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0
    """Prompt tokens run through the model (the reused ones are not)."""
    reused_tokens: int = 0
    """Prompt tokens whose KV cache came from the dialogue's previous turn."""
    decode_tokens: int = 0
    """Tokens fed back while decoding (one per row and step)."""
    prefill_attended: int = 0
    """Sum over prefilled tokens of the context each one attends to (itself included)."""
    decode_attended: int = 0


def _resolve_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown torch dtype {name!r} (expected e.g. 'float32', 'bfloat16')")
    return dtype


def _cache_keyword(model: Any) -> str:
    """The forward keyword that takes the KV cache: ``cache`` from transformers 5.25 on.

    The old ``past_key_values`` still works there but warns on every call, and goes in 5.40.
    A PEFT wrapper's forward takes ``**kwargs``, so the base model's signature decides.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _taken(request: _Request) -> None:
    """Tell the requesting loop that a batch took the request: its deadlines run again."""
    try:
        request.loop.call_soon_threadsafe(request.wait.end)
    except RuntimeError:  # the requesting loop has closed; nobody is waiting any more
        return


def _deliver(request: _Request, output: GenerationOutput | BaseException) -> None:
    """Resolve a request's future from the worker thread, unless it was cancelled meanwhile."""

    def resolve() -> None:
        if request.future.done():
            return
        if isinstance(output, BaseException):
            request.future.set_exception(output)
        else:
            request.future.set_result(output)

    try:
        request.loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # the requesting loop has closed; nobody is waiting any more
        return


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no dropout; gradient checkpointing steps aside so the KV
    cache is used), then every submodule's own mode back, so a trainer's model stays as it was.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


class _RowSampler:
    """Per-row sampling settings as tensors, for one batch; shrinks as rows finish.

    Settings are also kept as host lists, so which steps a batch needs (penalty, temperature,
    top-p, noise) is decided without reading the device.
    """

    def __init__(self, params: Sequence[SamplingParams], device: torch.device) -> None:
        self.device = device
        self.greedy = [p.is_greedy for p in params]
        self.temperature = [1.0 if p.is_greedy else p.temperature for p in params]
        self.top_p = [1.0 if p.is_greedy else p.top_p for p in params]
        self.penalty = [p.repetition_penalty for p in params]
        self.generators = [
            None if greedy else _generator(p.seed, device)
            for p, greedy in zip(params, self.greedy, strict=True)
        ]
        self._greedy = torch.tensor(self.greedy, device=device)
        self._temperature = torch.tensor([[t] for t in self.temperature], device=device)
        # rows without top-p get an unreachable threshold, so float rounding never cuts a tail
        self._top_p = torch.tensor(
            [[t if t < 1.0 else float("inf")] for t in self.top_p], device=device
        )
        self._penalty = torch.tensor([[p] for p in self.penalty], device=device)
        self._seen: torch.Tensor | None = None

    def select(self, keep: list[int], rows: torch.Tensor) -> None:
        """Keep only the rows at positions ``keep`` (``rows``: the same, on the device)."""
        self.greedy = [self.greedy[i] for i in keep]
        self.temperature = [self.temperature[i] for i in keep]
        self.top_p = [self.top_p[i] for i in keep]
        self.penalty = [self.penalty[i] for i in keep]
        self.generators = [self.generators[i] for i in keep]
        self._greedy = self._greedy[rows]
        self._temperature = self._temperature[rows]
        self._top_p = self._top_p[rows]
        self._penalty = self._penalty[rows]
        if self._seen is not None:
            self._seen = self._seen[rows]

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[list[float]]]:
        """Sample one token per row from ``logits`` (rows × vocab, float32).

        Returns the chosen ids on the device (the next step's input) and, in one host copy,
        ``[ids, policy logprobs, raw logprobs]`` as lists.
        """
        scaled = logits
        if any(p != 1.0 for p in self.penalty):
            if self._seen is None:
                self._seen = torch.zeros_like(logits, dtype=torch.bool)
            penalised = torch.where(logits > 0, logits / self._penalty, logits * self._penalty)
            scaled = torch.where(self._seen, penalised, logits)
        if any(t != 1.0 for t in self.temperature):
            scaled = scaled / self._temperature
        chosen = scaled.argmax(dim=-1)
        if not all(self.greedy):
            candidates = scaled
            if any(t < 1.0 for t in self.top_p):
                ordered = torch.sort(scaled, dim=-1, descending=True).values
                probs = torch.softmax(ordered, dim=-1)
                mass_before = torch.cumsum(probs, dim=-1) - probs
                kept = (mass_before < self._top_p).sum(dim=-1, keepdim=True)  # at least 1
                smallest_kept = ordered.gather(1, kept - 1)
                candidates = scaled.masked_fill(scaled < smallest_kept, float("-inf"))
            vocab = logits.shape[-1]
            uniform = torch.stack(
                [
                    torch.zeros(vocab, device=self.device)
                    if generator is None
                    else torch.rand(vocab, generator=generator, device=self.device)
                    for generator in self.generators
                ]
            )
            gumbel = -torch.log(-torch.log(uniform))  # Gumbel-max: argmax(x + g) ~ softmax(x)
            chosen = torch.where(self._greedy, chosen, (candidates + gumbel).argmax(dim=-1))
        if self._seen is not None:
            self._seen.scatter_(1, chosen.unsqueeze(1), True)
        picked = chosen.unsqueeze(1)
        raw = logits.gather(1, picked) - torch.logsumexp(logits, dim=-1, keepdim=True)
        policy = raw
        if scaled is not logits:
            policy = scaled.gather(1, picked) - torch.logsumexp(scaled, dim=-1, keepdim=True)
        values = torch.stack([chosen.double(), policy.squeeze(1).double(), raw.squeeze(1).double()])
        return chosen, values.cpu().tolist()


@dataclass(frozen=True)
class _Round:
    """Engines batching in rounds together, and how many callers they wait for."""

    waiting_for: Callable[[], int]
    engines: tuple[Engine, ...]
    max_wait_s: float

    def queued(self) -> int:
        """Requests queued at any of the engines (a deque's length is read without its lock)."""
        return sum(len(engine._queue) for engine in self.engines)


@contextmanager
def in_rounds(
    engines: Sequence[Engine],
    waiting_for: Callable[[], int],
    *,
    max_wait_s: float = DEFAULT_ROUND_WAIT_S,
) -> Iterator[None]:
    """Batch ``engines`` in rounds while held: a batch starts once ``waiting_for()`` requests
    are queued across them (or its engine's ``max_batch_size``), or ``max_wait_s`` after its
    first request arrived.

    Dialogues that share engines drift apart: one waits for its appraisal or for the user's
    voice while another already asks for its next reply, and each batch holds a few rows. A
    caller that knows how many dialogues are running says so here; then a batch starts only
    when every one of them is waiting at one of the engines, so each turn of theirs decodes as
    one batch. Counting across the engines keeps dialogues in different phases (one at the
    policy, one at the user's voice) from waiting on each other. ``waiting_for`` is read from
    the workers' threads, so it must be cheap and thread-safe (reading a counter is);
    ``max_wait_s`` bounds the wait for a dialogue that is slow for another reason.
    """
    if max_wait_s <= 0:
        raise ValueError(f"in_rounds: max_wait_s must be positive, got {max_wait_s}")
    round_ = _Round(waiting_for, tuple(dict.fromkeys(engines)), max_wait_s)
    joined: list[Engine] = []
    try:
        for engine in round_.engines:
            engine._join_round(round_)
            joined.append(engine)
        yield
    finally:
        for engine in joined:
            engine._join_round(None)


class Engine:
    """A causal LM, its tokenizer and the batching worker that serves it.

    Build one with ``get_engine`` (a checkpoint on disk, shared per process) or
    ``Engine.from_model`` (a model already in memory, e.g. a trainer's policy).
    """

    def __init__(
        self,
        key: EngineKey,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_window_s: float = DEFAULT_BATCH_WINDOW_S,
        prefix_reuse: bool = True,
        prefix_store_tokens: int = DEFAULT_PREFIX_STORE_TOKENS,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
    ) -> None:
        self.key = key
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(key.device)
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.max_context: int = int(
            getattr(self.model.config, "max_position_embeddings", 0) or 2048
        )
        self.stop_ids: frozenset[int] = self._stop_ids()
        self._cache_keyword = _cache_keyword(model)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else min(self.stop_ids)
        self.batch_sizes: list[int] = []
        """Size of every batch run so far, in order (for tests and benchmarks)."""
        self.prefix_reuse = prefix_reuse
        """Reuse a dialogue's KV cache from its previous turn (see the module docstring)."""
        self.prefix_store_tokens = prefix_store_tokens
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.stats = EngineStats()
        self._stop_strings: dict[tuple[str, ...], frozenset[int]] = {}
        self._prefixes: OrderedDict[Hashable, _Prefix] = OrderedDict()
        self._prefix_tokens = 0
        # re-entrant: a client's finalizer may run (forget_prefix) in the worker, mid-update
        self._prefix_lock = threading.RLock()
        self._policy_version = 0
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._paused = 0
        self._busy = False
        self._worker: threading.Thread | None = None
        self._closed = False
        self._decoding = 0
        self._round: _Round | None = None

    @classmethod
    def load(cls, key: EngineKey) -> Engine:
        """Load a checkpoint directory onto ``key.device`` in ``key.dtype``, for inference.

        Without a progress bar: a run's transcript is the user's screen, and a bar per load
        (one per role) buries it.
        """
        tokenizer = AutoTokenizer.from_pretrained(key.path)
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(key.path, dtype=_resolve_dtype(key.dtype))
        finally:
            hf_logging.enable_progress_bar()
        model.to(key.device)
        model.eval()
        return cls(key, model, tokenizer)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "policy",
        device: str | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_window_s: float = DEFAULT_BATCH_WINDOW_S,
        prefix_reuse: bool = True,
    ) -> Engine:
        """Serve a model held in memory (any mode, PEFT-wrapped or not) as ``live:<name>``.

        The model is shared, not copied: weight updates are seen by the next batch. Each batch
        runs in eval mode and then restores every module's mode, so a trainer that uses the
        model while generations may be running (forward, backward, optimizer) holds
        ``pause()`` for that time.
        """
        if not name or ":" in name:
            raise ValueError(f"Engine.from_model: name must be non-empty without ':', got {name!r}")
        parameter = next(iter(model.parameters()), None)
        if device is None:
            device = str(parameter.device) if parameter is not None else "cpu"
        dtype = str(parameter.dtype).removeprefix("torch.") if parameter is not None else "float32"
        key = EngineKey(f"{LIVE_PREFIX}{name}", dtype, device)
        return cls(
            key,
            model,
            tokenizer,
            max_batch_size=max_batch_size,
            batch_window_s=batch_window_s,
            prefix_reuse=prefix_reuse,
        )

    @property
    def policy_version(self) -> int:
        """How many weight updates ``pause(bump_version=True)`` has seen."""
        return self._policy_version

    def stop_string_ids(self, stop: tuple[str, ...]) -> frozenset[int]:
        """The vocabulary ids whose text holds one of ``stop``; worked out once per tuple."""
        if not stop:
            return frozenset()
        ids = self._stop_strings.get(stop)
        if ids is None:
            texts = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            decode = self.tokenizer.convert_tokens_to_string
            ids = frozenset(
                i
                for i, token in enumerate(texts)
                if token and any(s in decode([token]) for s in stop)
            )
            if not ids:
                raise ValueError(f"generate: no token of {self.key.path} holds any of {stop!r}")
            self._stop_strings[stop] = ids
        return ids

    def _stop_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        generation_config = getattr(self.model, "generation_config", None)
        model_eos = getattr(generation_config, "eos_token_id", None)
        for source in (self.tokenizer.eos_token_id, model_eos):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        if not ids:
            raise ValueError(f"The tokenizer of {self.key.path} defines no end-of-sequence token")
        return frozenset(ids)

    @contextmanager
    def pause(self, *, bump_version: bool = True) -> Iterator[None]:
        """Hold generation off (e.g. while an optimizer changes the weights).

        Entering waits for the batch in flight to finish; while held no batch starts (requests
        queue up and run after release). Leaving increments ``policy_version`` when
        ``bump_version``. A blocking context manager: use it from a trainer thread, not from
        inside the event loop that awaits generations.
        """
        with self._cond:
            self._paused += 1
            while self._busy:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._paused -= 1
                if bump_version:
                    self._policy_version += 1
                    self.clear_prefixes()  # written by the old weights: never reused again
                self._cond.notify_all()

    def _join_round(self, round_: _Round | None) -> None:
        with self._cond:
            if round_ is not None and self._round is not None:
                raise RuntimeError(f"The engine for {self.key.path} is already batching in rounds")
            self._round = round_
            self._cond.notify_all()

    def _wait_for_round(self) -> None:
        """In rounds, hold the next batch until every running caller is queued here or at a
        partner engine (or the round's wait runs out); called with ``_cond`` held."""
        round_ = self._round
        if round_ is None:
            return
        deadline = time.monotonic() + round_.max_wait_s
        while not self._closed and self._round is round_:
            remaining = deadline - time.monotonic()
            if (
                len(self._queue) >= self.max_batch_size
                or round_.queued() >= round_.waiting_for()
                or remaining <= 0
            ):
                return
            self._cond.wait(min(remaining, ROUND_POLL_S))

    @contextmanager
    def _claim(self) -> Iterator[None]:
        """Exclusive use of the model (one batch or one scoring pass at a time)."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (a cancelled one leaves at once)."""
        with self._cond:
            return len(self._queue)

    @property
    def decoding(self) -> int:
        """Rows of the batch in flight still being computed (a cancelled row leaves at the
        next forward pass)."""
        return self._decoding

    def forget_prefix(self, key: Hashable) -> None:
        """Drop a dialogue's stored KV cache (its client closed or went away)."""
        with self._prefix_lock:
            entry = self._prefixes.pop(key, None)
            if entry is not None:
                self._prefix_tokens -= len(entry.ids)

    def clear_prefixes(self) -> None:
        """Drop every stored KV cache."""
        with self._prefix_lock:
            self._prefixes.clear()
            self._prefix_tokens = 0

    @property
    def prefix_store_size(self) -> tuple[int, int]:
        """(dialogues, tokens) whose KV cache is stored for reuse."""
        with self._prefix_lock:
            return len(self._prefixes), self._prefix_tokens

    def _take_prefix(self, request: _Request, version: int) -> tuple[int, _Prefix | None]:
        """How many leading prompt tokens a request can reuse, and from which entry.

        The entry leaves the store (the row's end stores its extension); at least one prompt
        token is always prefilled, for the logits of the first sampled token.
        """
        if not self.prefix_reuse or request.prefix_key is None:
            return 0, None
        with self._prefix_lock:
            entry = self._prefixes.pop(request.prefix_key, None)
            if entry is None:
                return 0, None
            self._prefix_tokens -= len(entry.ids)
        if entry.version != version:
            return 0, None
        reused = min(_common_prefix(entry.ids, request.prompt_ids), len(request.prompt_ids) - 1)
        return (reused, entry) if reused > 0 else (0, None)

    def _store_prefix(
        self,
        request: _Request,
        completion: list[int],
        cache: DynamicCache,
        attention: torch.Tensor,
        row: int,
        version: int,
    ) -> None:
        """Keep a finished row's ids and KV cache (all but its last sampled token, never fed)."""
        if not self.prefix_reuse or request.prefix_key is None:
            return
        ids = request.prompt_ids + completion[:-1]
        if len(ids) > self.prefix_store_tokens:
            return
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            return  # sliding windows and other layouts: not reusable this way
        where = attention[row].nonzero().squeeze(1)
        if where.numel() != len(ids):
            return
        keys = [layer.keys[row].index_select(1, where) for layer in cache.layers]
        values = [layer.values[row].index_select(1, where) for layer in cache.layers]
        with self._prefix_lock:
            if self._closed:
                return
            old = self._prefixes.pop(request.prefix_key, None)
            if old is not None:
                self._prefix_tokens -= len(old.ids)
            self._prefixes[request.prefix_key] = _Prefix(ids, keys, values, version)
            self._prefix_tokens += len(ids)
            while self._prefix_tokens > self.prefix_store_tokens:
                _, evicted = self._prefixes.popitem(last=False)
                self._prefix_tokens -= len(evicted.ids)

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        prefix_key: Hashable | None = None,
    ) -> GenerationOutput:
        """Queue one request and wait for it; cancelling the await drops it from the queue
        or, once it runs, from its batch.

        ``prefix_key`` names the dialogue the request continues, for prefix reuse (default:
        the ``PREFIX_KEY`` context variable); requests of one dialogue must not overlap. The
        caller's deadlines (:class:`~rlver_agents.deadlines.Deadline`) stand still while the
        request waits in the queue.
        """
        if not prompt_ids:
            raise ValueError("generate: the prompt is empty")
        if len(prompt_ids) >= self.max_context:
            raise ValueError(
                f"generate: the prompt has {len(prompt_ids)} tokens, the model's context is "
                f"{self.max_context}"
            )
        self.stop_string_ids(params.stop)  # an unknown stop string fails here, not in the worker
        loop = asyncio.get_running_loop()
        if prefix_key is None:
            prefix_key = PREFIX_KEY.get()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"The engine for {self.key.path} is shut down")
            request = _Request(
                list(prompt_ids),
                params,
                loop,
                loop.create_future(),
                QueueWait(),
                prefix_key=prefix_key,
            )
            self._queue.append(request)
            self._ensure_worker()
            self._cond.notify_all()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled.set()
            with self._cond:
                if request in self._queue:
                    self._queue.remove(request)
            raise
        finally:
            request.wait.end()

    def shutdown(self, wait_s: float | None = None) -> None:
        """Stop the worker; queued requests and the rows still decoding fail.

        ``wait_s`` waits that long for the worker to leave its current forward pass.
        """
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self.clear_prefixes()
        for request in pending:
            _deliver(request, self._shut_down_error())
        worker = self._worker
        if wait_s is not None and worker is not None and worker is not threading.current_thread():
            worker.join(wait_s)

    def _shut_down_error(self) -> RuntimeError:
        return RuntimeError(f"The engine for {self.key.path} was shut down")

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._serve, name=f"rlver-engine-{Path(self.key.path).name}", daemon=True
            )
            self._worker.start()

    def _next_batch(self) -> tuple[list[_Request], int] | None:
        """Wait for requests and no pause, then claim the model; None once shut down."""
        with self._cond:
            while not self._closed and (not self._queue or self._paused):
                self._cond.wait()
            if self._closed:
                return None
        time.sleep(self.batch_window_s)  # let requests sent together land in one batch
        with self._cond:
            self._wait_for_round()
            while not self._closed and (self._paused or self._busy):
                self._cond.wait()
            if self._closed:
                return None
            batch: list[_Request] = []
            while self._queue and len(batch) < self.max_batch_size:
                request = self._queue.popleft()
                if not request.cancelled.is_set():
                    batch.append(request)
                    _taken(request)
            if batch:
                self._busy = True
            return batch, self._policy_version

    def _serve(self) -> None:
        while (taken := self._next_batch()) is not None:
            batch, version = taken
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                self._run_batch(batch, version)
            except Exception as error:  # one failure fails its batch, never the worker
                for request in batch:
                    _deliver(request, error)
            finally:
                self._decoding = 0
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    @torch.inference_mode()
    def _run_batch(self, batch: list[_Request], version: int) -> None:
        """Left-pad the prompts and decode every row with its own settings until all stop.

        Each row is delivered the moment it ends and leaves the batch (and the KV cache), as
        does a row whose request was cancelled. The prompt is prefilled in chunks
        (``prefill_chunk_tokens``); between chunks and decode steps the worker looks for
        shutdown and, in prefill, for a batch whose every request was cancelled. The rows that
        end the batch are delivered after the model's modes are restored, so a caller whose
        last generation has returned gets the model back as it was.
        """
        device = self.device
        stats = self.stats
        started = time.perf_counter()
        taken = [self._take_prefix(request, version) for request in batch]
        reused = [n for n, _ in taken]
        cached_width = max(reused)
        width = max(len(r.prompt_ids) - n for r, n in zip(batch, reused, strict=True))
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        # the row's reused tokens (right-aligned in the first cached_width), then its new ones
        attention = torch.zeros((len(batch), cached_width + width), dtype=torch.long)
        for row, (request, n_reused) in enumerate(zip(batch, reused, strict=True)):
            new = request.prompt_ids[n_reused:]
            input_ids[row, width - len(new) :] = torch.tensor(new, dtype=torch.long)
            attention[row, cached_width - n_reused : cached_width] = 1
            attention[row, cached_width + width - len(new) :] = 1
            stats.prefill_tokens += len(new)
            stats.reused_tokens += n_reused
            total = len(request.prompt_ids)
            stats.prefill_attended += (total * (total + 1) - n_reused * (n_reused + 1)) // 2
        input_ids, attention = input_ids.to(device), attention.to(device)
        # a reused row's new tokens continue its positions; padding gets any position
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, cached_width:]
        lengths = [len(r.prompt_ids) for r in batch]  # each active row's context, for stats
        sampler = _RowSampler([r.params for r in batch], device)
        budgets = [
            min(r.params.max_new_tokens, self.max_context - len(r.prompt_ids)) for r in batch
        ]
        stops = [self.stop_ids | self.stop_string_ids(r.params.stop) for r in batch]
        tokens: list[list[int]] = [[] for _ in batch]
        logprobs: list[list[float]] = [[] for _ in batch]
        raw_logprobs: list[list[float]] = [[] for _ in batch]
        finished: list[tuple[_Request, GenerationOutput]] = []

        with _eval_mode(self.model):
            cache = DynamicCache(config=self.model.config)
            if cached_width:
                self._fill_cache(cache, taken, cached_width)
            self._decoding = len(batch)
            logits = self._prefill(batch, input_ids, attention, positions, cache, cached_width)
            if logits is None:
                if self._closed:
                    for request in batch:
                        _deliver(request, self._shut_down_error())
                return
            next_positions = positions[:, -1:] + 1
            stats.batches += 1
            prefilled = time.perf_counter()
            stats.prefill_s += prefilled - started
            active = list(range(len(batch)))  # batch index of each live row, in row order
            while active:
                finished.clear()
                if self._closed:
                    for index in active:
                        _deliver(batch[index], self._shut_down_error())
                    break
                chosen, (ids, policy, raw) = sampler.step(logits)
                keep: list[int] = []
                for row, index in enumerate(active):
                    request = batch[index]
                    token = int(ids[row])
                    tokens[index].append(token)
                    logprobs[index].append(policy[row])
                    raw_logprobs[index].append(raw[row])
                    if request.cancelled.is_set():
                        continue
                    if token in stops[index] or len(tokens[index]) >= budgets[index]:
                        reason: FinishReason = "stop" if token in stops[index] else "length"
                        self._store_prefix(request, tokens[index], cache, attention, row, version)
                        output = GenerationOutput(
                            completion_ids=tokens[index],
                            logprobs=logprobs[index],
                            raw_logprobs=raw_logprobs[index],
                            finish_reason=reason,
                            policy_version=version,
                        )
                        finished.append((request, output))
                        continue
                    keep.append(row)
                if not keep:
                    break
                for request, output in finished:
                    _deliver(request, output)
                if len(keep) < len(active):
                    rows = torch.tensor(keep, dtype=torch.long, device=device)
                    cache.batch_select_indices(rows)
                    attention = attention[rows]
                    next_positions = next_positions[rows]
                    chosen = chosen[rows]
                    sampler.select(keep, rows)
                    active = [active[row] for row in keep]
                    self._decoding = len(active)
                for index in active:
                    lengths[index] += 1
                    stats.decode_attended += lengths[index]
                stats.decode_tokens += len(active)
                attention = torch.cat(
                    [attention, torch.ones((len(active), 1), dtype=torch.long, device=device)],
                    dim=1,
                )
                logits = self._forward(chosen.unsqueeze(1), attention, next_positions, cache)
                next_positions = next_positions + 1
        stats.decode_s += time.perf_counter() - prefilled
        for request, output in finished:
            _deliver(request, output)

    def _prefill(
        self,
        batch: list[_Request],
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        cached_width: int,
    ) -> torch.Tensor | None:
        """The prompts' forward passes, a chunk of positions at a time; the last position's
        logits, or None when the engine shut down or every request was cancelled meanwhile."""
        rows, width = input_ids.shape
        step = max(MIN_PREFILL_CHUNK, self.prefill_chunk_tokens // rows)
        logits: torch.Tensor | None = None
        for start in range(0, width, step):
            if self._closed or all(request.cancelled.is_set() for request in batch):
                return None
            end = min(width, start + step)
            logits = self._forward(
                input_ids[:, start:end],
                attention[:, : cached_width + end],
                positions[:, start:end],
                cache,
            )
        return logits

    def _fill_cache(
        self, cache: DynamicCache, taken: list[tuple[int, _Prefix | None]], width: int
    ) -> None:
        """Each row's reused keys and values, right-aligned in ``width`` positions, zeros left."""
        sample = next(entry for _, entry in taken if entry is not None)
        for layer, (key, value) in enumerate(zip(sample.keys, sample.values, strict=True)):
            heads, _, dim = key.shape
            keys = key.new_zeros((len(taken), heads, width, dim))
            values = value.new_zeros((len(taken), heads, width, dim))
            for row, (n, entry) in enumerate(taken):
                if entry is not None:
                    keys[row, :, width - n :] = entry.keys[layer][:, :n]
                    values[row, :, width - n :] = entry.values[layer][:, :n]
            cache.update(keys, values, layer)

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **{self._cache_keyword: cache},
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def score(
        self, prompt_ids: list[int], completion_ids: list[int], *, temperature: float = 1.0
    ) -> list[float]:
        """Logprobs of ``completion_ids`` after ``prompt_ids`` at ``temperature``, in one pass.

        Waits for the batch in flight; callable while the caller itself holds ``pause()``.
        """
        if temperature <= 0:
            raise ValueError(f"score: temperature must be positive, got {temperature}")
        ids = torch.tensor([prompt_ids + completion_ids], dtype=torch.long, device=self.device)
        with self._claim(), torch.inference_mode(), _eval_mode(self.model):
            logits = self.model(input_ids=ids).logits[0].float()
        start = len(prompt_ids) - 1
        picked = torch.log_softmax(logits[start : start + len(completion_ids)] / temperature, -1)
        targets = torch.tensor(completion_ids, dtype=torch.long, device=self.device)
        return picked.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()


_ENGINES: dict[EngineKey, Engine] = {}
_LIVE: dict[str, Engine] = {}
_REGISTRY_LOCK = threading.Lock()
EXIT_WAIT_S = 300.0
"""How long exit waits for a worker to leave its forward pass (it checks for shutdown between
passes): one prefill of a full batch can take a minute on a loaded 2-core machine."""


@atexit.register
def _shut_down_engines_at_exit() -> None:
    """Stop every worker before the interpreter tears torch down.

    The workers are daemon threads, and one still inside a forward pass when the process
    exits makes the C++ runtime abort the process ("terminate called without an active
    exception"), turning a finished run into exit code 134.
    """
    with _REGISTRY_LOCK:
        engines = [*_ENGINES.values(), *_LIVE.values()]
    for engine in engines:
        engine.shutdown(wait_s=EXIT_WAIT_S)


def _key(model_path: str | Path, dtype: str, device: str) -> EngineKey:
    return EngineKey(str(Path(model_path).expanduser().resolve()), dtype, device)


def is_live(model: str | Path) -> bool:
    """Whether ``model`` names a registered in-memory engine (``live:<name>``)."""
    return str(model).startswith(LIVE_PREFIX)


def register_engine(engine: Engine) -> Engine:
    """Make a live engine reachable as ``live:<name>``; replaces one of the same name."""
    if not is_live(engine.key.path):
        raise ValueError(
            f"register_engine: {engine.key.path!r} is not a live engine (build it with "
            "Engine.from_model)"
        )
    with _REGISTRY_LOCK:
        _LIVE[engine.key.path] = engine
    return engine


def unregister_engine(engine: Engine) -> None:
    """Forget a registered live engine (it keeps serving clients that already hold it)."""
    with _REGISTRY_LOCK:
        if _LIVE.get(engine.key.path) is engine:
            del _LIVE[engine.key.path]


def loaded_engine(
    model_path: str | Path, *, dtype: str = "float32", device: str = "cpu"
) -> Engine | None:
    """The engine for a checkpoint (or live name) if already in memory; never loads."""
    with _REGISTRY_LOCK:
        if is_live(model_path):
            return _LIVE.get(str(model_path))
        return _ENGINES.get(_key(model_path, dtype, device))


def get_engine(model_path: str | Path, *, dtype: str = "float32", device: str = "cpu") -> Engine:
    """The process-wide engine for a checkpoint, loading it on first use.

    ``live:<name>`` returns the engine registered under that name (``dtype`` and ``device``
    are the live model's own).
    """
    if is_live(model_path):
        with _REGISTRY_LOCK:
            engine = _LIVE.get(str(model_path))
            known = sorted(_LIVE)
        if engine is None:
            raise LookupError(
                f"No live engine {str(model_path)!r} is registered (registered: {known}); "
                "build one with Engine.from_model(model, tokenizer, name=...) and "
                "register_engine(engine)"
            )
        return engine
    key = _key(model_path, dtype, device)
    if not (Path(key.path) / "config.json").is_file():
        raise FileNotFoundError(f"No Hugging Face checkpoint (config.json) in {key.path}")
    with _REGISTRY_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine.load(key)
            _ENGINES[key] = engine
        return engine
