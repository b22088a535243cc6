"""Learning, measured: validation Dice of Voxelbase and nnU-Net v2 trained with the same budget on the same folds.

Both systems train `3d_fullres` on the same synthetic dataset (reference generator, 12 cases, seed 0) with the
same splits (nnU-Net is given Voxelbase's `splits` table as its `splits_final.json`), the same number of epochs,
iterations per epoch and validation iterations, on the CPU with the same torch thread count, and are scored by
their own end-of-fold validation (sliding window with mirroring, on the original geometry): nnU-Net's
`validation/summary.json` against Voxelbase's `metrics` table. nnU-Net's budget is set by a trainer variant
(three numbers on top of `nnUNetTrainer`) written into its own installation, never into this repository.

    python -m benchmarks.learning [--shape 24 48 48] [--folds 0 1 2] [--epochs 3] [--iterations 40]
                                  [--val-iterations 10] [--work DIR] [--skip-nnunet]

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
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iterations}
        self.num_val_iterations_per_epoch = {val_iterations}
'''


def voxelbase_spec(path: Path, *, epochs: int, iterations: int, val_iterations: int) -> Path:
    path.write_text(
        f'name = "{EXPERIMENT}"\ndataset = "{DATASET}"\n\n[train]\nconfigurations = ["3d_fullres"]\n'
        f"epochs = {epochs}\niterations_per_epoch = {iterations}\nval_iterations = {val_iterations}\n"
        f'device = "cpu"\ncheckpoint_every = {epochs}\n'
    )
    return path


def install_trainer(*, epochs: int, iterations: int, val_iterations: int) -> str:
    """Write nnU-Net's trainer variant for this budget into nnU-Net's own package (found by its class search)."""
    name = f"nnUNetTrainer_vb{epochs}x{iterations}x{val_iterations}"
    package = subprocess.run(
        [str(NNUNET_VENV / "bin" / "python"), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Path(package) / "training" / "nnUNetTrainer" / "variants" / "training_length" / f"{name}.py"
    text = TRAINER_TEMPLATE.format(name=name, epochs=epochs, iterations=iterations, val_iterations=val_iterations)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return name


def our_splits(project: Path) -> list[dict]:
    from engine.planning import load_splits

    splits = load_splits(project, DATASET)
    return [{"train": list(splits[k]["train"]), "val": list(splits[k]["val"])} for k in sorted(splits, key=int)]


def our_dice(project: Path, fold: int) -> dict[int, list[float]]:
    """Per label, the validation Dice of each case of the newest finished run of this fold (None dropped)."""
    from engine.catalog.queries import run_query

    rows = run_query(
        "SELECT label, dice FROM metrics WHERE run_id = (SELECT max(run_id) FROM runs WHERE experiment = ? "
        "AND fold = ? AND kind = 'train' AND status = 'finished')",
        project=project,
        params=[EXPERIMENT, str(fold)],
    ).to_pylist()
    out: dict[int, list[float]] = {label: [] for label in LABELS}
    for row in rows:
        if row["dice"] is not None and not math.isnan(row["dice"]):
            out[row["label"]].append(row["dice"])
    return out


def our_epoch_seconds(project: Path, fold: int) -> float:
    """Seconds spent in the epochs (training and validation iterations) of the newest finished run of a fold."""
    from engine.catalog.queries import run_query

    return run_query(
        "SELECT sum(seconds) AS s FROM epochs WHERE run_id = (SELECT max(run_id) FROM runs WHERE experiment = ? "
        "AND fold = ? AND kind = 'train' AND status = 'finished')",
        project=project,
        params=[EXPERIMENT, str(fold)],
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


def fold_means(per_fold: dict[int, dict[int, list[float]]]) -> dict[int, list[float]]:
    """Per label, the mean case Dice of each fold (a fold with no scorable case is left out)."""
    return {label: [statistics.fmean(cases[label]) for cases in per_fold.values() if cases[label]] for label in LABELS}


def spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(payload: dict) -> list[dict]:
    rows = []
    for label, name in LABELS.items():
        row = {"label": f"{label} {name}"}
        for system in ("voxelbase", "nnunet"):
            folds = payload[system]["dice_per_fold"]
            mean, std = spread(fold_means({int(k): {int(a): b for a, b in v.items()} for k, v in folds.items()})[label])
            row[system] = "-" if mean is None else f"{mean:.3f} ± {std:.3f}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 48, 48])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
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
        "torch_threads": threads,
        "std": "sample standard deviation over folds of the per-fold mean case Dice",
        "epoch_seconds": "sum of per-epoch wall seconds (training + validation iterations) on a shared CPU: noisy",
        "voxelbase": {"dice_per_fold": {}, "epoch_seconds_per_fold": {}},
        "nnunet": {"dice_per_fold": {}, "epoch_seconds_per_fold": {}},
    }

    if not (project / "catalog.duckdb").exists():
        timed(voxelbase_command("ingest", str(raw), "--name", DATASET), env=env)
        timed(voxelbase_command("plan", DATASET), env=env)
    timed(voxelbase_command("preprocess", DATASET, "--configuration", "3d_fullres"), env=env)
    spec = voxelbase_spec(work / "learning.toml", **budget)
    from engine.planning import load_plan

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
        trainer = install_trainer(**budget)
        payload["nnunet"]["trainer"] = trainer
    elif not args.skip_nnunet:
        print(f"nnU-Net not found in {NNUNET_VENV}: Voxelbase only")

    for fold in args.folds:  # a fold either system has finished before (same work folder) is not trained again
        timed(voxelbase_command("train", str(spec), "--fold", str(fold)), env=env)
        payload["voxelbase"]["epoch_seconds_per_fold"][fold] = our_epoch_seconds(project, fold)
        payload["voxelbase"]["dice_per_fold"][fold] = our_dice(project, fold)
        if run_nnunet:
            folder = nnunet_fold(Path(nn_env["nnUNet_results"]), trainer, fold)
            if not (folder / "validation" / "summary.json").exists():
                command = nnunet_command("nnUNetv2_train", str(NNUNET_ID), "3d_fullres", str(fold), "-tr", trainer)
                timed([*command, "-device", "cpu"], env=nn_env)
            payload["nnunet"]["epoch_seconds_per_fold"][fold] = nnunet_epoch_seconds(folder)
            payload["nnunet"]["dice_per_fold"][fold] = nnunet_dice(folder)
        payload["table"] = summarize(payload)
        write_results("learning", payload)
        print_table(f"validation Dice after fold {fold} (mean ± std over folds)", payload["table"])


if __name__ == "__main__":
    main()
