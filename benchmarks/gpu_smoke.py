"""GPU smoke check: the generation and training paths on one device and dtype, in one go.

Nothing here downloads anything: a tiny random Qwen2 and its tokenizer are built on the spot,
and a scripted OpenAI-compatible server on loopback plays the simulated user and its judge.
Three phases run one after the other, each timed with its peak memory; a failing phase is
reported and the next one still runs, so one short stay on a GPU machine shows every problem:

1. **engine**: the local batched engine (``rlver_agents.models.engine``) loads the checkpoint
   on the device in the dtype and samples a batch of 8 requests (temperatures 1.0 and 0.7,
   top-p on and off); the logprobs it recorded must match one plain forward pass over each
   prompt and completion within the dtype's tolerance (see :func:`logprob_tolerance`), and the
   same tokens scored at the wrong temperature must not.
2. **grpo**: ``rlver-train`` (``training.cli``) on a generated YAML file: two GRPO steps
   through TRL with local generation (no vLLM), a checkpoint per step, then a resumed third
   step from ``checkpoint-2``, and the final checkpoint loaded back onto the device to
   generate.
3. **ppo**: the same for PPO with its critic (the turn unit) and a frozen reference (a small
   KL coefficient), the logprob gap between the engine's rollout and the trainer's own forward
   pass within the dtype's tolerance, and a KL of 0 to the reference before the first update.

Precision follows the GPU configurations of ``training/configs``: GRPO trains bf16 weights
(``policy.dtype: bfloat16``, TRL's ``bf16: true``), PPO keeps float32 master weights under
accelerate's bf16 autocast. A probe reads the live trainers (TRL's arguments, accelerate's
device and mixed precision, where the policy, critic and live engine sit and in what dtype) and
checks them against what was asked.

On the CPU bf16 works too, and is the default there as well, so the test suite runs the same
bf16 paths (the engine and its tolerance, a bf16 GRPO policy) except autocast, which
``TrainConfig`` refuses with ``use_cpu``: the CPU PPO phase trains float32 without it.

    python benchmarks/gpu_smoke.py --device cuda                 # bf16
    python benchmarks/gpu_smoke.py --device cpu --json report.json

Exit status 0 when every phase passed, 1 otherwise. ``benchmarks/gpu_pack.py`` packs this
script with the wheels a GPU machine without network lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # after the offline switches
import yaml
from pydantic import BaseModel, Field

from rlver_agents.testing.tiny_model import CORPUS, build_tiny_checkpoint

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
FP32_TOLERANCE = 1e-4
"""The test suite's bound for the same check in float32 (rounding there is ~1e-7 relative)."""
BF16_ULPS = 4
"""How many bf16 spacings of the largest logit a recorded logprob may be off (see below)."""
PPO_LOGIT_BOUND = 7.5
"""|logit| for PPO's tolerance: the tiny model's largest logits lie in [4, 8), where bf16
numbers are 1/32 apart (7.2 at the start, as the engine phase reports; 6.5 to 6.8 measured
after three steps at these learning rates)."""
KL_AT_START = 1e-6
"""Before the first update the actor and the frozen reference hold the same weights; run in
the same precision they give the same logprobs. bf16 rounding alone (the reference outside the
actor's autocast) gave a mean of 4e-3 on this model."""


class SmokeFailure(AssertionError):
    """A check of the smoke run that did not hold."""


