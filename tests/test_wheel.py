"""The built wheel carries the persona splits, the appraisal corpus and the learned judge's
weights, and a non-editable install loads the splits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from rlver_agents.personas import PERSONA_SPLITS, load_personas

ROOT = Path(__file__).resolve().parents[1]

# Runs with only the unpacked wheel (and site-packages for the dependencies) importable.
LOAD_EVERY_SPLIT = """
import json, sys
from pathlib import Path
source, site = Path(sys.argv[1]), Path(sys.argv[2])
sys.path = [p for p in sys.path if p and not Path(p).resolve().is_relative_to(source)]
import rlver_agents
from rlver_agents.personas import PERSONA_SPLITS, PersonaFileError, bundled_personas_dir, load_split
try:
    load_split("nope")
    missing = None
except PersonaFileError as exc:
    missing = str(exc)
print(json.dumps({
    "module": rlver_agents.__file__,
    "bundled": str(bundled_personas_dir()),
    "splits": {s: [p.id for p in load_split(s)] for s in PERSONA_SPLITS},
    "missing": missing,
}))
"""


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the shared tree gets no build/ or egg-info."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("rlver_agents", "personas"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    assert (source / "rlver_agents" / "data" / "personas").is_symlink()
    dist = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "-q", "-w", str(dist), str(source)]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = dist.glob("rlver_agents-*.whl")
    return wheel


def test_every_split_loads_from_the_unpacked_wheel(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            name: archive.read(name)
            for name in archive.namelist()
            if name.startswith("rlver_agents/data/personas/")
        }
        archive.extractall(site)
    assert shipped == {
        f"rlver_agents/data/personas/{split}.jsonl": (
            ROOT / "personas" / f"{split}.jsonl"
        ).read_bytes()
        for split in PERSONA_SPLITS
    }
    assert not (site / "rlver_agents" / "data" / "personas").is_symlink()
    names = set(archive.namelist())
    for package in ("agents", "appraisers", "episodes", "evaluation", "models", "testing"):
        assert f"rlver_agents/{package}/__init__.py" in names
    # the old flat paths that saved provider strings name, kept as re-export modules
    for module in ("agent", "simulator", "appraisal", "embedding_appraiser", "reply_guard"):
        assert f"rlver_agents/{module}.py" in names
    assert "rlver_agents/testing/fake_server.py" in names
    # the learned judge: its corpus and its fitted tensors travel with the package
    for name in ("appraisal_corpus/train.jsonl", "appraisal_corpus/validation.jsonl"):
        assert archive.getinfo(f"rlver_agents/data/{name}").file_size > 100_000
    weights = archive.getinfo("rlver_agents/data/judge/judge.safetensors")
    assert 1_000_000 < weights.file_size < 16_000_000, "small enough to ship"
    assert "rlver_agents/data/judge/judge.json" in names

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_EVERY_SPLIT, str(ROOT), str(site)],
        check=True,
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    report = json.loads(result.stdout)
    assert Path(report["module"]).is_relative_to(site)
    assert Path(report["bundled"]) == site / "rlver_agents" / "data" / "personas"
    assert report["splits"] == {
        split: [p.id for p in load_personas(ROOT / "personas" / f"{split}.jsonl")]
        for split in PERSONA_SPLITS
    }
    assert all(report["splits"].values())
    assert "not a bundled split" in report["missing"] and "'test'" in report["missing"]
