"""Learning, measured: validation Dice of Voxelbase and nnU-Net v2 trained with the same budget on the same folds.

Both systems train `3d_fullres` on the same synthetic dataset (reference generator, 12 cases, seed 0) with the
same splits (nnU-Net is given Voxelbase's `splits` table as its `splits_final.json`), the same number of epochs,
iterations per epoch and validation iterations, on the CPU with the same torch thread count, and are scored by
their own end-of-fold validation (sliding window with mirroring, on the original geometry): nnU-Net's
`validation/summary.json` against Voxelbase's `metrics` table. nnU-Net's budget is set by a trainer variant
(three numbers on top of `nnUNetTrainer`) written into its own installation, never into this repository.

    python -m benchmarks.learning [--shape 24 48 48] [--folds 0 1 2] [--seeds 0] [--epochs 3] [--iterations 40]
                                  [--val-iterations 10] [--work DIR] [--skip-nnunet]

With several `--seeds`, both systems train every (fold, seed) pair: Voxelbase with `train.seed = 12345 + seed`,
nnU-Net with a trainer variant that seeds torch, numpy and random with the same number before building its network.
The paired difference (Voxelbase minus nnU-Net, per label, of each pair's mean case Dice) is reported with its mean
and a 95% t-interval: one run per fold cannot tell a real gap from seed noise, pairs can.

Results go to benchmarks/out/learning.json after every fold, so a long run can be read while it goes on; run
again with the same --work folder, folds already trained by either system are read, not retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
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

EXPERIMENT = "learning"
DATASET = "synth"
LABELS = {1: "organ", 2: "lesion"}

# nnUNetTrainer records its constructor's named arguments by inspecting the signature: spell them out.
TRAINER_TEMPLATE = '''"""Budget variant for a side-by-side benchmark: only the training length differs from nnUNetTrainer."""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {name}(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        import random

        import numpy as np

        super().__init__(plans, configuration, fold, dataset_json, device)
        torch.manual_seed({seed})
        np.random.seed({seed})
        random.seed({seed})
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iterations}
        self.num_val_iterations_per_epoch = {val_iterations}
'''


SEED_BASE = 12345  # Voxelbase's default train.seed; seed k of the benchmark is SEED_BASE + k on both sides


def experiment_name(seed: int) -> str:
    return EXPERIMENT if seed == 0 else f"{EXPERIMENT}_s{seed}"


def voxelbase_spec(path: Path, *, epochs: int, iterations: int, val_iterations: int, seed: int = 0) -> Path:
    path.write_text(
        f'name = "{experiment_name(seed)}"\ndataset = "{DATASET}"\n\n[train]\nconfigurations = ["3d_fullres"]\n'
        f"epochs = {epochs}\niterations_per_epoch = {iterations}\nval_iterations = {val_iterations}\n"
        f'device = "cpu"\ncheckpoint_every = {epochs}\nseed = {SEED_BASE + seed}\n'
    )
    return path


def install_trainer(*, epochs: int, iterations: int, val_iterations: int, seed: int = 0) -> str:
    """Write nnU-Net's trainer variant for this budget and seed into nnU-Net's own package (found by its class
    search)."""
    name = f"nnUNetTrainer_vb{epochs}x{iterations}x{val_iterations}" + (f"s{seed}" if seed else "")
    package = subprocess.run(
        [str(NNUNET_VENV / "bin" / "python"), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Path(package) / "training" / "nnUNetTrainer" / "variants" / "training_length" / f"{name}.py"
    text = TRAINER_TEMPLATE.format(
        name=name, epochs=epochs, iterations=iterations, val_iterations=val_iterations, seed=SEED_BASE + seed
    )
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return name


def our_splits(project: Path) -> list[dict]:
    from voxelbase.planning import load_splits

    splits = load_splits(project, DATASET)
    return [{"train": list(splits[k]["train"]), "val": list(splits[k]["val"])} for k in sorted(splits, key=int)]


def our_dice(project: Path, fold: int, experiment: str = EXPERIMENT) -> dict[int, list[float]]:
    """Per label, the validation Dice of each case of the newest finished run of this fold (None dropped)."""
    from voxelbase.catalog.queries import run_query

    rows = run_query(
        "SELECT label, dice FROM metrics WHERE run_id = (SELECT max(run_id) FROM runs WHERE experiment = ? "
        "AND fold = ? AND kind = 'train' AND status = 'finished')",
        project=project,
        params=[experiment, str(fold)],
    ).to_pylist()
    out: dict[int, list[float]] = {label: [] for label in LABELS}
    for row in rows:
        if row["dice"] is not None and not math.isnan(row["dice"]):
            out[row["label"]].append(row["dice"])
    return out


def our_epoch_seconds(project: Path, fold: int, experiment: str = EXPERIMENT) -> float:
    """Seconds spent in the epochs (training and validation iterations) of the newest finished run of a fold."""
    from voxelbase.catalog.queries import run_query

    return run_query(
        "SELECT sum(seconds) AS s FROM epochs WHERE run_id = (SELECT max(run_id) FROM runs WHERE experiment = ? "
        "AND fold = ? AND kind = 'train' AND status = 'finished')",
        project=project,
        params=[experiment, str(fold)],
    ).to_pylist()[0]["s"]


def nnunet_fold(results: Path, trainer: str, fold: int) -> Path:
    return results / f"Dataset{NNUNET_ID:03d}_Synth" / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def nnunet_epoch_seconds(folder: Path) -> float:
    """The sum of the "Epoch time: X s" lines of nnU-Net's newest training log."""
    log = sorted(folder.glob("training_log_*.txt"))[-1]
    return sum(
        float(line.split("Epoch time:")[1].split()[0]) for line in log.read_text().splitlines() if "Epoch time:" in line
    )