class Checks:
    """The checks a phase ran, listed by name in its facts; a failed one ends the phase."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.passed: list[str] = facts.setdefault("checks", [])

    def __call__(self, name: str, condition: bool, detail: str = "") -> None:
        if not condition:
            raise SmokeFailure(f"{name}: {detail}" if detail else name)
        self.passed.append(name)


class PhaseResult(BaseModel):
    """One phase of the report."""

    name: str
    ok: bool
    seconds: float
    peak_memory: str
    facts: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class SmokeReport(BaseModel):
    """The whole run: where it ran, with what, and each phase."""

    device: str
    dtype: str
    environment: dict[str, str]
    phases: list[PhaseResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(phase.ok for phase in self.phases)


# --- tolerance -------------------------------------------------------------------------------


def bf16_spacing(magnitude: float) -> float:
    """The gap between neighbouring bf16 numbers near ``magnitude`` (8 significant bits)."""
    return 2.0 ** (math.floor(math.log2(max(magnitude, 2.0**-126))) - 7)


def logprob_tolerance(dtype: str, max_abs_logit: float, temperature: float) -> float:
    """How far a recorded logprob may be from one plain forward pass over the same tokens.

    The engine decodes with a KV cache and left padding; the check runs one pass over the
    whole sequence, so the same logits are summed in a different order. In float32 the
    difference stays far below 1e-4. bf16 keeps 8 significant bits (about 2.4 decimal digits):
    the logits leave the model rounded to bf16, so a logit near |z| is known only to one
    spacing, 2^(floor(log2 |z|) - 7): 0.03125 for the tiny model's logits (below 8). Summed in
    another order a logit can land a spacing or two away; a logprob is the chosen logit minus
    a log-sum-exp, both divided by the temperature, so it can move by up to about four
    spacings over T. The logits are small here, which keeps that bound tight (0.125 / T); a
    sampling temperature below 1 widens it, and the check also asserts that the same tokens
    scored at the wrong temperature miss it, so a bound this wide still catches a real error.
    """
    if dtype == "float32":
        return FP32_TOLERANCE
    return BF16_ULPS * bf16_spacing(max_abs_logit) / temperature


# --- measuring -------------------------------------------------------------------------------


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> str:
    if device == "cuda":
        torch.cuda.synchronize()
        return f"{torch.cuda.max_memory_allocated() / 2**20:.1f} MiB (cuda max allocated)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return f"n/a on cpu; process peak RSS {rss:.0f} MiB"


def _release(device: str) -> None:
    """Drop the live engines a phase left registered, so the next phase's peak is its own."""
    import gc

    from rlver_agents.models.engine import loaded_engine, unregister_engine

    engine = loaded_engine("live:policy")
    if engine is not None:
        engine.shutdown(wait_s=30)
        unregister_engine(engine)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_phase(name: str, device: str, body: Callable[[dict[str, Any]], None]) -> PhaseResult:
    """Run one phase; ``body`` fills in facts and raises on a failed check."""
    facts: dict[str, Any] = {}
    error = None
    _reset_peak(device)
    started = time.perf_counter()
    try:
        body(facts)
    except Exception as exc:  # a phase reports its failure and the next one still runs
        error = "".join(traceback.format_exception_only(exc)).strip()
        traceback.print_exc()
    seconds = time.perf_counter() - started
    peak = _peak(device)
    _release(device)
    return PhaseResult(
        name=name, ok=error is None, seconds=seconds, peak_memory=peak, facts=facts, error=error
    )


def _placement(module: torch.nn.Module) -> str:
    """``dtype on device`` of a module's parameters (all of them, or says they differ)."""
    seen = {(str(p.dtype).removeprefix("torch."), str(p.device)) for p in module.parameters()}
    return " | ".join(f"{dtype} on {where}" for dtype, where in sorted(seen))


@contextmanager
def spy(owner: type, method: str, record: Callable[..., None]) -> Iterator[None]:
    """Call ``record(self, *args)`` after every call of ``owner.method``; a read-only probe."""
    original = getattr(owner, method)

    @functools.wraps(original)
    def observed(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        record(self, *args)
        return result

    setattr(owner, method, observed)
    try:
        yield
    finally:
        setattr(owner, method, original)


# --- phase 1: the engine ---------------------------------------------------------------------


def _prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """``count`` chat prompts of different lengths, as token ids."""
    lines = [CORPUS[i % len(CORPUS)] * (1 + i % 3) for i in range(count)]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": line}], add_generation_prompt=True, tokenize=False
        )
        for line in lines
    ]
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


