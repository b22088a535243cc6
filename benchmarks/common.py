"""Shared helpers for the benchmarks: synthetic data, nnU-Net side-by-side runs, peak memory, tables and JSON.

nnU-Net v2 is never a dependency of Voxelbase: the benchmarks call it as external commands from its own
virtual environment, given by $NNUNET_VENV (default: /tmp/nnunet, made with
`python3 -m venv /tmp/nnunet && /tmp/nnunet/bin/pip install torch==2.14.1 nnunetv2`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO.parent / "shared" / "data" / "synth.py"
OUT = REPO / "benchmarks" / "out"
NNUNET_VENV = Path(os.environ.get("NNUNET_VENV", "/tmp/nnunet"))
NNUNET_ID = 901

_RSS_WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:]).returncode; t = time.perf_counter() - t\n"
    "print('BENCH', rc, t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def timed(command: list[str], *, env: dict | None = None, quiet: bool = True) -> dict:
    """Run a command; wall seconds and the peak RSS (MB) of its largest process."""
    result = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, *command],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None or line.split()[1] != "0":
        raise RuntimeError(f"command failed: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    if not quiet:
        print(result.stdout, result.stderr)
    _, _, seconds, rss_kb = line.split()
    return {"seconds": float(seconds), "peak_rss_mb": int(rss_kb) / 1024}


def synth(out: Path, *args: str) -> Path:
    """Data from the reference generator (the same data nnU-Net's reference figures were made on)."""
    if not SYNTH.exists():
        raise SystemExit(f"the reference generator {SYNTH} is missing")
    if not (out / "dataset.json").exists():
        subprocess.run([sys.executable, str(SYNTH), str(out), *args], check=True)
    return out


def have_nnunet() -> bool:
    return (NNUNET_VENV / "bin" / "nnUNetv2_plan_experiment").exists()


def nnunet_env(work: Path, raw: Path, *, dataset_id: int = NNUNET_ID, name: str = "Synth") -> dict:
    """nnU-Net's three folders under `work`, with `raw` linked in as Dataset<ID>_<name>."""
    folders = {key: work / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    link = folders["nnUNet_raw"] / f"Dataset{dataset_id:03d}_{name}"
    if not link.exists():
        link.symlink_to(raw.resolve(), target_is_directory=True)
    return {key: str(value) for key, value in folders.items()} | {"nnUNet_n_proc_DA": "2"}


def nnunet_command(name: str, *args: str) -> list[str]:
    return [str(NNUNET_VENV / "bin" / name), *args]


def voxelbase_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxelbase.cli", *args]


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_results(name: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return path
