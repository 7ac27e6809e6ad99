"""The GPU smoke check runs on the CPU here, so it cannot rot before a GPU is at hand; and the
packing step's own pieces (the wheel archive, the requirement walk, the run script) hold."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke() -> ModuleType:
    return _load("gpu_smoke")


@pytest.fixture(scope="module")
def pack() -> ModuleType:
    return _load("gpu_pack")


@pytest.mark.slow
def test_the_smoke_check_passes_on_the_cpu_in_bf16(smoke: ModuleType, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--device", "cpu"]
    done = subprocess.run(
        [*command, "--work-dir", str(tmp_path / "work"), "--json", str(report_file)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("PASS: 3 of 3 phases passed")
    report = json.loads(report_file.read_text())
    assert (report["device"], report["dtype"]) == ("cpu", "bfloat16")
    phases = {phase["name"]: phase for phase in report["phases"]}
    assert list(phases) == ["engine", "grpo", "ppo"]
    assert all(phase["ok"] and phase["error"] is None for phase in phases.values())
    assert all("peak RSS" in phase["peak_memory"] for phase in phases.values())

    engine = phases["engine"]["facts"]
    assert engine["model"] == "bfloat16 on cpu"
    assert max(engine["batches"]) > 1
    tolerance = smoke.logprob_tolerance("bfloat16", engine["max_abs_logit"], 0.7)
    assert engine["tolerance"] == tolerance
    assert engine["logprob_gap_max"] <= engine["tolerance"] < engine["wrong_temperature_gap_min"]
    assert "recorded logprobs = one forward pass, within tolerance" in engine["checks"]

    grpo = phases["grpo"]["facts"]
    assert grpo["config"] == "use_cpu=True bf16=False policy.dtype=bfloat16"
    assert grpo["steps"] == [1, 2, 3]  # two steps, then one resumed from checkpoint-2
    assert (grpo["trl_bf16"], grpo["mixed_precision"]) == (False, "no")
    assert grpo["policy"] == grpo["engine"] == grpo["final_reloaded"] == "bfloat16 on cpu"
    assert grpo["tensors_changed"].split(" of ")[0] != "0"

    ppo = phases["ppo"]["facts"]
    assert ppo["config"] == "use_cpu=True bf16=False policy.dtype=float32"  # no CPU autocast
    assert "checkpoint-2 written with the critic" in ppo["checks"]
    assert ppo["steps"] == [1, 2, 3]
    assert ppo["mixed_precision"] == "no"
    assert ppo["policy"] == ppo["critic"] == ppo["reference"] == ppo["engine"] == "float32 on cpu"
    assert ppo["kl_to_reference_step_1"] == 0.0
    assert ppo["rollout_logprob_gap_max"] <= ppo["tolerance"] == 1e-4


def test_a_failing_check_fails_its_phase_and_the_run(smoke: ModuleType) -> None:
    def body(facts: dict[str, object]) -> None:
        check = smoke.Checks(facts)
        check("holds", True)
        check("breaks", False, "the detail")
        check("never reached", True)

    phase = smoke.run_phase("demo", "cpu", body)
    assert not phase.ok and phase.facts["checks"] == ["holds"]
    assert "breaks: the detail" in phase.error
    report = smoke.SmokeReport(
        device="cpu", dtype="bfloat16", environment={}, phases=[phase], seconds=1.0
    )
    assert not report.ok
    assert smoke.render(report).splitlines()[-1].startswith("FAIL: 0 of 1 phases passed")


def test_the_bf16_tolerance_is_four_spacings_of_the_largest_logit_over_t(
    smoke: ModuleType,
) -> None:
    assert smoke.bf16_spacing(7.2) == 2.0**-5  # logits in [4, 8): bf16 numbers 1/32 apart
    assert smoke.bf16_spacing(8.0) == 2.0**-4
    assert smoke.logprob_tolerance("bfloat16", 7.2, 0.5) == 4 * 2.0**-5 / 0.5
    assert smoke.logprob_tolerance("float32", 7.2, 0.5) == 1e-4


def _wheel(path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (data, mode) in files.items():
            entry = zipfile.ZipInfo(name)
            entry.external_attr = (0o100000 | mode) << 16
            archive.writestr(entry, data)
    return path


def test_wheels_come_back_from_the_archive_with_the_same_files_and_modes(
    pack: ModuleType, tmp_path: Path
) -> None:
    a = _wheel(
        tmp_path / "a-1.0-py3-none-any.whl",
        {"a/__init__.py": (b"x = 1\n", 0o644), "a-1.0.data/scripts/run": (b"#!/bin/sh\n", 0o755)},
    )
    b = pack.stand_in_wheel("b-pkg", "2.0+cpu", tmp_path)
    archive = tmp_path / "wheels.tar.xz"
    pack.pack_wheels([a, b], archive)
    rebuilt = pack.unpack_wheels(archive, tmp_path / "back")
    assert [p.name for p in rebuilt] == sorted([a.name, b.name])
    for wheel in rebuilt:
        original = tmp_path / wheel.name
        assert pack._file_digests(wheel) == pack._file_digests(original)
    with zipfile.ZipFile(tmp_path / "back" / a.name) as back:
        mode = back.getinfo("a-1.0.data/scripts/run").external_attr >> 16
    assert mode & 0o777 == 0o755


def test_the_walk_stops_at_what_the_gpu_machine_has(pack: ModuleType) -> None:
    name, requirements, extra = pack.project_requirements()
    assert name == "rlver-agents"
    assert {pack._requirement_name(r) for r in extra} >= {"trl", "datasets"}
    pins = pack.requirement_closure([*requirements, *extra])
    assert {"trl", "datasets", "pyarrow", "autogen-agentchat", "openai"} <= set(pins)
    assert not set(pins) & pack.PRESENT  # torch & co. are never bundled
    assert "tensorboard" not in pins


def test_the_run_script_parses_and_pins_before_it_installs(
    pack: ModuleType, tmp_path: Path
) -> None:
    script = pack.write_run_script(tmp_path, ["rlver-agents==0.1.0", "trl==1.16.0"])
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert text.index('pack.py" pins') < text.index("pip install --no-index")
    assert '-c "$work/constraints.txt" rlver-agents==0.1.0 trl==1.16.0' in text
    pins = pack.machine_pins()
    assert any(pin.startswith("torch==") for pin in pins)
    assert all(pack._canonical(pin.split("==")[0]) in pack.PRESENT for pin in pins)