def engine_phase(checkpoint: Path, device: str, dtype: str, facts: dict[str, Any]) -> None:
    """A batch from the engine on the device; its logprobs against one plain forward pass."""
    from rlver_agents.models.engine import Engine, EngineKey
    from rlver_agents.models.records import SamplingParams

    check = Checks(facts)
    engine = Engine.load(EngineKey(str(checkpoint), dtype, device))
    try:
        facts["model"] = _placement(engine.model)
        check("model on the device in the dtype", _is(facts["model"], device, dtype))
        prompts = _prompts(engine.tokenizer, 8)
        params = [
            SamplingParams(
                temperature=1.0 if i % 2 == 0 else 0.7,
                top_p=1.0 if i % 4 < 2 else 0.9,
                max_new_tokens=24,
                seed=i,
            )
            for i in range(len(prompts))
        ]

        async def sample() -> list[Any]:
            return await asyncio.gather(
                *(engine.generate(p, s) for p, s in zip(prompts, params, strict=True))
            )

        started = time.perf_counter()
        outputs = asyncio.run(sample())
        seconds = time.perf_counter() - started
        tokens = sum(len(o.completion_ids) for o in outputs)
        facts["batches"] = list(engine.batch_sizes)
        facts["tokens"] = tokens
        facts["tokens_per_s"] = round(tokens / seconds, 1)
        check("concurrent requests batched", max(engine.batch_sizes) > 1, str(facts["batches"]))

        gaps: list[float] = []
        wrong: list[float] = []
        largest = 0.0
        for prompt, output, setting in zip(prompts, outputs, params, strict=True):
            ids = torch.tensor([prompt + output.completion_ids], device=engine.device)
            with torch.inference_mode():
                logits = engine.model(input_ids=ids).logits[0].float()
            start = len(prompt) - 1
            rows = logits[start : start + len(output.completion_ids)]
            chosen = torch.tensor(output.completion_ids, device=engine.device).unsqueeze(1)
            recorded = torch.tensor(output.logprobs, device=engine.device)
            forward = torch.log_softmax(rows / setting.temperature, -1).gather(1, chosen)[:, 0]
            gaps.append(float((forward - recorded).abs().max()))
            largest = max(largest, float(rows.abs().max()))
            if setting.temperature != 1.0:
                at_one = torch.log_softmax(rows, -1).gather(1, chosen)[:, 0]
                wrong.append(float((at_one - recorded).abs().max()))
        coldest = min(p.temperature for p in params)
        tolerance = logprob_tolerance(dtype, largest, coldest)
        facts["max_abs_logit"] = round(largest, 3)
        facts["logprob_gap_max"] = max(gaps)
        facts["tolerance"] = tolerance
        facts["wrong_temperature_gap_min"] = min(wrong)
        check(
            "recorded logprobs = one forward pass, within tolerance",
            max(gaps) <= tolerance,
            f"gap {max(gaps):.3g} > {tolerance:.3g}",
        )
        check(
            "the wrong temperature misses the tolerance (the check can fail)",
            min(wrong) > tolerance,
            f"{min(wrong):.3g} <= {tolerance:.3g}",
        )
    finally:
        engine.shutdown(wait_s=30)


# --- the scripted simulator ------------------------------------------------------------------


def scripted_simulator(request: dict[str, Any]) -> str:
    """The simulated user says a fixed line; its judge's change depends on the agent's
    message (its length), so a GRPO group gets spread rewards and a gradient."""
    from rlver_agents.appraisers.appraisal import FENCE_CLOSE, FENCE_OPEN
    from rlver_agents.testing.fake_server import prompt_text

    text = prompt_text(request)
    if FENCE_OPEN not in text:
        return "I hear you, but work still wears me down."
    message = text.rsplit(FENCE_OPEN, 1)[1].split(FENCE_CLOSE, 1)[0].strip()
    change = len(message) % 7 - 3
    return f"Intent: to comfort me\nFit: partly\nReaction: noted\nChange: {change:+d}"


# --- phases 2 and 3: training through rlver-train --------------------------------------------


