"""Regions and sparse annotations, measured side by side with nnU-Net v2 at an equal budget on the same folds.

(a) Regions: the BraTS-like sample (`voxelbase demo-data --kind brats`: 4 MR channels, whole tumour ⊇ tumour core ⊇
    enhancing tumour as region labels). Both systems train `3d_fullres` on the same splits (nnU-Net is given
    Voxelbase's `splits` as its `splits_final.json`) and score their own end-of-fold validation per region:
    Voxelbase's `metrics` rows by region against nnU-Net's `validation/summary.json` region keys. Reported: per
    region the mean over folds of the mean case Dice, with the std over folds.
(b) Sparse: the demo CT (`voxelbase demo-data`) and its sparse copy (`--sparse-from`, 1 slice in N per axis
    labelled, the rest the ignore label). Each system trains on both; every validation segmentation (both systems,
    both datasets) is scored by the same code (`voxelbase evaluate`) against the DENSE labels, so the four mean
    foreground Dice figures are comparable and the dense - sparse gap can be read for each system.

    python -m benchmarks.regions [--cases 10] [--folds 0 1 2] [--sparse-folds ...] [--epochs 3] [--iterations 40]
                                 [--val-iterations 10] [--keep-every 5] [--part regions sparse] [--work DIR]
                                 [--skip-nnunet]

nnU-Net's budget is a trainer variant (the three numbers on top of `nnUNetTrainer`) written into its own
installation, never into this repository. Results: benchmarks/out/regions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import (
    NNUNET_VENV,
    have_nnunet,
    nnunet_command,
    nnunet_env,
    print_table,
    timed,
    voxelbase_command,
    write_results,
)
from benchmarks.learning import install_trainer  # the same budget variant, seed 0

IDS = {"brats": 921, "dense": 922, "sparse": 923}
REGIONS = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
CT_LABELS = {1: "liver", 2: "tumor", 3: "kidney"}


def spec_text(name: str, dataset: str, folds: list[int], budget: dict) -> str:
    return (
        f'name = "{name}"\ndataset = "{dataset}"\n[train]\nconfigurations = ["3d_fullres"]\nfolds = {folds}\n'
        f"epochs = {budget['epochs']}\niterations_per_epoch = {budget['iterations']}\n"
        f'val_iterations = {budget["val_iterations"]}\ndevice = "cpu"\ncheckpoint_every = {budget["epochs"]}\n'
    )


def sql(project: Path, query: str, params: list | None = None) -> list[dict]:
    from voxelbase.catalog.queries import run_query

    return run_query(query, project=project, params=params or []).to_pylist()


def voxelbase_side(work: Path, raw: Path, dataset: str, folds: list[int], budget: dict, env: dict) -> Path:
    """Ingest, plan, preprocess, then train and validate each fold; the project folder."""
    project = Path(env["VOXELBASE_PROJECT"])
    known = (project / "catalog.duckdb").exists() and sql(project, "SELECT 1 FROM datasets WHERE name = ?", [dataset])
    if not known:
        timed(voxelbase_command("ingest", str(raw), "--name", dataset), env=env)
        timed(voxelbase_command("plan", dataset), env=env)
    timed(voxelbase_command("preprocess", dataset, "--configuration", "3d_fullres"), env=env)
    spec = work / f"{dataset}.toml"
    spec.write_text(spec_text(dataset, dataset, folds, budget))
    for fold in folds:
        timed(voxelbase_command("train", str(spec), "--fold", str(fold)), env=env)
    return project


def splits_of(project: Path, dataset: str) -> list[dict]:
    from voxelbase.planning import load_splits

    splits = load_splits(project, dataset)
    return [{"train": list(splits[k]["train"]), "val": list(splits[k]["val"])} for k in sorted(splits, key=int)]


def nnunet_side(work: Path, raw: Path, key: str, splits: list[dict], folds: list[int], trainer: str) -> list[Path]:
    """Plan, preprocess and train nnU-Net on `raw` with Voxelbase's splits; the fold folders."""
    dataset_id, name = IDS[key], key.capitalize()
    env = nnunet_env(work / "nnunet", raw, dataset_id=dataset_id, name=name) | {"OMP_NUM_THREADS": env_threads()}
    preprocessed = Path(env["nnUNet_preprocessed"]) / f"Dataset{dataset_id}_{name}"
    if not (preprocessed / "nnUNetPlans.json").exists():
        timed(
            nnunet_command("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2"),
            env=env,
        )
    (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=1))
    results = Path(env["nnUNet_results"]) / f"Dataset{dataset_id}_{name}" / f"{trainer}__nnUNetPlans__3d_fullres"
    for fold in folds:
        if not (results / f"fold_{fold}" / "validation" / "summary.json").exists():
            command = nnunet_command("nnUNetv2_train", str(dataset_id), "3d_fullres", str(fold), "-tr", trainer)
            timed([*command, "-device", "cpu"], env=env)
    return [results / f"fold_{fold}" for fold in folds]


def env_threads() -> str:
    return str(os.cpu_count() or 1)