def nnunet_dice(folder: Path) -> dict[int, list[float]]:
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    out: dict[int, list[float]] = {label: [] for label in LABELS}
    for case in summary["metric_per_case"]:
        for label in LABELS:
            dice = case["metrics"][str(label)]["Dice"]
            if dice is not None and not math.isnan(dice):
                out[label].append(dice)
    return out


def spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _run_means(runs: dict) -> dict[str, dict[int, float]]:
    """'fold:seed' -> label -> mean case Dice of that run (labels with no scorable case left out)."""
    return {
        key: {int(label): statistics.fmean(values) for label, values in per_label.items() if values}
        for key, per_label in runs.items()
    }


def paired_difference(ours: dict, theirs: dict, label: int) -> dict | None:
    """Mean of the per-pair differences (Voxelbase - nnU-Net) over pairs both systems finished, with a 95%
    t-interval (scipy's t quantile); None without pairs."""
    from scipy.stats import t as student_t

    mine, other = _run_means(ours), _run_means(theirs)
    diffs = [mine[k][label] - other[k][label] for k in mine if k in other and label in mine[k] and label in other[k]]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"n_pairs": 1, "mean": mean, "ci95": None}
    half = student_t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"n_pairs": len(diffs), "mean": mean, "ci95": [mean - half, mean + half]}