def train_config(
    algorithm: str,
    checkpoint: Path,
    output_dir: Path,
    base_url: str,
    device: str,
    dtype: str,
) -> dict[str, Any]:
    """The YAML document for one run: GPU precision as in ``training/configs``.

    GRPO: bf16 weights (``policy.dtype``) and TRL's ``bf16``. PPO: float32 master weights and
    accelerate's bf16 autocast (``bf16``). ``TrainConfig`` refuses ``bf16`` with ``use_cpu``,
    so on the CPU only GRPO's weights are bf16.
    """
    autocast = device == "cuda" and dtype == "bfloat16"
    policy_dtype = dtype if algorithm == "grpo" else "float32"
    scripted = {"kind": "openai", "model": "scripted-user", "base_url": base_url}
    document: dict[str, Any] = {
        "algorithm": algorithm,
        "output_dir": str(output_dir),
        "seed": 0,
        "max_steps": 2,
        "save_steps": 1,
        "use_cpu": device == "cpu",
        "bf16": autocast,
        "policy": {"model": str(checkpoint), "dtype": policy_dtype},
        "simulator": {
            "model": {**scripted, "max_new_tokens": 32},
            "appraiser": {"kind": "llm"},
        },
        "rollout": {
            "personas": "train",
            "rules": {"name": "smoke", "initial_score": 30, "max_turns": 2},
            "group_size": 4 if algorithm == "grpo" else 2,
            "temperature": 1.0,
            "max_new_tokens": 8,
            "concurrency": 8,
        },
        "logging": {"tensorboard": False},
    }
    if algorithm == "grpo":
        document["grpo"] = {
            "learning_rate": 1e-2,  # bf16 weights need steps above their spacing (~1e-3)
            "loss_type": "grpo",
            "per_device_train_batch_size": 8,
            "trl": {"disable_tqdm": True},
        }
    else:
        document["rollout"]["unit"] = "turn"
        document["ppo"] = {
            "actor_learning_rate": 1e-3,
            "actor_warmup_ratio": 0.0,
            "critic": {"learning_rate": 1e-3, "warmup_ratio": 0.0},
            "kl_coef": 0.01,  # RLVER's is 0; this loads the frozen reference and uses it
            "personas_per_step": 2,
            "mini_batch_size": 4,
            "micro_batch_size": 4,
        }
    return document


def _asked(document: dict[str, Any]) -> str:
    """The device and precision settings of a generated config, as the report shows them."""
    return (
        f"use_cpu={document['use_cpu']} bf16={document['bf16']} "
        f"policy.dtype={document['policy']['dtype']}"
    )


def rlver_train(config: Path, *options: str) -> None:
    """``rlver-train CONFIG [options]`` in this process (the peak memory stays measurable)."""
    from training.cli import app

    app(args=[str(config), *options], standalone_mode=False)


