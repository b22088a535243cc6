"""Patch-stream throughput (patches per second), side by side with nnU-Net v2's data loader and augmentation.

    python -m benchmarks.loader [--cases 12] [--batches 60] [--repeats 3]

Same data for both (the reference generator, `--seed 0`), each preprocessed by its own tool (not timed), each at
its own plan's 3d_fullres patch and batch size (the same numbers on this data). Modes:

- `read`: batches at the final patch size, no augmentation (what a validation loader does), one thread.
- `augment_1`: read at the larger augmentation patch plus the full default augmentation, one worker.
- `augment_2`: the same with two workers (Voxelbase: two threads of one process; nnU-Net: two processes of its
  NonDetMultiThreadedAugmenter, as nnUNetTrainer makes them).
- `augment_cuda` (Voxelbase only, when CUDA is present): reading in two CPU threads, augmentation on the GPU.

Each measurement runs in its own process pinned with `taskset` to as many CPU cores as it has workers, with torch
(and every BLAS/OpenMP pool) limited to one thread per worker, so patches/s per core is comparable. nnU-Net's side
is nnUNetDataLoader with nnUNetTrainer.get_training_transforms (deep-supervision targets included, as it trains),
run by its own Python. Voxelbase's is PatchStream with augmentation in its workers. Warm-up batches (and queue
filling) are excluded; the best of `--repeats` alternating runs is reported, the median is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    NNUNET_ID,
    NNUNET_VENV,
    have_nnunet,
    nnunet_command,
    nnunet_env,
    print_table,
    synth,
    timed,
    voxelbase_command,
    write_results,
)

MODES = {"read": 1, "augment_1": 1, "augment_2": 2}  # mode -> CPU cores (= workers)

NNUNET_SCRIPT = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

args = json.loads(sys.argv[1])
torch.set_num_threads(1)
root = os.path.join(os.environ["nnUNet_preprocessed"], args["dataset"])
with open(os.path.join(root, "nnUNetPlans.json")) as f:
    plans = json.load(f) | {"continue_training": False}
with open(os.path.join(root, "dataset.json")) as f:
    dataset_json = json.load(f)
trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
rotation, dummy_2d, initial, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
cm = trainer.configuration_manager
patch = cm.patch_size
folder = os.path.join(root, "nnUNetPlans_3d_fullres")
data = infer_dataset_class(folder)(folder)
transforms, read = None, patch
if args["augment"]:
    read = initial
    transforms = trainer.get_training_transforms(
        patch, rotation, trainer._get_deep_supervision_scales(), mirror, dummy_2d,
        use_mask_for_norm=cm.use_mask_for_norm, is_cascaded=False,
        foreground_labels=trainer.label_manager.foreground_labels, regions=None,
        ignore_label=trainer.label_manager.ignore_label)
loader = nnUNetDataLoader(data, cm.batch_size, read, patch, trainer.label_manager,
                          oversample_foreground_percent=trainer.oversample_foreground_percent,
                          sampling_probabilities=None, pad_sides=None, transforms=transforms)
if args["workers"] <= 1:
    gen = SingleThreadedAugmenter(loader, None)
else:
    gen = NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=args["workers"],
                                       num_cached=max(6, args["workers"] // 2), seeds=None, pin_memory=False,
                                       wait_time=0.002)
cpu = time.process_time()  # CPU per patch over every batch made (warm-up included): nothing made is left out
for _ in range(args["warmup"]):
    next(gen)
start = time.perf_counter()
for _ in range(args["batches"]):
    next(gen)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print("RESULT " + json.dumps({"seconds": seconds, "cpu_seconds": cpu if args["workers"] <= 1 else None, "cpu_patches": (args["warmup"] + args["batches"]) * cm.batch_size, "patches": args["batches"] * cm.batch_size,
                              "batch_size": cm.batch_size, "patch_size": list(patch),
                              "read_size": [int(v) for v in read]}), flush=True)
if args["workers"] > 1:
    gen._finish()
"""


