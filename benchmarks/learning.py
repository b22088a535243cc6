"""Learning, measured: validation Dice of Voxelbase and nnU-Net v2 trained with the same budget on the same folds.

Both systems train the same configurations (`3d_fullres` by default; any of 2d, 3d_fullres, 3d_lowres and
3d_cascade_fullres) on the same synthetic dataset (reference generator, 12 cases, seed 0) with the
same splits (nnU-Net is given Voxelbase's `splits` table as its `splits_final.json`), the same number of epochs,
iterations per epoch and validation iterations, on the CPU with the same torch thread count, and are scored by
their own end-of-fold validation (sliding window with mirroring, on the original geometry): nnU-Net's
`validation/summary.json` against Voxelbase's `metrics` table. nnU-Net's budget is set by a trainer variant
(three numbers on top of `nnUNetTrainer`) written into its own installation, never into this repository.

    python -m benchmarks.learning [--shape 24 48 48] [--configurations 3d_fullres ...] [--gpu-memory GB]
                                  [--folds 0 1 2] [--seeds 0] [--epochs 3] [--iterations 40]
                                  [--val-iterations 10] [--work DIR] [--output learning] [--skip-nnunet]

Every configuration nnU-Net plans, with a memory target small enough that both planners make a cascade on
CPU-sized volumes:

    python -m benchmarks.learning --shape 32 96 96 --gpu-memory 0.1 --output learning_configurations \\
        --configurations 2d 3d_fullres 3d_lowres 3d_cascade_fullres --folds 0 --no-tta

(`--no-tta`: end-of-fold validation without test-time mirroring on both sides, 8x fewer forward passes on the CPU.)

The cascade needs every case's held-out low-res prediction, so 3d_lowres then trains all five folds (both
systems hand them over themselves: nnU-Net's `predicted_next_stage`, Voxelbase's `next_stage_predictions`) before
3d_cascade_fullres trains the requested folds. Per configuration and label the table gives both systems' mean ± std
over runs, whether the issue's bound holds (Voxelbase not below nnU-Net by more than max(1 Dice point, the larger
std)), and the ratio of epoch seconds (Voxelbase / nnU-Net, same iterations).

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
{validation}'''

# validation without test-time mirroring (Voxelbase: `predict.tta = false`): nnU-Net's predictor mirrors only along
# the trainer's allowed axes, so none are allowed once training is over (training augmentation still mirrors)
NO_TTA_VALIDATION = """
    def perform_actual_validation(self, save_probabilities: bool = False):
        self.inference_allowed_mirroring_axes = None
        return super().perform_actual_validation(save_probabilities)
"""


CONFIGURATIONS = ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
DEFAULT_CONFIGURATIONS = ["3d_fullres"]
ALL_FOLDS = [0, 1, 2, 3, 4]  # the cascade needs every case's held-out low-res prediction: all five low-res folds
SEED_BASE = 12345  # Voxelbase's default train.seed; seed k of the benchmark is SEED_BASE + k on both sides


def experiment_name(seed: int) -> str:
    return EXPERIMENT if seed == 0 else f"{EXPERIMENT}_s{seed}"


def plan_name(gpu_memory: float | None) -> str | None:
    """Voxelbase's name for the plan made with this memory target (None: the default plan)."""
    return None if gpu_memory is None else f"nnunet-{gpu_memory:g}gb"


def voxelbase_spec(
    path: Path,
    *,
    epochs: int,
    iterations: int,
    val_iterations: int,
    seed: int = 0,
    configurations: list[str] = DEFAULT_CONFIGURATIONS,
    gpu_memory: float | None = None,
    tta: bool = True,
) -> Path:
    plan = "" if gpu_memory is None else f"[plan]\ngpu_memory_gb = {gpu_memory}\n\n"
    predict = "" if tta else "\n[predict]\ntta = false\n"
    path.write_text(
        f'name = "{experiment_name(seed)}"\ndataset = "{DATASET}"\n\n{plan}[train]\n'
        f"configurations = {json.dumps(configurations)}\n"
        f"epochs = {epochs}\niterations_per_epoch = {iterations}\nval_iterations = {val_iterations}\n"
        f'device = "cpu"\ncheckpoint_every = {epochs}\nseed = {SEED_BASE + seed}\n{predict}'
    )
    return path


