"""A verl actor checkpoint, merged by verl's own merger, plays a dialogue in ``rlver eval``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from conftest import english_persona
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.episodes.episode import Episode


def fsdp_actor_checkpoint(source: Path, folder: Path) -> Path:
    """The layout verl's FSDP checkpoint manager writes for one rank.

    ``model_world_size_1_rank_0.pt`` (the state dict), ``fsdp_config.json`` (the world size)
    and ``huggingface/`` (config and tokenizer), here filled from the tiny model. Its context is
    widened (RoPE has no position weights) so the simulated user's long prompts fit.
    """
    actor = folder / "global_step_5" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": 1}))
    model.config.max_position_embeddings = 8192
    model.config.save_pretrained(actor / "huggingface")
    AutoTokenizer.from_pretrained(source).save_pretrained(actor / "huggingface")
    return actor


def test_a_merged_checkpoint_loads_in_rlver_eval(tiny_checkpoint: Path, tmp_path: Path) -> None:
    actor = fsdp_actor_checkpoint(tiny_checkpoint, tmp_path / "checkpoints")
    merged = tmp_path / "merged"
    merge = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    subprocess.run(
        [*merge, "--local_dir", str(actor), "--target_dir", str(merged)],
        check=True,
        capture_output=True,
    )
    original = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).state_dict()
    restored = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).state_dict()
    for name, tensor in original.items():
        assert torch.equal(restored[name], tensor.bfloat16().float()), name

    personas = tmp_path / "one.jsonl"
    personas.write_text(english_persona().model_dump_json() + "\n")
    spec = {"kind": "local", "model": str(merged), "max_new_tokens": 8, "seed": 1}
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent": {"model": spec},
                "simulator": {"model": spec, "appraiser": {"kind": "embedding"}},
                "personas": str(personas),
            }
        )
    )
    out = tmp_path / "eval.jsonl"
    rlver = Path(sys.executable).with_name("rlver")
    done = subprocess.run(
        [str(rlver), "eval", "--config", str(config), "--out", str(out), "--json", "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    episodes = [Episode.model_validate_json(line) for line in out.read_text().splitlines()]
    assert len(episodes) == 1 and episodes[0].ok, episodes[0].error
    assert episodes[0].config.agent["model"]["model"] == str(merged)
    assert any(turn.speaker == "agent" and turn.text for turn in episodes[0].turns)
