"""One prepared GPU check: build a small project without SimpleITK, train 2 epochs, predict, time a training step
and the loader's GPU augmentation, and print one compact summary. A few minutes on one GPU.

    python -m benchmarks.gpu_smoke --device cuda [--out DIR] [--cases 12] [--iterations 50]
    python -m benchmarks.gpu_smoke --device cpu --quick      # the same steps on a tiny project (what CI tests)

Steps, each timed and summarised (the JSON of the summary goes to DIR/gpu_smoke.json with --out):
1. project: `--cases` demo CT cases (voxelbase.ingest.demo, about 48x96x96 voxels) are written as .npz files (array +
   geometry) and ingested through the real ingest pipeline, whose file reader is swapped for a NumPy one in this
   process only; then planned and preprocessed (3d_fullres) as usual. Nothing is shipped and SimpleITK is never
   imported, so the same code runs where only torch and the packages below are installed.
2. train: `train_and_validate` on fold 0, 2 epochs of `--iterations`, amp bf16 on CUDA, float32 on the CPU (on CUDA: augmentation on the GPU, pinned
   batches), then the end-of-fold validation (sliding window on the device).
   Then fold 1 on every GPU with `--world-size` (DDP, NCCL; two GPUs or more, skipped on one), iterations/s.
3. sliding window: the trained network on one preprocessed case, device vs CPU float32 logits (max |diff| and
   argmax agreement, amp off and on), and seconds per case with and without mirroring on a volume twice the patch.
4. train step: `benchmarks.train_step`'s Voxelbase worker on this project's plan, plain and channels-last.
5. loader: `benchmarks.loader`'s measurement on this project: augment_1 / augment_2 (CPU threads) and, on CUDA,
   augment_cuda (reading in two CPU threads, augmentation on the GPU), in patches per second; then CPU
   augmentation in 4 and 8 worker threads vs worker processes (PatchStream(processes=True)), each pinned to as
   many cores, to show whether threads stop scaling (the GIL) where there are more cores than here.

On the GPU machine (Python 3.12; torch, numpy, scipy, pyarrow, tqdm, click, matplotlib, pyyaml are there) carry
these wheels, fetched here into the git-ignored folder .whl (see the device notes for the pip download flags):
duckdb==2.0.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 (duckdb is ~20 MB, the rest small).
There: `python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site`,
then `PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_smoke --device cuda --out $OUT`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "numpy", "scipy", "duckdb", "zarr", "numcodecs", "pyarrow", "jsonschema", "tqdm", "click")
DATASET = "synth"  # the name benchmarks.loader measures
CONFIGURATION = "3d_fullres"


def check_imports() -> dict:
    """Versions of what the engine needs; a clear exit naming every missing package."""
    import importlib

    versions, missing = {}, []
    for name in NEEDED:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"missing packages: {', '.join(missing)} (carry their wheels; see this script's header)")
    return versions


@contextlib.contextmanager
def timed(summary: dict, key: str):
    start = time.perf_counter()
    yield
    summary.setdefault("seconds", {})[key] = round(time.perf_counter() - start, 2)


# ---------------------------------------------------------------- 1. the project, without SimpleITK


def _read_npz(path: Path, *, four_d: bool = False):
    """The ingest reader's contract, for the .npz files written below: (array (Z, Y, X), Geometry)."""
    from voxelbase.images import Geometry

    with np.load(path) as data:
        geometry = Geometry(
            tuple(float(v) for v in data["spacing"]),
            tuple(float(v) for v in data["origin"]),
            tuple(float(v) for v in data["direction"]),
        )
        return data["array"], geometry


