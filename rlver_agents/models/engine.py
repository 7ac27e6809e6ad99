"""One copy of each local model per process, and a batcher that shares it between requests.

Every ``LocalChatCompletionClient`` of the same checkpoint talks to the same ``Engine``. Requests
are queued from any event loop; a single worker thread takes everything queued (after a short
gathering window), runs it as one left-padded batch through a per-row decode loop with a KV
cache, and hands each result back to the loop that asked. Requests arriving while a batch runs
form the next batch. The decode loop samples each row with its own settings and its own
random generator, so a request's output depends only on its prompt, settings and seed, not on
who it shares a batch with (up to float rounding between batch shapes).

Log-probabilities: for each sampled token we record the log-softmax of the raw logits
(temperature 1, before top-p), the quantity a trainer's forward pass recomputes. Sampling
itself uses the temperature-scaled, top-p-filtered distribution.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase

from rlver_agents.models.records import FinishReason, SamplingParams

DEFAULT_BATCH_WINDOW_S = 0.005
DEFAULT_MAX_BATCH_SIZE = 16


class GenerationOutput(BaseModel):
    """What the engine returns for one request."""

    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason


@dataclass(frozen=True)
class EngineKey:
    """Identity of a loaded model: the same key always maps to the same weights in memory."""

    path: str
    dtype: str
    device: str


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[GenerationOutput]
    cancelled: threading.Event = field(default_factory=threading.Event)


def _resolve_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown torch dtype {name!r} (expected e.g. 'float32', 'bfloat16')")
    return dtype


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


class Engine:
    """A loaded causal LM, its tokenizer and the batching worker that serves it."""

    def __init__(
        self,
        key: EngineKey,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_window_s: float = DEFAULT_BATCH_WINDOW_S,
    ) -> None:
        self.key = key
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(key.path)
        self.model = AutoModelForCausalLM.from_pretrained(key.path, dtype=_resolve_dtype(key.dtype))
        self.model.to(key.device)
        self.model.eval()
        self.max_context: int = int(
            getattr(self.model.config, "max_position_embeddings", 0) or 2048
        )
        self.stop_ids: frozenset[int] = self._stop_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else min(self.stop_ids)
        self.batch_sizes: list[int] = []
        """Size of every batch run so far, in order (for tests and benchmarks)."""
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False

    def _stop_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        if not ids:
            raise ValueError(f"The tokenizer in {self.key.path} defines no end-of-sequence token")
        return frozenset(ids)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationOutput:
        """Queue one request and wait for it; cancelling the await drops it from its batch."""
        if not prompt_ids:
            raise ValueError("generate: the prompt is empty")
        if len(prompt_ids) >= self.max_context:
            raise ValueError(
                f"generate: the prompt has {len(prompt_ids)} tokens, the model's context is "
                f"{self.max_context}"
            )
        loop = asyncio.get_running_loop()
        request = _Request(list(prompt_ids), params, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise RuntimeError(f"The engine for {self.key.path} is shut down")
            self._queue.append(request)
            self._ensure_worker()
            self._cond.notify()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled.set()
            raise

    def shutdown(self) -> None:
        """Stop the worker after the batch in flight; queued requests fail."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for request in pending:
            _deliver(request, RuntimeError(f"The engine for {self.key.path} was shut down"))

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._serve, name=f"rlver-engine-{Path(self.key.path).name}", daemon=True
            )
            self._worker.start()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(self.batch_window_s)  # let requests sent together land in one batch
            with self._cond:
                batch: list[_Request] = []
                while self._queue and len(batch) < self.max_batch_size:
                    request = self._queue.popleft()
                    if not request.cancelled.is_set():
                        batch.append(request)
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                self._run_batch(batch)
            except Exception as error:  # one failure fails its batch, never the worker
                for request in batch:
                    _deliver(request, error)

    @torch.inference_mode()
    def _run_batch(self, batch: list[_Request]) -> None:
        """Left-pad the prompts and decode every row with its own settings until all stop.

        Each row is delivered the moment it ends and leaves the batch (and the KV cache), as
        does a row whose request was cancelled.
        """
        device = self.key.device
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            n = len(request.prompt_ids)
            input_ids[row, width - n :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            attention[row, width - n :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generators = [self._generator(r.params.seed) for r in batch]
        budgets = [
            min(r.params.max_new_tokens, self.max_context - len(r.prompt_ids)) for r in batch
        ]
        tokens: list[list[int]] = [[] for _ in batch]
        logprobs: list[list[float]] = [[] for _ in batch]

        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, attention, positions, cache)
        next_positions = positions[:, -1:] + 1
        active = list(range(len(batch)))  # batch index of each live row, in row order
        while active:
            raw_logprobs = torch.log_softmax(logits, dim=-1)
            chosen: list[int] = []
            keep: list[int] = []
            for row, index in enumerate(active):
                request = batch[index]
                token = self._sample(logits[row], request.params, generators[index], tokens[index])
                tokens[index].append(token)
                logprobs[index].append(float(raw_logprobs[row, token]))
                if request.cancelled.is_set():
                    continue
                if token in self.stop_ids or len(tokens[index]) >= budgets[index]:
                    reason: FinishReason = "stop" if token in self.stop_ids else "length"
                    output = GenerationOutput(
                        completion_ids=tokens[index], logprobs=logprobs[index], finish_reason=reason
                    )
                    _deliver(request, output)
                    continue
                keep.append(row)
                chosen.append(token)
            if not keep:
                break
            if len(keep) < len(active):
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(rows)
                attention = attention[rows]
                next_positions = next_positions[rows]
                active = [active[row] for row in keep]
            attention = torch.cat(
                [attention, torch.ones((len(active), 1), dtype=torch.long, device=device)], dim=1
            )
            step_ids = torch.tensor(chosen, dtype=torch.long, device=device).unsqueeze(1)
            logits = self._forward(step_ids, attention, next_positions, cache)
            next_positions = next_positions + 1

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
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.key.device)
        generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        return generator

    @staticmethod
    def _sample(
        logits: torch.Tensor,
        params: SamplingParams,
        generator: torch.Generator,
        produced: list[int],
    ) -> int:
        if params.repetition_penalty != 1.0 and produced:
            seen = torch.tensor(sorted(set(produced)), dtype=torch.long, device=logits.device)
            picked = logits[seen]
            penalised = torch.where(
                picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
            )
            logits = logits.clone()
            logits[seen] = penalised
        if params.is_greedy:
            return int(torch.argmax(logits))
        scaled = logits / params.temperature
        if params.top_p < 1.0:
            ordered, order = torch.sort(scaled, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            mass_before = torch.cumsum(probs, dim=-1) - probs
            ordered = ordered.masked_fill(mass_before >= params.top_p, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, ordered)
        probs = torch.softmax(scaled, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))

    @torch.inference_mode()
    def score(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Raw-model logprobs of ``completion_ids`` after ``prompt_ids``, in one forward pass."""
        ids = torch.tensor([prompt_ids + completion_ids], dtype=torch.long, device=self.key.device)
        logits = self.model(input_ids=ids).logits[0].float()
        start = len(prompt_ids) - 1
        picked = torch.log_softmax(logits[start : start + len(completion_ids)], dim=-1)
        targets = torch.tensor(completion_ids, dtype=torch.long, device=self.key.device)
        return picked.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()


_ENGINES: dict[EngineKey, Engine] = {}
_REGISTRY_LOCK = threading.Lock()


def _key(model_path: str | Path, dtype: str, device: str) -> EngineKey:
    return EngineKey(str(Path(model_path).expanduser().resolve()), dtype, device)


def loaded_engine(
    model_path: str | Path, *, dtype: str = "float32", device: str = "cpu"
) -> Engine | None:
    """The engine for a checkpoint if it is already in memory; never loads (safe on a loop)."""
    with _REGISTRY_LOCK:
        return _ENGINES.get(_key(model_path, dtype, device))


def get_engine(model_path: str | Path, *, dtype: str = "float32", device: str = "cpu") -> Engine:
    """The process-wide engine for a checkpoint, loading it on first use."""
    key = _key(model_path, dtype, device)
    if not (Path(key.path) / "config.json").is_file():
        raise FileNotFoundError(f"No Hugging Face checkpoint (config.json) in {key.path}")
    with _REGISTRY_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine(key)
            _ENGINES[key] = engine
        return engine