def _pin(cores: int) -> list[str]:
    """taskset to the first `cores` CPUs when available, so a run uses no more cores than it is credited with."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= cores:
        return ["taskset", "-c", ",".join(str(i) for i in range(cores))]
    return []


def _single_thread_env() -> dict:
    return {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _result(output: subprocess.CompletedProcess, what: str) -> dict:
    line = next((x for x in output.stdout.splitlines() if x.startswith("RESULT ")), None)
    if output.returncode != 0 or line is None:
        raise RuntimeError(f"{what} failed:\n{output.stdout[-3000:]}\n{output.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def run_nnunet(env: dict, mode: str, *, batches: int) -> dict:
    cores = MODES[mode]
    args = {
        "dataset": f"Dataset{NNUNET_ID:03d}_Synth",
        "augment": mode != "read",
        "workers": cores,
        "warmup": 4 + 4 * cores,
        "batches": batches,
    }
    python = str(NNUNET_VENV / "bin" / "python")
    command = [*_pin(cores), python, "-c", NNUNET_SCRIPT, json.dumps(args)]
    output = subprocess.run(command, env={**os.environ, **env, **_single_thread_env()}, capture_output=True, text=True)
    return _result(output, f"nnU-Net loader ({mode})")


def run_voxelbase(
    project: Path, mode: str, *, batches: int, workers: int | None = None, processes: bool = False
) -> dict:
    """One measurement; `workers` (default: the mode's cores) threads, or processes with `processes`."""
    cores = workers or (2 if mode == "augment_cuda" else MODES[mode])
    args = {"project": str(project), "mode": mode, "workers": cores, "batches": batches, "warmup": 4 + 4 * cores}
    args["processes"] = processes
    command = [*_pin(cores), sys.executable, "-m", "benchmarks.loader", "--measure", json.dumps(args)]
    output = subprocess.run(command, env={**os.environ, **_single_thread_env()}, capture_output=True, text=True)
    return _result(output, f"Voxelbase loader ({mode})")


def measure(args: dict) -> None:
    """In a pinned child process: time Voxelbase's patch stream in one mode and print a RESULT line."""
    import torch

    from voxelbase.planning import load_plan
    from voxelbase.project import Project
    from voxelbase.store import stage_name
    from voxelbase.training.augment import AugmentConfig, initial_patch_size, use_dummy_2d
    from voxelbase.training.loader import PatchStream, StreamSettings, augment_batch
    from voxelbase.training.patches import load_cases

    torch.set_num_threads(1)  # per worker thread: each torch op runs on the thread that calls it
    project = Project.resolve(args["project"])
    plan = load_plan(project, "synth", configuration="3d_fullres")
    stage = stage_name(plan.plan, "3d_fullres")
    ids = sorted(
        p.name for p in (project.store_path / "synth" / stage).iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    cases = load_cases(project, "synth", plan=plan.plan, configuration="3d_fullres", case_ids=ids)
    patch = tuple(plan.patch_size)
    augment = args["mode"] != "read"
    config = AugmentConfig()
    dummy = use_dummy_2d(patch, config)
    settings = StreamSettings(
        batch_size=int(plan.batch_size),
        patch_size=patch,
        read_size=initial_patch_size(patch, config, dummy_2d=dummy) if augment else patch,
        oversample_foreground=0.33,
        seed=0,
        num_classes=int(plan.num_classes),
        augment=config if augment else None,
        dummy_2d=dummy,
    )
    on_gpu = args["mode"] == "augment_cuda"
    device = torch.device("cuda") if on_gpu else None
    stream = PatchStream(
        project,
        "synth",
        stage=stage,
        cases=cases,
        settings=settings,
        workers=args["workers"],
        prefetch=2 * args["workers"] + 2,
        augment_in_workers=not on_gpu,
        pin_memory=on_gpu,
        processes=args.get("processes", False),
    )
    warmup, batches = args["warmup"], args["batches"]
    cpu = time.process_time()  # CPU per patch over every batch made (warm-up included): nothing made is left out
    if args["mode"] == "read":
        for index in range(warmup):
            stream.read(index)
        start = time.perf_counter()
        for index in range(warmup, warmup + batches):
            stream.read(index)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    else:
        iterator = stream.iterate(0, warmup + batches)
        for _ in range(warmup):
            batch = next(iterator)
            if on_gpu:
                augment_batch(batch, settings, device=device)
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in iterator:
            if on_gpu:
                batch = augment_batch(batch, settings, device=device)
        if on_gpu:
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "cpu_patches": (warmup + batches) * settings.batch_size,
                "patches": batches * settings.batch_size,
                "batch_size": settings.batch_size,
                "patch_size": list(patch),
                "read_size": list(settings.read_size),
            }
        ),
        flush=True,
    )


