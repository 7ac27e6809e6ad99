"""Pack what a GPU machine without network lacks to run ``benchmarks/gpu_smoke.py`` on CUDA.

The GPU machines we reach have Python 3.12 on x86-64 with torch, transformers, accelerate and
peft, and no network. This gathers, for CPython 3.12 on manylinux x86-64, the wheels of
everything else the smoke check imports (TRL, datasets, AutoGen with its OpenAI client, and
their dependencies), at the versions installed here (the ones the CPU run tests), plus a wheel
of this project, and writes them with a run script to ``.gpu-bundle/``:

    python benchmarks/gpu_pack.py                      # pack and verify: .gpu-bundle/
    bash .gpu-bundle/run.sh                            # on the GPU machine: install, smoke check

What is left out, and pinned on the GPU machine instead (``PRESENT``): torch, transformers,
accelerate, peft, and the packages every release of them requires (numpy, safetensors,
tokenizers, huggingface-hub, ...). The walk over the requirements stops there, so none of
them is ever bundled or replaced; anything else pip takes from the bundle only where the
machine lacks it or has a version our packages refuse. TensorBoard is left out too: the smoke
check logs to ``metrics.jsonl`` only.

Size: datasets (which TRL imports) needs pyarrow, whose wheel alone is about 55 MB, so the
wheels do not fit the 64 MiB a device run carries. Their files are stored instead in one xz
archive (about a third smaller than the wheels' own zip compression), and ``run.sh`` zips each
wheel back, byte for byte the same files, before ``pip install --no-index --find-links``.

Verification here (skip it with ``--no-verify``): the wheels are zipped back from the archive
as ``run.sh`` does and compared file by file with the originals, then ``pip install --dry-run``
resolves the install targets for CPython 3.12 on manylinux, offline, against the bundle plus
stand-in wheels (metadata only) for the ``PRESENT`` packages at the versions installed here.
``--try-python PY`` (a Python 3.12) also runs ``run.sh --install-only`` for real, into a fresh
venv that holds stand-ins for torch, transformers, accelerate and peft and the real wheels of
the rest of ``PRESENT``, then imports everything that does not need torch.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu-bundle"
BUDGET_MIB = 64
ARCHIVE = "wheels.tar.xz"
XZ_PRESET = 6
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 29))]
TARGET_MARKERS = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.0",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.0",
    "python_version": PYTHON_VERSION,
    "sys_platform": "linux",
}
PREINSTALLED = ("torch", "transformers", "accelerate", "peft")
PRESENT = frozenset(
    {
        *PREINSTALLED,
        # what torch, transformers, accelerate and peft have required in every release since
        # 2024; the GPU machine has them, and run.sh pins them so pip cannot replace them
        "numpy",
        "safetensors",
        "tokenizers",
        "huggingface-hub",
        "hf-xet",
        "filelock",
        "fsspec",
        "packaging",
        "pyyaml",
        "regex",
        "tqdm",
        "psutil",
        "jinja2",
        "markupsafe",
        "typing-extensions",
        "sympy",
        "mpmath",
        "networkx",
        "setuptools",
    }
)
LEFT_OUT = frozenset({"tensorboard"})
"""Of the ``train`` extra: the smoke check does not log to TensorBoard."""
TORCH_FREE_IMPORTS = (
    "rlver_agents",
    "rlver_agents.config",
    "rlver_agents.testing.fake_server",
    "autogen_agentchat",
    "autogen_ext.models.openai",
    "openai",
    "tiktoken",
    "pydantic",
    "pyarrow",
    "pandas",
    "PIL.Image",
    "datasets",
)
"""What ``--try-python`` imports after its real install (everything short of torch)."""


def _canonical(name: str) -> str:
    """PEP 503's normalised name (stdlib only: this file also runs on the GPU machine)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_pins() -> list[str]:
    """``name==version`` of every ``PRESENT`` package this interpreter has: run.sh's pip
    constraints. Fails when torch, transformers, accelerate or peft is missing."""
    from importlib.metadata import distributions

    found = {_canonical(d.metadata["Name"]): d.version for d in distributions()}
    missing = [name for name in PREINSTALLED if name not in found]
    if missing:
        raise SystemExit(f"this machine lacks {missing}; the bundle needs them installed")
    print(" ".join(f"{n} {found[n]}" for n in PREINSTALLED), file=sys.stderr)
    return [f"{name}=={found[name]}" for name in sorted(PRESENT & set(found))]