def _key_values(key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", key))


def nnunet_region_dice(fold_dir: Path) -> dict[str, float]:
    """Per region, the mean case Dice of nnU-Net's own validation (its summary keys are the regions' values)."""
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    out: dict[str, list[float]] = {name: [] for name in REGIONS}
    by_values = {values: name for name, values in REGIONS.items()}
    for case in summary["metric_per_case"]:
        for key, metrics in case["metrics"].items():
            name = by_values.get(_key_values(key))
            dice = metrics.get("Dice")
            if name and dice is not None and dice == dice:
                out[name].append(dice)
    return {name: statistics.fmean(v) for name, v in out.items() if v}


def voxelbase_region_dice(project: Path, experiment: str, fold: int) -> dict[str, float]:
    rows = sql(
        project,
        "SELECT region, avg(dice) AS dice FROM metrics WHERE region IS NOT NULL AND run_id = (SELECT max(run_id) "
        "FROM runs WHERE experiment = ? AND fold = ? AND kind = 'train' AND status = 'finished') GROUP BY region",
        [experiment, str(fold)],
    )
    return {r["region"]: r["dice"] for r in rows if r["dice"] is not None}


def dense_dice(project: Path, folder: Path, reference: Path, name: str, env: dict) -> dict[str, float]:
    """Per label, the mean case Dice of the segmentations in `folder` against the dense references."""
    timed(voxelbase_command("evaluate", str(folder), "--reference", str(reference), "--name", name), env=env)
    rows = sql(
        project,
        "SELECT label, avg(dice) AS dice FROM metrics WHERE run_id = (SELECT max(run_id) FROM evaluations "
        "WHERE name = ?) GROUP BY label",
        [name],
    )
    return {CT_LABELS.get(r["label"], str(r["label"])): r["dice"] for r in rows if r["dice"] is not None}


def over_folds(per_fold: list[dict[str, float]], names) -> dict[str, str]:
    out = {}
    for name in names:
        values = [d[name] for d in per_fold if name in d]
        if not values:
            out[name] = "-"
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = f"{statistics.fmean(values):.3f} ± {std:.3f}"
    return out


def foreground_mean(per_fold: list[dict[str, float]]) -> float | None:
    means = [statistics.fmean(d.values()) for d in per_fold if d]
    return statistics.fmean(means) if means else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--sparse-folds", type=int, nargs="+", default=None, help="folds of the sparse part (default: --folds)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--val-iterations", type=int, default=10)
    parser.add_argument("--keep-every", type=int, default=5)
    parser.add_argument("--part", nargs="+", choices=["regions", "sparse"], default=["regions", "sparse"])
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one).")
    parser.add_argument("--skip-nnunet", action="store_true")
    args = parser.parse_args()

    work = (args.work or Path(tempfile.mkdtemp(prefix="voxelbase-regions-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    project = work / "voxelbase"
    env = {"OMP_NUM_THREADS": env_threads(), "VOXELBASE_PROJECT": str(project)}
    budget = {"epochs": args.epochs, "iterations": args.iterations, "val_iterations": args.val_iterations}
    run_nnunet = not args.skip_nnunet and have_nnunet()
    if not run_nnunet and not args.skip_nnunet:
        print(f"nnU-Net not found in {NNUNET_VENV}: Voxelbase only")
    trainer = install_trainer(**budget) if run_nnunet else None
    payload: dict = {"budget": budget, "folds": args.folds, "cases": args.cases, "configuration": "3d_fullres"}

    def data(name: str, *extra: str) -> Path:
        out = work / "raw" / name
        if not (out / "dataset.json").exists():
            timed(voxelbase_command("demo-data", str(out), *extra), env=env)
        return out

    if "regions" in args.part:
        raw = data("brats", "--kind", "brats", "--cases", str(args.cases), "--test-cases", "0")
        voxelbase_side(work, raw, "brats", args.folds, budget, env)
        ours = [voxelbase_region_dice(project, "brats", f) for f in args.folds]
        theirs = []
        if run_nnunet:
            folders = nnunet_side(work, raw, "brats", splits_of(project, "brats"), args.folds, trainer)
            theirs = [nnunet_region_dice(folder) for folder in folders]
        rows = [
            {"system": "voxelbase", **over_folds(ours, REGIONS), "mean": foreground_mean(ours)},
            {"system": "nnunet", **over_folds(theirs, REGIONS), "mean": foreground_mean(theirs)},
        ]
        payload["regions"] = {"voxelbase_per_fold": ours, "nnunet_per_fold": theirs, "table": rows}
        print_table("(a) regions: per-region validation Dice, mean ± std over folds", rows)

    if "sparse" in args.part:
        sparse_folds = args.sparse_folds or args.folds
        dense = data("dense", "--cases", str(args.cases), "--test-cases", "0")
        sparse = data("sparse", "--sparse-from", str(dense), "--keep-every", str(args.keep_every))
        reference = dense / "labelsTr"
        figures: dict = {}
        for key, raw in (("dense", dense), ("sparse", sparse)):
            voxelbase_side(work, raw, key, sparse_folds, budget, env)
            per_fold = [
                dense_dice(
                    project,
                    project / "runs" / key / "3d_fullres" / f"fold_{f}" / "validation",
                    reference,
                    f"vb_{key}_{f}",
                    env,
                )
                for f in sparse_folds
            ]
            figures[("voxelbase", key)] = per_fold
            if run_nnunet:
                folders = nnunet_side(work, raw, key, splits_of(project, key), sparse_folds, trainer)
                figures[("nnunet", key)] = [
                    dense_dice(project, folder / "validation", reference, f"nn_{key}_{f}", env)
                    for folder, f in zip(folders, sparse_folds)
                ]
        rows = []
        for system in ("voxelbase", "nnunet"):
            d, s = (
                foreground_mean(figures.get((system, "dense"), [])),
                foreground_mean(figures.get((system, "sparse"), [])),
            )
            gap = None if d is None or s is None else d - s
            rows.append({"system": system, "dense": d, "sparse": s, "gap": gap})
        payload["sparse"] = {
            "folds": sparse_folds,
            "keep_every": args.keep_every,
            "scored_against": "the dense labels, by voxelbase evaluate, for both systems",
            "per_fold": {f"{system}:{key}": v for (system, key), v in figures.items()},
            "table": rows,
        }
        print_table("(b) dense vs sparse: mean foreground Dice against the dense labels", rows)

    write_results("regions", payload)


if __name__ == "__main__":
    main()