def _rate(result: dict) -> float:
    return result["patches"] / result["seconds"]


def _cpu_rate(result: dict) -> float | None:
    """Patches per CPU-second (all threads of the process): per-core efficiency, robust to a busy machine."""
    return result["cpu_patches"] / result["cpu_seconds"] if result.get("cpu_seconds") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(json.loads(args.measure))
        return
    import torch

    modes = list(MODES) + (["augment_cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw = synth(work / "synth", "--cases", str(args.cases), "--seed", "0")
        project = work / "project"
        vb = ["--project", str(project)]
        timed(voxelbase_command(*vb, "ingest", str(raw), "--name", "synth", "--workers", "2"))
        timed(voxelbase_command(*vb, "plan", "synth"))
        timed(voxelbase_command(*vb, "preprocess", "synth", "--configuration", "3d_fullres", "--workers", "2"))
        env = None
        if have_nnunet():
            env = nnunet_env(work / "nnunet", raw)
            timed(
                nnunet_command("nnUNetv2_plan_and_preprocess", "-d", str(NNUNET_ID), "-c", "3d_fullres", "-np", "2"),
                env=env,
            )
        ours: dict[str, list[dict]] = {m: [] for m in modes}
        theirs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.repeats):
            for mode in modes:
                ours[mode].append(run_voxelbase(project, mode, batches=args.batches))
                if env is not None and mode in MODES:
                    theirs[mode].append(run_nnunet(env, mode, batches=args.batches))
    rows, payload = [], {}
    for mode in modes:
        cores = MODES.get(mode, 2)
        best = max(_rate(r) for r in ours[mode])
        row = {
            "mode": mode,
            "cores": cores,
            "voxelbase_pps": best,
            "voxelbase_pps_per_core": best / cores,
            "voxelbase_per_cpu_s": max(_cpu_rate(r) for r in ours[mode]),
        }
        entry = {
            "cores": cores,
            "voxelbase": {
                "best_pps": best,
                "median_pps": statistics.median(_rate(r) for r in ours[mode]),
                "runs": ours[mode],
            },
        }
        if theirs.get(mode):
            their_best = max(_rate(r) for r in theirs[mode])
            row |= {"nnunet_pps": their_best, "nnunet_pps_per_core": their_best / cores, "ratio": best / their_best}
            their_cpu = [c for c in map(_cpu_rate, theirs[mode]) if c]
            if their_cpu:
                row |= {"nnunet_per_cpu_s": max(their_cpu), "cpu_ratio": row["voxelbase_per_cpu_s"] / max(their_cpu)}
            entry["nnunet"] = {
                "best_pps": their_best,
                "median_pps": statistics.median(_rate(r) for r in theirs[mode]),
                "runs": theirs[mode],
            }
            entry["ratio"] = best / their_best
        rows.append(row)
        payload[mode] = entry
    columns = [
        "mode", "cores", "voxelbase_pps", "nnunet_pps", "ratio", "voxelbase_pps_per_core", "nnunet_pps_per_core",
        "voxelbase_per_cpu_s", "nnunet_per_cpu_s", "cpu_ratio",
    ]  # fmt: skip
    table = [{c: row.get(c, "") for c in columns} for row in rows]
    print_table(
        "patches per second (best of the runs), same pinned cores for both; ratio > 1: Voxelbase faster; "
        "per_cpu_s: patches per CPU-second of the measuring process (nnU-Net: single-process modes only)",
        table,
    )
    write_results(
        "loader",
        {
            "cases": args.cases,
            "batches": args.batches,
            "repeats": args.repeats,
            "pinned_with_taskset": bool(_pin(1)),
            "modes": payload,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