def make_project(work: Path, *, cases: int, shape: tuple[int, int, int], workers: int):
    """Demo CT cases as .npz, ingested (NumPy reader), planned and preprocessed; returns the Project."""
    import voxelbase.images
    from voxelbase.ingest import ingest_dataset
    from voxelbase.ingest.demo import LABELS, demo_case
    from voxelbase.planning import plan_dataset
    from voxelbase.preprocessing.dataset import preprocess_dataset
    from voxelbase.project import Project

    raw = work / "raw"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    identity = np.eye(3).ravel()
    for index in range(cases):
        image, label, spacing = demo_case(rng, shape)
        geometry = {"spacing": spacing, "origin": np.zeros(3), "direction": identity}
        np.savez(raw / "imagesTr" / f"case_{index:03d}_0000.npz", array=image, **geometry)
        np.savez(raw / "labelsTr" / f"case_{index:03d}.npz", array=label, **geometry)
    description = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": cases, "file_ending": ".npz"}
    (raw / "dataset.json").write_text(json.dumps(description))

    project = Project.resolve(work / "project")
    original, voxelbase.images.read_image = voxelbase.images.read_image, _read_npz
    try:  # one worker: ingest reads in this process, the only one whose reader is swapped
        ingest_dataset(raw, name=DATASET, project=project, workers=1)
    finally:
        voxelbase.images.read_image = original
    plan_dataset(DATASET, project=project)
    preprocess_dataset(DATASET, configuration=CONFIGURATION, workers=workers, project=project, progress=False)
    return project


# ---------------------------------------------------------------- 2. training


def train(project, *, device: str, iterations: int, val_iterations: int, workers: int) -> dict:
    from voxelbase.catalog.queries import run_query
    from voxelbase.spec import parse_spec
    from voxelbase.workflow.train import train_and_validate

    # bf16 autocast is what a GPU trains with; on a CPU without bf16 instructions a 3d convolution in bf16 runs
    # tens of times slower than in float32, so the CPU check trains in float32 (sliding_window still runs bf16)
    amp = "bf16" if device.startswith("cuda") else "off"
    spec = parse_spec(
        f'name = "gpu_smoke"\ndataset = "{DATASET}"\n[train]\nfolds = [0]\nepochs = 2\n'
        f"iterations_per_epoch = {iterations}\nval_iterations = {val_iterations}\nnum_workers = {workers}\n"
        f'amp = "{amp}"\ncheckpoint_every = 1\n[predict]\ntta = true\n'
    )
    result = train_and_validate(project, spec, configuration=CONFIGURATION, fold="0", device=device)
    epochs = run_query(
        "SELECT epoch, train_loss, val_loss, val_dice, seconds FROM epochs WHERE run_id = ? ORDER BY epoch",
        project=project,
        params=[result.run_id],
    ).to_pylist()
    dice = run_query(
        "SELECT avg(dice) AS dice, count(*) AS n FROM metrics WHERE run_id = ?", project=project, params=[result.run_id]
    ).to_pylist()[0]
    return {
        "status": result.status,
        "run_dir": str(result.run_dir),
        "epochs": [
            {
                "epoch": e["epoch"],
                "train_loss": round(e["train_loss"], 4),
                "val_loss": round(e["val_loss"], 4),
                "seconds": round(e["seconds"], 2),
            }
            for e in epochs
        ],
        "validation_metric_rows": dice["n"],
        "validation_mean_dice": None if dice["dice"] is None else round(dice["dice"], 4),
    }


def ddp(project, *, device: str, iterations: int, workers: int) -> dict:
    """Fold 1 on every GPU (`--world-size` = the GPU count, NCCL) at the same global batch as fold 0's single-GPU
    run: iterations/s of both. Needs two GPUs or more."""
    import torch

    from voxelbase.catalog.queries import run_query
    from voxelbase.spec import parse_spec
    from voxelbase.workflow.train import train_and_validate

    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s): DDP needs two or more"}
    spec = parse_spec(
        f'name = "gpu_smoke"\ndataset = "{DATASET}"\n[train]\nfolds = [1]\nepochs = 2\n'
        f"iterations_per_epoch = {iterations}\nval_iterations = 2\nnum_workers = {workers}\n"
        'amp = "bf16"\nvalidate = false\n'
    )
    result = train_and_validate(project, spec, configuration=CONFIGURATION, fold="1", device=device, world_size=gpus)
    seconds = run_query(
        "SELECT fold, world_size, epochs.seconds FROM epochs JOIN runs USING (run_id) WHERE epoch = 1 ORDER BY fold",
        project=project,
    ).to_pylist()
    return {
        "status": result.status,
        "world_size": gpus,
        "iterations_per_s": {f"fold {r['fold']} x{r['world_size']}": iterations / r["seconds"] for r in seconds},
    }