def install_trainer(*, epochs: int, iterations: int, val_iterations: int, seed: int = 0, tta: bool = True) -> str:
    """Write nnU-Net's trainer variant for this budget and seed (and validation with or without mirroring) into
    nnU-Net's own package (found by its class search)."""
    name = f"nnUNetTrainer_vb{epochs}x{iterations}x{val_iterations}" + (f"s{seed}" if seed else "")
    name += "" if tta else "nt"
    package = subprocess.run(
        [str(NNUNET_VENV / "bin" / "python"), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Path(package) / "training" / "nnUNetTrainer" / "variants" / "training_length" / f"{name}.py"
    text = TRAINER_TEMPLATE.format(
        name=name,
        epochs=epochs,
        iterations=iterations,
        val_iterations=val_iterations,
        seed=SEED_BASE + seed,
        validation="" if tta else NO_TTA_VALIDATION,
    )
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return name


def our_splits(project: Path) -> list[dict]:
    from voxelbase.planning import load_splits

    splits = load_splits(project, DATASET)
    return [{"train": list(splits[k]["train"]), "val": list(splits[k]["val"])} for k in sorted(splits, key=int)]


def _newest_run(experiment: str, configuration: str, fold: int) -> str:
    return (
        f"(SELECT max(run_id) FROM runs WHERE experiment = '{experiment}' AND configuration = '{configuration}' "
        f"AND fold = '{fold}' AND kind = 'train' AND status = 'finished')"
    )


def our_dice(project: Path, fold: int, experiment: str = EXPERIMENT, configuration: str = "3d_fullres") -> dict:
    """Per label, the validation Dice of each case of the newest finished run of this fold (None dropped)."""
    from voxelbase.catalog.queries import run_query

    rows = run_query(
        f"SELECT label, dice FROM metrics WHERE run_id = {_newest_run(experiment, configuration, fold)}",
        project=project,
    ).to_pylist()
    out: dict[int, list[float]] = {label: [] for label in LABELS}
    for row in rows:
        if row["dice"] is not None and not math.isnan(row["dice"]):
            out[row["label"]].append(row["dice"])
    return out


def our_epoch_seconds(project: Path, fold: int, experiment: str = EXPERIMENT, configuration: str = "3d_fullres"):
    """Seconds spent in the epochs (training and validation iterations) of the newest finished run of a fold."""
    from voxelbase.catalog.queries import run_query

    return run_query(
        f"SELECT sum(seconds) AS s FROM epochs WHERE run_id = {_newest_run(experiment, configuration, fold)}",
        project=project,
    ).to_pylist()[0]["s"]


def nnunet_fold(results: Path, trainer: str, fold: int, configuration: str = "3d_fullres") -> Path:
    return results / f"Dataset{NNUNET_ID:03d}_Synth" / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


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


def _criterion(ours: tuple, theirs: tuple) -> str:
    """The issue's bound: Voxelbase's mean not below nnU-Net's by more than max(1 Dice point, 1 std), the std being
    the larger of the two systems' stds over runs."""
    (mine, my_std), (other, other_std) = ours, theirs
    if mine is None or other is None:
        return "-"
    bound = max(0.01, my_std or 0.0, other_std or 0.0)
    return "met" if mine >= other - bound else f"NOT met (bound {bound:.3f})"


def _time_ratio(ours: dict, theirs: dict) -> str:
    """Voxelbase's epoch seconds over nnU-Net's, summed over the runs both finished (same iterations each)."""
    keys = [k for k in ours if k in theirs and ours[k] and theirs[k]]
    if not keys:
        return "-"
    return f"{sum(ours[k] for k in keys) / sum(theirs[k] for k in keys):.2f}"


def summarize(payload: dict) -> list[dict]:
    rows = []
    for configuration, runs in payload["runs"].items():
        ours, theirs = runs["voxelbase"], runs["nnunet"]
        for label, name in LABELS.items():
            row = {"configuration": configuration, "label": f"{label} {name}"}
            figures = {}
            for system, side in (("voxelbase", ours), ("nnunet", theirs)):
                means = [m[label] for m in _run_means(side["dice_per_run"]).values() if label in m]
                figures[system] = spread(means)
                mean, std = figures[system]
                row[system] = "-" if mean is None else f"{mean:.3f} ± {std:.3f} (n={len(means)})"
            paired = paired_difference(ours["dice_per_run"], theirs["dice_per_run"], label)
            if paired is None:
                row["paired_difference"] = "-"
            elif paired["ci95"] is None:
                row["paired_difference"] = f"{paired['mean']:+.3f} (1 pair)"
            else:
                lo, hi = paired["ci95"]
                row["paired_difference"] = f"{paired['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({paired['n_pairs']} pairs)"
            row["criterion"] = _criterion(figures["voxelbase"], figures["nnunet"])
            row["epoch_time_ratio"] = _time_ratio(ours["epoch_seconds_per_run"], theirs["epoch_seconds_per_run"])
            rows.append(row)
    return rows


def training_order(configurations: list[str], folds: list[int]) -> list[tuple[str, list[int]]]:
    """(configuration, folds) in the order they can train: the cascade after all five low-res folds (nnU-Net's
    `predicted_next_stage` and Voxelbase's hand-over need every case held out once)."""
    # the cascade's two stages first: the longest chain, and the one most worth seeing early in a long run
    wanted = [c for c in ("3d_lowres", "3d_cascade_fullres", "3d_fullres", "2d") if c in configurations]
    order = []
    for configuration in wanted:
        if configuration == "3d_lowres" and "3d_cascade_fullres" in wanted:
            order.append((configuration, ALL_FOLDS))
        elif configuration == "3d_cascade_fullres" and "3d_lowres" not in wanted:
            order.append(("3d_lowres", ALL_FOLDS))
            order.append((configuration, folds))
        else:
            order.append((configuration, folds))
    return order


def nnunet_setup(work: Path, raw: Path, project: Path, threads: int, configurations, gpu_memory) -> dict:
    """nnU-Net's plan and preprocessing of the same data (with the same memory target), given Voxelbase's splits."""
    nn_env = nnunet_env(work / "nnunet", raw) | {"OMP_NUM_THREADS": str(threads)}
    preprocessed = Path(nn_env["nnUNet_preprocessed"]) / f"Dataset{NNUNET_ID:03d}_Synth"
    if not (preprocessed / "nnUNetPlans.json").exists():
        stages = sorted({"3d_fullres" if c == "3d_cascade_fullres" else c for c in configurations})
        memory = [] if gpu_memory is None else ["-gpu_memory_target", str(gpu_memory)]
        memory += [] if gpu_memory is None else ["-overwrite_plans_name", "nnUNetPlans"]
        command = ["-d", str(NNUNET_ID), "-c", *stages, "-np", *(["2"] * len(stages)), *memory]
        timed(nnunet_command("nnUNetv2_plan_and_preprocess", *command), env=nn_env)
    (preprocessed / "splits_final.json").write_text(json.dumps(our_splits(project), indent=1))
    return nn_env


def plan_figures(plan) -> dict:
    return {"patch_size": list(plan["patch_size"]), "batch_size": plan["batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 48, 48])
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=DEFAULT_CONFIGURATIONS)
    parser.add_argument("--gpu-memory", type=float, default=None, help="both planners' memory target in GB")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seed k trains with seed 12345 + k")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--val-iterations", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one).")
    parser.add_argument("--output", default="learning", help="results name: benchmarks/out/NAME.json")
    parser.add_argument("--no-tta", action="store_true", help="validate without test-time mirroring (both systems)")
    parser.add_argument("--skip-nnunet", action="store_true")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="voxelbase-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = synth(work / "raw", "--cases", "12", "--seed", "0", "--shape", *map(str, args.shape))
    project = work / "voxelbase"
    threads = os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": str(threads), "VOXELBASE_PROJECT": str(project)}
    budget = {"epochs": args.epochs, "iterations": args.iterations, "val_iterations": args.val_iterations}
    order = training_order(args.configurations, args.folds)
    configurations = [c for c, _ in order]
    payload: dict = {
        "dataset": f"synth.py --cases 12 --seed 0 --shape {' '.join(map(str, args.shape))}",
        "gpu_memory_gb": args.gpu_memory,
        "budget": budget,
        "validation_tta": not args.no_tta,
        "folds": {c: f for c, f in order},
        "seeds": args.seeds,
        "torch_threads": threads,
        "std": "sample standard deviation over (fold, seed) runs of the per-run mean case Dice",
        "paired_difference": "Voxelbase - nnU-Net per (fold, seed) pair: mean and 95% t-interval",
        "epoch_seconds": "sum of per-epoch wall seconds (training + validation iterations) on a shared CPU: noisy",
        "plans": {"voxelbase": {}, "nnunet": {}},
        "runs": {
            c: {s: {"dice_per_run": {}, "epoch_seconds_per_run": {}} for s in ("voxelbase", "nnunet")}
            for c in configurations
        },
    }

    if not (project / "catalog.duckdb").exists():
        timed(voxelbase_command("ingest", str(raw), "--name", DATASET), env=env)
        memory = [] if args.gpu_memory is None else ["--gpu-memory", str(args.gpu_memory)]
        timed(voxelbase_command("plan", DATASET, *memory), env=env)
    plan = [] if args.gpu_memory is None else ["--plan", plan_name(args.gpu_memory)]
    from voxelbase.planning import load_plan

    for configuration in configurations:
        timed(voxelbase_command("preprocess", DATASET, "--configuration", configuration, *plan), env=env)
        planned = load_plan(project, DATASET, configuration=configuration, plan=plan_name(args.gpu_memory))
        payload["plans"]["voxelbase"][configuration] = plan_figures(
            {"patch_size": planned.patch_size, "batch_size": planned.batch_size}
        )

    run_nnunet = not args.skip_nnunet and have_nnunet()
    if run_nnunet:
        nn_env = nnunet_setup(work, raw, project, threads, configurations, args.gpu_memory)
        preprocessed = Path(nn_env["nnUNet_preprocessed"]) / f"Dataset{NNUNET_ID:03d}_Synth"
        nn_plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())["configurations"]
        missing = [c for c in configurations if c not in nn_plans]
        if missing:
            raise SystemExit(f"nnU-Net planned no {', '.join(missing)} for this data and memory target")
        payload["plans"]["nnunet"] = {
            c: plan_figures(nn_plans[c]) for c in configurations if "patch_size" in nn_plans[c]
        }
        trainers = {seed: install_trainer(**budget, seed=seed, tta=not args.no_tta) for seed in args.seeds}
        payload["nnunet_trainers"] = trainers
    elif not args.skip_nnunet:
        print(f"nnU-Net not found in {NNUNET_VENV}: Voxelbase only")

    for seed in args.seeds:  # a run either system has finished before (same work folder) is not trained again
        spec = voxelbase_spec(
            work / f"learning_s{seed}.toml",
            **budget,
            seed=seed,
            configurations=configurations,
            gpu_memory=args.gpu_memory,
            tta=not args.no_tta,
        )
        name = experiment_name(seed)
        for configuration, folds in order:
            runs = payload["runs"][configuration]
            for fold in folds:
                key = f"{fold}:{seed}"
                timed(voxelbase_command("train", str(spec), "-c", configuration, "--fold", str(fold)), env=env)
                runs["voxelbase"]["epoch_seconds_per_run"][key] = our_epoch_seconds(project, fold, name, configuration)
                runs["voxelbase"]["dice_per_run"][key] = our_dice(project, fold, name, configuration)
                if run_nnunet:
                    folder = nnunet_fold(Path(nn_env["nnUNet_results"]), trainers[seed], fold, configuration)
                    if not (folder / "validation" / "summary.json").exists():
                        command = nnunet_command(
                            "nnUNetv2_train", str(NNUNET_ID), configuration, str(fold), "-tr", trainers[seed]
                        )
                        timed([*command, "-device", "cpu"], env=nn_env)
                    runs["nnunet"]["epoch_seconds_per_run"][key] = nnunet_epoch_seconds(folder)
                    runs["nnunet"]["dice_per_run"][key] = nnunet_dice(folder)
                payload["table"] = summarize(payload)
                write_results(args.output, payload)
                print_table(
                    f"validation Dice after {configuration} fold {fold}, seed {seed} (mean ± std over runs)",
                    payload["table"],
                )


if __name__ == "__main__":
    main()