def _metrics(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _finite(rows: Sequence[dict[str, Any]], *names: str) -> bool:
    values = [row[name] for row in rows for name in names if name in row]
    return bool(values) and all(math.isfinite(v) for v in values)


def _tensors_moved(start: Path, final: Path) -> tuple[int, int]:
    """How many weight tensors differ between two checkpoints, of how many."""
    from safetensors.torch import load_file

    before = load_file(start / "model.safetensors")
    after = load_file(final / "model.safetensors")
    moved = [k for k in before if not torch.equal(before[k].float(), after[k].float())]
    return len(moved), len(before)


def _reload(final: Path, device: str, dtype: str, check: Checks) -> str:
    """Load a trained checkpoint onto the device and sample from it; returns its placement."""
    from rlver_agents.models.engine import Engine, EngineKey
    from rlver_agents.models.records import SamplingParams

    engine = Engine.load(EngineKey(str(final), dtype, device))
    try:
        prompt = _prompts(engine.tokenizer, 1)[0]
        sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
        output = asyncio.run(engine.generate(prompt, sampling))
        check(
            "final checkpoint reloaded on the device samples finite logprobs",
            bool(output.completion_ids) and all(math.isfinite(v) for v in output.logprobs),
        )
        return _placement(engine.model)
    finally:
        engine.shutdown(wait_s=30)


def _common_checks(
    check: Checks,
    facts: dict[str, Any],
    output: Path,
    checkpoint: Path,
    rows: Sequence[dict[str, Any]],
    losses: Sequence[str],
) -> None:
    """What both trainers must show after two steps and a resumed third."""
    steps = [r for r in rows if "rollout/final_score_mean" in r]
    facts["steps"] = [r["step"] for r in steps]
    facts["final_score_mean"] = [round(r["rollout/final_score_mean"], 2) for r in steps]
    check(
        "steps 1, 2 logged, then 3 resumed from checkpoint-2",
        facts["steps"] == [1, 2, 3],
        str(facts["steps"]),
    )
    check("checkpoint-3 written", (output / "checkpoint-3").is_dir())
    check("losses and gradient norms finite", _finite(steps, *losses))
    check("no dialogue errored", all(r["rollout/errored"] == 0 for r in steps))
    moved, total = _tensors_moved(checkpoint, output / "final")
    facts["tensors_changed"] = f"{moved} of {total}"
    check("training changed the weights", moved > 0)


def _is(placement: str | None, device: str, dtype: str) -> bool:
    """Whether every parameter of a ``_placement`` is of ``dtype`` on ``device``."""
    if placement is None:
        return False
    parts = [part.split(" on ") for part in placement.split(" | ")]
    return all(kind == dtype and where.split(":")[0] == device for kind, where in parts)


def grpo_phase(
    checkpoint: Path, work: Path, base_url: str, device: str, dtype: str, facts: dict[str, Any]
) -> None:
    """Two GRPO steps, a resumed third, the final checkpoint back on the device."""
    from training.grpo import GRPORolloutFunction

    check = Checks(facts)
    output = work / "grpo"
    document = train_config("grpo", checkpoint, output, base_url, device, dtype)
    config = work / "grpo.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    facts["config"] = _asked(document)

    def probe(rollout: GRPORolloutFunction, prompts: Any, trainer: Any) -> None:
        facts["trl_bf16"] = trainer.args.bf16
        facts["mixed_precision"] = str(trainer.accelerator.mixed_precision)
        facts["policy"] = _placement(trainer.accelerator.unwrap_model(trainer.model))
        engine = rollout.pause.engine
        facts["engine"] = f"{engine.key.dtype} on {engine.key.device}" if engine else None

    with spy(GRPORolloutFunction, "__call__", probe):
        rlver_train(config)
        check("checkpoint-2 written", (output / "checkpoint-2" / "trainer_state.json").is_file())
        rlver_train(config, "--max-steps", "3")
    rows = _metrics(output)
    _common_checks(check, facts, output, checkpoint, rows, ("loss", "grad_norm"))
    autocast = document["bf16"]
    check("TRL bf16 as configured", facts["trl_bf16"] is autocast, str(facts["trl_bf16"]))
    check(
        "accelerate mixed precision as configured",
        facts["mixed_precision"] == ("bf16" if autocast else "no"),
        facts["mixed_precision"],
    )
    policy_dtype = document["policy"]["dtype"]
    check("policy on the device in the dtype", _is(facts["policy"], device, policy_dtype))
    check("live engine on the device in the dtype", _is(facts["engine"], device, policy_dtype))
    facts["final_reloaded"] = _reload(output / "final", device, policy_dtype, check)


def ppo_phase(
    checkpoint: Path, work: Path, base_url: str, device: str, dtype: str, facts: dict[str, Any]
) -> None:
    """Two PPO steps with the critic, a resumed third, the final checkpoint on the device."""
    from training.ppo import PPORun

    check = Checks(facts)
    output = work / "ppo"
    document = train_config("ppo", checkpoint, output, base_url, device, dtype)
    config = work / "ppo.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    facts["config"] = _asked(document)

    def probe(run: PPORun) -> None:
        facts["mixed_precision"] = str(run.accelerator.mixed_precision)
        facts["policy"] = _placement(run.learner.policy)
        facts["critic"] = _placement(run.learner.critic) if run.learner.critic else None
        facts["reference"] = _placement(run.reference) if run.reference else None
        facts["engine"] = f"{run.engine.key.dtype} on {run.engine.key.device}"

    with spy(PPORun, "step", probe):
        rlver_train(config)
        check("checkpoint-2 written with the critic", (output / "checkpoint-2" / "critic").is_dir())
        rlver_train(config, "--max-steps", "3")
    rows = _metrics(output)
    losses = ("ppo/policy_loss", "ppo/value_loss", "ppo/actor_grad_norm", "ppo/critic_grad_norm")
    _common_checks(check, facts, output, checkpoint, rows, losses)
    autocast = document["bf16"]
    temperature = document["rollout"]["temperature"]
    tolerance = logprob_tolerance(
        "bfloat16" if autocast else "float32", PPO_LOGIT_BOUND, temperature
    )
    gap = max(r["sampling/sampling_logp_difference/max"] for r in rows)
    facts["rollout_logprob_gap_max"] = gap
    facts["tolerance"] = tolerance
    check(
        "rollout logprobs = the trainer's own pass, within tolerance",
        gap <= tolerance,
        f"gap {gap:.3g} > {tolerance:.3g}",
    )
    first_kl = rows[0]["ppo/kl_to_reference"]
    facts["kl_to_reference_step_1"] = first_kl
    check(
        "KL to the reference is 0 at step 1 (equal weights, the actor's precision)",
        abs(first_kl) <= KL_AT_START,
        f"{first_kl:.3g}",
    )
    check(
        "accelerate mixed precision as configured",
        facts["mixed_precision"] == ("bf16" if autocast else "no"),
        facts["mixed_precision"],
    )
    for part in ("policy", "critic", "reference", "engine"):
        check(f"{part} on the device in float32", _is(facts[part], device, "float32"))
    facts["final_reloaded"] = _reload(output / "final", device, "float32", check)


# --- the run ---------------------------------------------------------------------------------


def environment(device: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "accelerate", "peft", "trl", "autogen-agentchat"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    if device == "cuda":
        found["cuda"] = str(torch.version.cuda)
        found["gpu"] = torch.cuda.get_device_name()
        found["bf16_supported"] = str(torch.cuda.is_bf16_supported())
    return found


def smoke(device: str, dtype: str, work: Path) -> SmokeReport:
    """Every phase, in order, on ``device`` in ``dtype`` (``bfloat16`` or ``float32``)."""
    from rlver_agents.testing.fake_server import FakeServer

    started = time.perf_counter()
    # no think tags: the agent does not think here; a long context: prompts are byte-level text
    checkpoint = build_tiny_checkpoint(
        work / "tiny-qwen2", think_tags=False, max_position_embeddings=4096
    )
    phases = [
        run_phase("engine", device, lambda f: engine_phase(checkpoint, device, dtype, f)),
    ]
    with FakeServer(scripted_simulator, model="scripted-user", deadline_s=3600) as server:
        url = server.base_url
        phases.append(
            run_phase("grpo", device, lambda f: grpo_phase(checkpoint, work, url, device, dtype, f))
        )
        phases.append(
            run_phase("ppo", device, lambda f: ppo_phase(checkpoint, work, url, device, dtype, f))
        )
    return SmokeReport(
        device=device,
        dtype=dtype,
        environment=environment(device),
        phases=phases,
        seconds=time.perf_counter() - started,
    )


def render(report: SmokeReport) -> str:
    """The short report printed at the end."""
    env = " ".join(f"{k}={v}" for k, v in report.environment.items())
    lines = [
        f"GPU smoke check on {report.device} in {report.dtype}",
        f"  {env}",
    ]
    for phase in report.phases:
        status = "PASS" if phase.ok else "FAIL"
        lines.append(f"{status} {phase.name}: {phase.seconds:.1f} s, peak {phase.peak_memory}")
        facts = {k: v for k, v in phase.facts.items() if k != "checks"}
        lines += [f"    {name}: {value}" for name, value in facts.items()]
        lines += [f"    ok  {name}" for name in phase.facts.get("checks", [])]
        if phase.error:
            lines.append(f"    error: {phase.error}")
    passed = sum(phase.ok for phase in report.phases)
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(
        f"{verdict}: {passed} of {len(report.phases)} phases passed in {report.seconds:.1f} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bf16", help="bf16 (default) or fp32"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="Keep the checkpoints and runs here (default: a temp dir)."
    )
    parser.add_argument("--json", type=Path, help="Also write the report here as JSON.")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = smoke(args.device, DTYPES[args.dtype], work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(report)
    print(text, flush=True)
    if args.json is not None:
        args.json.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