# ---------------------------------------------------------------- 3. sliding window


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sliding_window(project, run_dir: Path, *, device: str, scale: int = 2) -> dict:
    import torch

    from voxelbase.inference.sliding_window import predict_logits
    from voxelbase.networks import load_trained_model
    from voxelbase.planning import load_plan
    from voxelbase.store import read_case, stage_name

    device = torch.device(device)
    network = load_trained_model(run_dir / "checkpoint_final.pt", device=device).network
    plan = load_plan(project, DATASET, configuration=CONFIGURATION)
    patch = tuple(plan.patch_size)
    stage = stage_name(plan.plan, CONFIGURATION)
    case_id = min(
        p.name for p in (project.store_path / DATASET / stage).iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    image, _ = read_case(project, DATASET, case_id, stage=stage)
    image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    out: dict = {"patch_size": list(patch), "case_shape": list(image.shape[1:])}

    reference_net = load_trained_model(run_dir / "checkpoint_final.pt", device=torch.device("cpu")).network
    reference = predict_logits(reference_net, image, patch_size=patch, mirror_axes=None, device="cpu", amp=False)
    for amp in (False, True):
        logits = predict_logits(network, image, patch_size=patch, mirror_axes=None, device=device, amp=amp)
        out[f"amp_{'on' if amp else 'off'}_vs_cpu"] = {
            "max_abs_diff": float((logits - reference).abs().max()),
            "logit_range": float(reference.abs().max()),
            "argmax_agreement": float((logits.argmax(0) == reference.argmax(0)).double().mean()),
        }
    big = torch.randn((image.shape[0], *[scale * p for p in patch]), generator=torch.Generator().manual_seed(0))
    for mirror in (None, (0, 1, 2)):
        predict_logits(network, big[:, : patch[0], : patch[1], : patch[2]], patch_size=patch, device=device)  # warm
        _sync(device)
        start = time.perf_counter()
        predict_logits(network, big, patch_size=patch, mirror_axes=mirror, device=device)
        _sync(device)
        out[f"seconds_{'tta' if mirror else 'no_tta'}"] = round(time.perf_counter() - start, 3)
    out["volume"] = list(big.shape[1:])
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


# ---------------------------------------------------------------- 4. train step (benchmarks.train_step's worker)


def nnunet_style_plans(plan: dict, path: Path) -> Path:
    """This project's plan in the shape benchmarks.train_step reads (nnU-Net's plans JSON)."""
    arch = plan.architecture.to_dict()
    residual = arch["network"] == "resenc_unet"
    kwargs = {
        "n_stages": arch["n_stages"],
        "features_per_stage": arch["features_per_stage"],
        "kernel_sizes": arch["kernel_sizes"],
        "strides": arch["strides"],
        "n_blocks_per_stage" if residual else "n_conv_per_stage": arch["n_conv_per_stage"],
        "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
    }
    name = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    configuration = {
        "patch_size": plan.patch_size,
        "batch_size": plan.batch_size,
        "batch_dice": plan.batch_dice,
        "architecture": {"network_class_name": name, "arch_kwargs": kwargs},
    }
    path.write_text(json.dumps({"configurations": {CONFIGURATION: configuration}}))
    return path


def train_step(project, work: Path, *, device: str, iters: int, warmup: int) -> dict:
    from voxelbase.planning import load_plan

    plan = load_plan(project, DATASET, configuration=CONFIGURATION)
    plans = nnunet_style_plans(plan, work / "plans.json")
    out = {"patch_size": plan.patch_size, "batch_size": plan.batch_size}
    for variant, flags in (("plain", []), ("channels_last", ["--channels-last"])):
        command = [
            sys.executable, "-m", "benchmarks.train_step", "--worker", "--no-nnunet", "--plans", str(plans),
            "--device", device, "--num-classes", str(plan.num_classes), "--in-channels", str(plan.n_channels),
            "--iters", str(iters), "--warmup", str(warmup), "--threads", str(min(4, os.cpu_count() or 1)), *flags,
        ]  # fmt: skip
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            out[variant] = {"error": proc.stderr[-2000:]}
            continue
        times = sorted(json.loads(line[len("RESULT ") :])["times"]["voxelbase"])
        out[variant] = {"median_s": round(times[len(times) // 2], 4), "best_s": round(times[0], 4)}
    return out


# ---------------------------------------------------------------- 5. loader (benchmarks.loader's measurement)


def loader(project, *, device: str, batches: int, scaling: tuple[int, ...]) -> dict:
    """The benchmark's modes, then CPU augmentation in N worker threads vs N worker processes (N in `scaling`)."""
    from benchmarks.loader import run_voxelbase

    runs = [(mode, mode, None, False) for mode in ("augment_1", "augment_2")]
    if device.startswith("cuda"):
        runs.append(("augment_cuda", "augment_cuda", None, False))
    for n in (n for n in scaling if n <= (os.cpu_count() or 1)):
        runs += [(f"threads_{n}", "augment_2", n, False), (f"processes_{n}", "augment_2", n, True)]
    out = {}
    for name, mode, workers, processes in runs:
        try:
            result = run_voxelbase(project.root, mode, batches=batches, workers=workers, processes=processes)
        except RuntimeError as error:
            out[name] = {"error": str(error)[-2000:]}
            continue
        out[name] = {
            "patches_per_s": round(result["patches"] / result["seconds"], 2),
            "patch_size": result["patch_size"],
            "read_size": result["read_size"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, help="folder for gpu_smoke.json")
    parser.add_argument("--work", type=Path, help="keep the project here (default: a temporary folder)")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--quick", action="store_true", help="tiny volumes and few iterations (a CPU check)")
    args = parser.parse_args()
    summary: dict = {"device": args.device, "versions": check_imports()}
    import torch

    if args.device.startswith("cuda"):
        summary["gpu"] = torch.cuda.get_device_name(torch.device(args.device)) if torch.cuda.is_available() else None
    quick = args.quick
    shape = (16, 32, 32) if quick else (48, 96, 96)
    cases = min(args.cases, 5) if quick else args.cases
    iterations, val_iterations = (2, 1) if quick else (args.iterations, 10)
    workers = 1 if quick else min(4, os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with timed(summary, "project"):
            project = make_project(work, cases=cases, shape=shape, workers=workers)
        with timed(summary, "train"):
            summary["train"] = train(
                project, device=args.device, iterations=iterations, val_iterations=val_iterations, workers=workers
            )
        run_dir = Path(summary["train"]["run_dir"])
        with timed(summary, "ddp"):
            summary["ddp"] = ddp(project, device=args.device, iterations=iterations, workers=workers)
        with timed(summary, "sliding_window"):
            summary["sliding_window"] = sliding_window(project, run_dir, device=args.device, scale=1 if quick else 2)
        with timed(summary, "train_step"):
            summary["train_step"] = train_step(
                project, work, device=args.device, iters=1 if quick else 10, warmup=0 if quick else 3
            )
        with timed(summary, "loader"):
            summary["loader"] = loader(
                project, device=args.device, batches=2 if quick else 40, scaling=(2,) if quick else (4, 8)
            )

    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_smoke.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