# --- which wheels ----------------------------------------------------------------------------


def project_requirements() -> tuple[str, list[str], list[str]]:
    """The project's name, its requirements, and the names of its ``train`` extra that the GPU
    machine lacks (less what the smoke check skips), from ``pyproject.toml``."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    train = [Requirement(r) for r in project["optional-dependencies"]["train"]]
    extra = [str(r) for r in train if _canonical(r.name) not in PRESENT | LEFT_OUT]
    return project["name"], list(project["dependencies"]), extra


def _requirement_name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


def requirement_closure(roots: Iterable[str], stop: frozenset[str] = PRESENT) -> dict[str, str]:
    """Every distribution ``roots`` need on CPython 3.12 / Linux x86-64, with the version
    installed here, stopping at ``stop`` (by default what the GPU machine has).

    The installed versions are the ones the CPU smoke run tests, so they are what gets packed;
    each must satisfy every requirement on it that the walk meets.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    pending = [Requirement(root) for root in roots]
    extras: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        name = _canonical(requirement.name)
        if name in stop:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(
                f"{name} is needed on the GPU machine but not installed here"
            ) from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{name} {dist.version} is installed here; {requirement} is needed")
        wanted = set(requirement.extras)
        if name in versions and wanted <= extras[name]:
            continue
        versions[name] = dist.version
        extras[name] = extras.get(name, set()) | wanted
        for line in dist.requires or []:
            needed = Requirement(line)
            active = ["", *sorted(extras[name])]
            if needed.marker is None or any(
                needed.marker.evaluate({**TARGET_MARKERS, "extra": e}) for e in active
            ):
                pending.append(needed)
    return versions


def _pip(*args: str, isolated: bool = False, cwd: Path | None = None) -> str:
    """Run this interpreter's pip; ``isolated`` ignores every pip configuration file."""
    env = {k: v for k, v in os.environ.items() if not (isolated and k.startswith("PIP_"))}
    if isolated:
        env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"pip {' '.join(args[:3])} ... failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _target_options() -> list[str]:
    options = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        options += ["--platform", platform]
    return options


def download(pins: dict[str, str], into: Path) -> None:
    """The pinned wheels for CPython 3.12 on manylinux x86-64, one pip call, no dependencies
    (the closure above already is the full list)."""
    requirements = [f"{name}=={version}" for name, version in sorted(pins.items())]
    _pip("download", "--no-deps", *_target_options(), "-d", str(into), *requirements)


def project_wheel(into: Path, scratch: Path) -> Path:
    """``pip wheel --no-deps`` of this project, built from a copy so the shared tree gets no
    ``build/`` or ``*.egg-info``."""
    source = scratch / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("rlver_agents", "training", "personas"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    command = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(into)]
    _pip(*command, ".", cwd=source)
    (wheel,) = into.glob("rlver_agents-*.whl")
    return wheel


# --- the archive: wheel files in one xz stream, zipped back on the GPU machine ---------------


def pack_wheels(wheels: Sequence[Path], archive: Path) -> None:
    """Store every file of every wheel under ``<wheel file name>/`` in one xz tar."""
    with (
        lzma.open(archive, "wb", preset=XZ_PRESET) as xz,
        tarfile.open(fileobj=xz, mode="w|") as tar,
    ):
        for wheel in sorted(wheels):
            with zipfile.ZipFile(wheel) as source:
                for entry in source.infolist():
                    if entry.is_dir():
                        continue
                    data = source.read(entry)
                    member = tarfile.TarInfo(f"{wheel.name}/{entry.filename}")
                    member.size = len(data)
                    member.mode = (entry.external_attr >> 16) & 0o777 or 0o644
                    member.mtime = 0
                    tar.addfile(member, io.BytesIO(data))