def summarize(payload: dict) -> list[dict]:
    rows = []
    for label, name in LABELS.items():
        row = {"label": f"{label} {name}"}
        for system in ("voxelbase", "nnunet"):
            means = [m[label] for m in _run_means(payload[system]["dice_per_run"]).values() if label in m]
            mean, std = spread(means)
            row[system] = "-" if mean is None else f"{mean:.3f} ± {std:.3f} (n={len(means)})"
        paired = paired_difference(payload["voxelbase"]["dice_per_run"], payload["nnunet"]["dice_per_run"], label)
        if paired is None:
            row["paired_difference"] = "-"
        elif paired["ci95"] is None:
            row["paired_difference"] = f"{paired['mean']:+.3f} (1 pair)"
        else:
            lo, hi = paired["ci95"]
            row["paired_difference"] = f"{paired['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({paired['n_pairs']} pairs)"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 48, 48])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seed k trains with seed 12345 + k")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--val-iterations", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one).")
    parser.add_argument("--skip-nnunet", action="store_true")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="voxelbase-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = synth(work / "raw", "--cases", "12", "--seed", "0", "--shape", *map(str, args.shape))
    project = work / "voxelbase"
    threads = os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": str(threads), "VOXELBASE_PROJECT": str(project)}
    budget = {"epochs": args.epochs, "iterations": args.iterations, "val_iterations": args.val_iterations}
    payload: dict = {
        "dataset": f"synth.py --cases 12 --seed 0 --shape {' '.join(map(str, args.shape))}",
        "configuration": "3d_fullres",
        "budget": budget,
        "folds": args.folds,
        "seeds": args.seeds,
        "torch_threads": threads,
        "std": "sample standard deviation over (fold, seed) runs of the per-run mean case Dice",
        "paired_difference": "Voxelbase - nnU-Net per (fold, seed) pair: mean and 95% t-interval",
        "epoch_seconds": "sum of per-epoch wall seconds (training + validation iterations) on a shared CPU: noisy",
        "voxelbase": {"dice_per_run": {}, "epoch_seconds_per_run": {}},
        "nnunet": {"dice_per_run": {}, "epoch_seconds_per_run": {}},
    }

    if not (project / "catalog.duckdb").exists():
        timed(voxelbase_command("ingest", str(raw), "--name", DATASET), env=env)
        timed(voxelbase_command("plan", DATASET), env=env)
    timed(voxelbase_command("preprocess", DATASET, "--configuration", "3d_fullres"), env=env)
    from voxelbase.planning import load_plan

    plan = load_plan(project, DATASET, configuration="3d_fullres")
    payload["voxelbase"]["plan"] = {"patch_size": plan.patch_size, "batch_size": plan.batch_size}

    run_nnunet = not args.skip_nnunet and have_nnunet()
    if run_nnunet:
        nn_env = nnunet_env(work / "nnunet", raw) | {"OMP_NUM_THREADS": str(threads)}
        preprocessed = Path(nn_env["nnUNet_preprocessed"]) / f"Dataset{NNUNET_ID:03d}_Synth"
        if not (preprocessed / "nnUNetPlans.json").exists():
            timed(
                nnunet_command("nnUNetv2_plan_and_preprocess", "-d", str(NNUNET_ID), "-c", "3d_fullres", "-np", "2"),
                env=nn_env,
            )
        (preprocessed / "splits_final.json").write_text(json.dumps(our_splits(project), indent=1))
        nn_plan = json.loads((preprocessed / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
        payload["nnunet"]["plan"] = {"patch_size": nn_plan["patch_size"], "batch_size": nn_plan["batch_size"]}
        trainers = {seed: install_trainer(**budget, seed=seed) for seed in args.seeds}
        payload["nnunet"]["trainers"] = trainers
    elif not args.skip_nnunet:
        print(f"nnU-Net not found in {NNUNET_VENV}: Voxelbase only")

    for seed in args.seeds:  # a run either system has finished before (same work folder) is not trained again
        spec = voxelbase_spec(work / f"learning_s{seed}.toml", **budget, seed=seed)
        for fold in args.folds:
            key = f"{fold}:{seed}"
            timed(voxelbase_command("train", str(spec), "--fold", str(fold)), env=env)
            name = experiment_name(seed)
            payload["voxelbase"]["epoch_seconds_per_run"][key] = our_epoch_seconds(project, fold, name)
            payload["voxelbase"]["dice_per_run"][key] = our_dice(project, fold, name)
            if run_nnunet:
                folder = nnunet_fold(Path(nn_env["nnUNet_results"]), trainers[seed], fold)
                if not (folder / "validation" / "summary.json").exists():
                    command = nnunet_command(
                        "nnUNetv2_train", str(NNUNET_ID), "3d_fullres", str(fold), "-tr", trainers[seed]
                    )
                    timed([*command, "-device", "cpu"], env=nn_env)
                payload["nnunet"]["epoch_seconds_per_run"][key] = nnunet_epoch_seconds(folder)
                payload["nnunet"]["dice_per_run"][key] = nnunet_dice(folder)
            payload["table"] = summarize(payload)
            write_results("learning", payload)
            print_table(f"validation Dice after fold {fold}, seed {seed} (mean ± std over runs)", payload["table"])


if __name__ == "__main__":
    main()
