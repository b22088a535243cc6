"""Scaling out on one machine: DDP ranks for training, a Dask cluster for preprocessing.

    python -m benchmarks.scaling [--part ddp dask] [--cases 8] [--shape 32 64 64] [--iterations 10] [--epochs 4]
                                 [--repeats 3]

ddp:  one fold of the same spec trained by `voxelbase train --world-size 1` and `--world-size 2` (gloo on the CPU,
      or one GPU per rank on CUDA) at the same global batch; iterations/s from the `epochs` table (median epoch,
      the first epoch left out as warm-up).
dask: `voxelbase preprocess` of the same cases with the local process pool (`--workers 2`), a Dask `LocalCluster`
      started by the command (`--scheduler local:2`) and a Dask cluster already running (`--scheduler
      tcp://...`, 2 worker processes), alternating, `--repeats` times each from an empty stage; wall clock of the
      command, the fastest run reported.
s3:   the patch stream (`benchmarks.loader`'s measurement: `read`, no augmentation, one thread; `augment_2`, two
      worker threads) over the same preprocessed cases in a local store and in an `s3://` store served by an
      S3-compatible server started here on 127.0.0.1 (moto, its own process); patches/s of each.
The data is the project's own sample data (`voxelbase demo-data`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks.common import machine, print_table, timed, voxelbase_command, write_results
from benchmarks.preprocess import _reset_voxelbase

SPEC = """\
name = "{name}"
dataset = "synth"

[train]
configurations = ["3d_fullres"]
folds = [0]
epochs = {epochs}
iterations_per_epoch = {iterations}
val_iterations = 1
validate = false
device = "{device}"
batch_size = {batch}
"""


def _prepare(work: Path, cases: int, shape: list[int]) -> Path:
    raw = work / "raw"
    project = work / "project"
    subprocess.run(
        voxelbase_command(
            "demo-data", str(raw), "--cases", str(cases), "--test-cases", "0", "--shape", *map(str, shape)
        ),
        check=True,
        capture_output=True,
    )
    timed(voxelbase_command("--project", str(project), "ingest", str(raw), "--name", "synth"))
    timed(voxelbase_command("--project", str(project), "plan", "synth"))
    return project


def _epoch_seconds(project: Path, experiment: str) -> list[float]:
    con = duckdb.connect(str(project / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT seconds FROM epochs JOIN runs USING (run_id) WHERE experiment = ? ORDER BY epoch", [experiment]
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def ddp(project: Path, work: Path, args) -> list[dict]:
    timed(voxelbase_command("--project", str(project), "preprocess", "synth", "-c", "3d_fullres", "--workers", "2"))
    rows = []
    for world in args.world_sizes:
        name = f"ddp{world}"
        spec = work / f"{name}.toml"
        spec.write_text(
            SPEC.format(name=name, epochs=args.epochs, iterations=args.iterations, device=args.device, batch=args.batch)
        )
        run = timed(
            voxelbase_command("--project", str(project), "train", str(spec), "--fold", "0", "--world-size", str(world))
        )
        seconds = _epoch_seconds(project, name)[1:]  # the first epoch warms up (threads, allocator, caches)
        per_epoch = statistics.median(seconds)
        rows.append(
            {
                "world_size": world,
                "global_batch": args.batch,
                "iterations_per_s": args.iterations / per_epoch,
                "median_epoch_s": per_epoch,
                "command_s": run["seconds"],
            }
        )
    base = rows[0]["iterations_per_s"]
    for row in rows:
        row["speed_vs_1_rank"] = row["iterations_per_s"] / base
    return rows


def dask(project: Path, args) -> list[dict]:
    from distributed import LocalCluster

    command = voxelbase_command("--project", str(project), "preprocess", "synth", "-c", "3d_fullres")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        modes = {
            "process pool (--workers 2)": [*command, "--workers", "2"],
            "LocalCluster started by the command (--scheduler local:2)": [*command, "--scheduler", "local:2"],
            "running Dask cluster, 2 workers (--scheduler tcp://...)": [
                *command,
                "--scheduler",
                cluster.scheduler_address,
            ],
        }
        seconds: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode, argv in modes.items():
                _reset_voxelbase(project, "3d_fullres")
                seconds[mode].append(timed(argv)["seconds"])
                time.sleep(1)
    finally:
        cluster.close()
    pool = min(seconds["process pool (--workers 2)"])
    return [
        {"mode": mode, "best_s": min(s), "median_s": statistics.median(s), "vs_pool": min(s) / pool}
        for mode, s in seconds.items()
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def s3(work: Path, args) -> list[dict]:
    import os

    from benchmarks.loader import run_voxelbase

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    try:
        import s3fs

        deadline = time.monotonic() + 30
        while True:
            try:
                s3fs.S3FileSystem(skip_instance_cache=True).mkdir("voxelbase-bench")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        raw = work / "raw"
        projects = {"local store": work / "project", "s3:// store (moto, 127.0.0.1)": work / "s3project"}
        first = ["--store", "s3://voxelbase-bench/project"]
        timed(
            voxelbase_command(
                "--project",
                str(projects["s3:// store (moto, 127.0.0.1)"]),
                *first,
                "ingest",
                str(raw),
                "--name",
                "synth",
            )
        )
        rows = []
        for store, project in projects.items():
            vb = ["--project", str(project)]
            if store != "local store":
                timed(voxelbase_command(*vb, "plan", "synth"))
            timed(voxelbase_command(*vb, "preprocess", "synth", "-c", "3d_fullres", "--workers", "2"))
        for mode in ("read", "augment_2"):
            for store, project in projects.items():
                best = max(
                    (run_voxelbase(project, mode, batches=args.batches) for _ in range(args.repeats)),
                    key=lambda r: r["patches"] / r["seconds"],
                )
                rows.append({"store": store, "mode": mode, "patches_per_s": best["patches"] / best["seconds"]})
        local = {r["mode"]: r["patches_per_s"] for r in rows if r["store"] == "local store"}
        for row in rows:
            row["vs_local"] = row["patches_per_s"] / local[row["mode"]]
        return rows
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["ddp", "dask", "s3"], choices=["ddp", "dask", "s3"])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="global batch (nnU-Net's 3d default)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30, help="batches per patch-stream measurement (s3)")
    args = parser.parse_args()
    results = {"machine": machine(), "cases": args.cases, "shape": args.shape}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        project = _prepare(work, args.cases, args.shape)
        if "dask" in args.part:
            rows = dask(project, args)
            print_table(f"preprocessing {args.cases} cases, fastest of {args.repeats}", rows)
            results["dask"] = rows
        if "s3" in args.part:
            rows = s3(work, args)
            print_table(f"patch stream, {args.batches} batches, best of {args.repeats}", rows)
            results["s3"] = rows
        if "ddp" in args.part:
            rows = ddp(project, work, args)
            print_table(f"DDP training on {args.device}, global batch {args.batch}", rows)
            results["ddp"] = rows
    write_results("scaling", results)


if __name__ == "__main__":
    main()