def unpack_wheels(archive: Path, into: Path) -> list[Path]:
    """Zip every wheel of ``archive`` back into ``into``; the files and their modes are the
    original wheel's, so pip installs the same thing."""
    into.mkdir(parents=True, exist_ok=True)
    open_wheels: dict[str, zipfile.ZipFile] = {}
    try:
        with tarfile.open(archive, mode="r|xz") as tar:
            for member in tar:
                wheel, _, inner = member.name.partition("/")
                if not member.isfile() or not wheel.endswith(".whl") or not inner:
                    raise SystemExit(f"{archive}: unexpected member {member.name!r}")
                if wheel not in open_wheels:
                    open_wheels[wheel] = zipfile.ZipFile(into / wheel, "w", zipfile.ZIP_STORED)
                entry = zipfile.ZipInfo(inner, date_time=(1980, 1, 1, 0, 0, 0))
                entry.external_attr = (member.mode & 0o777 | 0o100000) << 16
                extracted = tar.extractfile(member)
                assert extracted is not None
                open_wheels[wheel].writestr(entry, extracted.read())
    finally:
        for handle in open_wheels.values():
            handle.close()
    return sorted(into / name for name in open_wheels)


def _file_digests(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        return {
            e.filename: hashlib.sha256(archive.read(e)).hexdigest()
            for e in archive.infolist()
            if not e.is_dir()
        }


# --- the run script --------------------------------------------------------------------------

RUN_SH = """#!/usr/bin/env bash
# On a GPU machine without network: install what it lacks from this folder, then run the
# smoke check on CUDA. torch, transformers, accelerate, peft and the packages they need are
# pinned to the versions already there, so pip stops before changing any of them.
#   bash run.sh [gpu_smoke.py options]     # e.g. --dtype fp32 --json report.json
#   bash run.sh --install-only
# PYTHON picks the interpreter that has torch (default: python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${{PYTHON:-python3}}"
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the scripted simulator listens on 127.0.0.1; a proxy setting must not catch it
export NO_PROXY="127.0.0.1,localhost${{NO_PROXY:+,$NO_PROXY}}"
export no_proxy="127.0.0.1,localhost${{no_proxy:+,$no_proxy}}"

work="$(mktemp -d)"  # the wheels zipped back and the pins; the bundle stays as packed
trap 'rm -rf "$work"' EXIT

"$python" "$here/gpu_pack.py" pins > "$work/constraints.txt"
"$python" "$here/gpu_pack.py" unpack "$here/{archive}" "$work/wheels"
echo "pinned as installed:"; sed 's/^/  /' "$work/constraints.txt"
"$python" -m pip install --no-index --only-binary=:all: --find-links "$work/wheels" \\
  -c "$work/constraints.txt" {targets}
# the same version of this project may be installed from an earlier bundle: take this one
"$python" -m pip install --no-index --no-deps --force-reinstall "$work"/wheels/{project}-*.whl

if [ "${{1:-}}" = "--install-only" ]; then exit 0; fi
"$python" "$here/gpu_smoke.py" --device cuda "$@"
"""


def write_run_script(bundle: Path, targets: Sequence[str]) -> Path:
    script = bundle / "run.sh"
    project = targets[0].split("==")[0].replace("-", "_")
    script.write_text(
        RUN_SH.format(archive=ARCHIVE, targets=" ".join(targets), project=project),
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


# --- verification ----------------------------------------------------------------------------


def stand_in_wheel(name: str, version: str, into: Path) -> Path:
    """A wheel with metadata only: ``name`` at ``version`` as the GPU machine is assumed to
    have it, so the resolver can be asked offline what else would be installed."""
    stem = f"{name.replace('-', '_')}-{version}"
    wheel = into / f"{stem}-py3-none-any.whl"
    info = f"{stem}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpu_pack\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", record)
    return wheel


def stand_ins(into: Path) -> dict[str, str]:
    """Stand-in wheels for every ``PRESENT`` package installed here, at this version."""
    from importlib.metadata import PackageNotFoundError, version

    into.mkdir(parents=True, exist_ok=True)
    pins = {}
    for name in sorted(PRESENT):
        try:
            pins[name] = version(name)
        except PackageNotFoundError:
            continue
        stand_in_wheel(name, pins[name], into)
    return pins


def dry_run(wheels: Path, stubs: Path, pins: dict[str, str], targets: Sequence[str]) -> dict:
    """``pip install --dry-run`` for CPython 3.12 / manylinux, offline, as run.sh asks it."""
    constraints = stubs / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
    report = stubs / "report.json"
    _pip(
        # pip takes platform options only with --target, which ignores what is installed
        "install", "--dry-run", "--target", str(stubs / "target"), "--no-index",
        *_target_options(),
        "--find-links", str(wheels), "--find-links", str(stubs), "-c", str(constraints),
        "--report", str(report), *targets,
        isolated=True,
    )  # fmt: skip
    return json.loads(report.read_text(encoding="utf-8"))


def try_install(python: str, bundle: Path, scratch: Path) -> list[str]:
    """``run.sh --install-only`` for real, into a fresh venv of ``python``, then the imports
    that need no torch. The venv plays the GPU machine: stand-ins for torch, transformers,
    accelerate and peft, and the real wheels of the rest of ``PRESENT`` with everything they
    need (downloaded here for this check only). Returns the modules imported."""
    from importlib.metadata import version

    machine = scratch / "machine"
    download(requirement_closure(PRESENT - set(PREINSTALLED), frozenset(PREINSTALLED)), machine)
    for name in PREINSTALLED:
        stand_in_wheel(name, version(name), machine)
    venv = scratch / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    interpreter = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    preinstalled = [str(p) for p in machine.glob("*.whl")]
    subprocess.run(
        [interpreter, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *preinstalled],
        check=True,
        env=env,
    )
    done = subprocess.run(
        ["bash", str(bundle / "run.sh"), "--install-only"],
        env={**env, "PYTHON": interpreter},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"run.sh --install-only failed:\n{done.stdout[-4000:]}\n{done.stderr}")
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    imported = subprocess.run(
        [interpreter, "-c", code, *TORCH_FREE_IMPORTS],
        capture_output=True,
        text=True,
        check=False,
        cwd=scratch,
    )
    if imported.returncode != 0:
        raise SystemExit(f"imports after the install failed:\n{imported.stderr[-3000:]}")
    return list(TORCH_FREE_IMPORTS)


# --- the command -----------------------------------------------------------------------------


def _verify(
    archive: Path,
    wheels: Sequence[Path],
    pins: dict[str, str],
    targets: Sequence[str],
    scratch: Path,
) -> bool:
    """Rebuild the wheels as run.sh does and resolve the targets offline; prints what it saw
    and returns whether it held."""
    rebuilt = unpack_wheels(archive, scratch / "rebuilt")
    originals = {p.name: p for p in wheels}
    if {p.name for p in rebuilt} != set(originals) or any(
        _file_digests(p) != _file_digests(originals[p.name]) for p in rebuilt
    ):
        print("verify: the wheels zipped back from the archive differ from the originals")
        return False
    print(f"verify: {len(rebuilt)} wheels zipped back from the archive, same files as packed")
    stubs = scratch / "stand-ins"
    present = stand_ins(stubs)
    report = dry_run(scratch / "rebuilt", stubs, present, targets)
    chosen = {_canonical(item["metadata"]["name"]) for item in report["install"]}
    print(
        f"verify: pip install --dry-run for CPython {PYTHON_VERSION} on manylinux x86-64, "
        f"offline, resolves {' '.join(targets)} to {len(chosen - set(present))} bundled "
        f"packages and {len(chosen & set(present))} of the machine's (stand-in wheels at the "
        f"versions here, e.g. {', '.join(f'{n}=={present[n]}' for n in PREINSTALLED)})"
    )
    unused = sorted(set(pins) - chosen)
    if unused:
        print(f"verify: bundled but never chosen by pip: {unused}")
        return False
    return True


def pack(bundle: Path, budget_mib: float, verify: bool, try_python: str | None) -> int:
    """Gather, pack, and (``verify``) check the bundle; 0 when it is ready to carry."""
    started = time.perf_counter()
    name, requirements, extra = project_requirements()
    with tempfile.TemporaryDirectory(prefix="gpu-pack-") as tmp:
        scratch = Path(tmp)
        wheels = scratch / "wheels"
        own = project_wheel(wheels, scratch)
        pins = requirement_closure([*requirements, *extra])
        download(pins, wheels)
        files = sorted(wheels.glob("*.whl"))
        targets = [f"{name}=={own.name.split('-')[1]}"]
        targets += [f"{n}=={pins[_canonical(n)]}" for n in map(_requirement_name, extra)]
        if bundle.exists():
            shutil.rmtree(bundle)
        bundle.mkdir(parents=True)
        archive = bundle / ARCHIVE
        pack_wheels(files, archive)
        shutil.copy2(Path(__file__), bundle / "gpu_pack.py")
        shutil.copy2(ROOT / "benchmarks" / "gpu_smoke.py", bundle / "gpu_smoke.py")
        write_run_script(bundle, targets)
        manifest = {
            "python": PYTHON_VERSION,
            "platforms": PLATFORMS,
            "targets": targets,
            "present_not_bundled": sorted(PRESENT),
            "wheels": {p.name: p.stat().st_size for p in files},
        }
        (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

        total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        raw = sum(p.stat().st_size for p in files)
        print(f"bundle {bundle}: {total / 2**20:.1f} MiB (budget {budget_mib:g} MiB)")
        print(
            f"  {ARCHIVE}: {archive.stat().st_size / 2**20:.1f} MiB, holding {len(files)} "
            f"wheels of {raw / 2**20:.1f} MiB:"
        )
        for path in sorted(files, key=lambda p: -p.stat().st_size):
            print(f"  {path.stat().st_size / 2**20:7.2f} MiB  {path.name}")
        if total > budget_mib * 2**20:
            print(f"over budget by {(total - budget_mib * 2**20) / 2**20:.1f} MiB")
            return 1
        if verify:
            if not _verify(archive, files, pins, targets, scratch):
                return 1
            if try_python:
                imported = try_install(try_python, bundle, scratch)
                print(
                    f"verify: run.sh --install-only with {try_python} into a fresh venv "
                    f"standing in for the GPU machine; then imported {', '.join(imported)}"
                )
    print(f"packed in {time.perf_counter() - started:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    make = commands.add_parser("pack", help="Gather, pack and verify (the default).")
    make.add_argument("--out", type=Path, default=BUNDLE)
    make.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    make.add_argument("--no-verify", dest="verify", action="store_false")
    make.add_argument(
        "--try-python", help="Also install for real into a venv of this Python (3.12)."
    )
    commands.add_parser("pins", help="Print this machine's pins of PRESENT (run.sh).")
    unpack = commands.add_parser("unpack", help="Zip the wheels back (run.sh does this).")
    unpack.add_argument("archive", type=Path)
    unpack.add_argument("into", type=Path)
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["pack"]))
    if args.command == "pins":
        print("\n".join(machine_pins()))
        return 0
    if args.command == "unpack":
        rebuilt = unpack_wheels(args.archive, args.into)
        print(f"{len(rebuilt)} wheels in {args.into}")
        return 0
    return pack(args.out, args.budget_mib, args.verify, args.try_python)


if __name__ == "__main__":
    sys.exit(main())
