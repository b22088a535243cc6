"""`voxelbase export --format nnunet`: does nnU-Net v2's own predictor run the exported folder to the same
segmentations as `voxelbase predict`?

    python -m benchmarks.nnunet_export [--cases 6] [--test-cases 3] [--epochs 8] [--iterations 10]
                                       [--kind ct|brats|coarse-x] [--configuration 3d_fullres]

`--kind brats` exports a region-based experiment (BraTS-like sample: nnU-Net reads the regions and
`regions_class_order` from the exported dataset.json, and applies its sigmoid); `--kind coarse-x` one whose thick
axis is x, where nnU-Net's planner transposes (`--configuration 2d` then exports `transpose_forward` [2, 0, 1]).

Demo data (`voxelbase demo-data`), a tiny experiment (3d_fullres, fold 0) trained by `voxelbase run`, exported with
`voxelbase export bench --format nnunet --output <work>/nnUNetTrainer__nnUNetPlans__3d_fullres`; then the test
images are segmented by `voxelbase predict --no-tta` and by
`nnUNetv2_predict_from_modelfolder -i IMAGES -o OUT -m DIR -f 0 -device cpu --disable_tta` (nnU-Net's venv), and,
as a round trip, the folder is imported into a fresh project (`voxelbase import-nnunet`) and predicted again.
Reported per case: the fraction of voxels with the same label, and the Dice of each foreground label between the
two segmentations. Differences are expected only where the two predictors legitimately differ: Voxelbase's own
models resample class probabilities back to the image, nnU-Net resamples logits (then softmax).
Runs only where nnU-Net is installed (NNUNET_VENV, default /tmp/nnunet).

Measured (2026-12-02, 2 CPU cores, defaults): 6, 9 and 2 voxels of 27520, 18130 and 21420 differ between
`voxelbase predict` and nnU-Net (agreement >= 99.95%); the re-imported folder predicted by Voxelbase equals
nnU-Net's output (with the exported postprocessing.pkl applied by `nnUNetv2_apply_postprocessing`) voxel for voxel.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import have_nnunet, nnunet_command, print_table, voxelbase_command, write_results

SPEC = """
name = "bench"
dataset = "demo"
[ingest]
source = "{raw}"
[train]
configurations = ["{configuration}"]
folds = [0]
epochs = {epochs}
iterations_per_epoch = {iterations}
val_iterations = 1
num_workers = 1
[predict]
tta = false
"""
KINDS = {"ct": [], "brats": ["--kind", "brats"], "coarse-x": ["--coarse-axis", "x"]}
SHAPES = {"ct": ["16", "40", "40"], "brats": ["16", "40", "40"], "coarse-x": ["40", "40", "16"]}


def _run(command: list[str], *, env: dict | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def _segmentations(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def agreement(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], labels: list[int]) -> list[dict]:
    rows = []
    for name in sorted(ours):
        a, b = ours[name], theirs[name]
        if a.shape != b.shape:
            raise SystemExit(f"{name}: shapes differ, {a.shape} vs {b.shape}")
        row: dict = {
            "case": name,
            "voxels": int(a.size),
            "agree": float((a == b).mean()),
            "differ": int((a != b).sum()),
        }
        for label in labels:
            x, y = a == label, b == label
            total = int(x.sum() + y.sum())
            row[f"dice_{label}"] = 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--kind", choices=sorted(KINDS), default="ct")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (printed).")
    args = parser.parse_args()
    if not have_nnunet():
        print("nnU-Net v2 is not installed (NNUNET_VENV); nothing to compare")
        return
    work = Path(tempfile.mkdtemp(prefix="vb-nnunet-export-"))
    try:
        raw, project = work / "raw", work / "project"
        vb = [*voxelbase_command(), "--project", str(project)]
        _run([*voxelbase_command(), "demo-data", str(raw), "--cases", str(args.cases), "--test-cases",
              str(args.test_cases), "--shape", *SHAPES[args.kind], *KINDS[args.kind]])  # fmt: skip
        spec = SPEC.format(raw=raw, epochs=args.epochs, iterations=args.iterations, configuration=args.configuration)
        (work / "spec.toml").write_text(spec)
        train_s = _run([*vb, "run", str(work / "spec.toml")])
        model = work / f"nnUNetTrainer__nnUNetPlans__{args.configuration}"
        export_command = [*vb, "export", "bench", "--format", "nnunet", "--output", str(model)]
        export_s = _run(export_command)
        images = raw / "imagesTs"
        ours_s = _run([*vb, "predict", "-e", "bench", "--input", str(images), "--output", str(work / "vb"), "--no-tta"])
        nnunet_args = ["-i", str(images), "-o", str(work / "nnunet"), "-m", str(model), "-f", "0", "-device", "cpu",
                       "--disable_tta", "-npp", "1", "-nps", "1", "--disable_progress_bar"]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "nnUNet_raw": str(work), "nnUNet_preprocessed": str(work),
               "nnUNet_results": str(work), "OMP_NUM_THREADS": "2"}  # fmt: skip
        theirs_s = _run(nnunet_command("nnUNetv2_predict_from_modelfolder", *nnunet_args), env=env)
        # nnU-Net's predictor does not postprocess; apply the exported postprocessing.pkl with nnU-Net's own tool,
        # as `voxelbase predict` applies the experiment's decision
        pickles = sorted(model.glob("crossval_results_folds_*/postprocessing.pkl"))
        nnunet_final = work / "nnunet"
        if pickles:
            nnunet_final = work / "nnunet_pp"
            pp_args = ["-i", str(work / "nnunet"), "-o", str(nnunet_final), "-pp_pkl_file", str(pickles[0]), "-np", "1",
                       "-plans_json", str(model / "plans.json"), "-dataset_json", str(model / "dataset.json")]  # fmt: skip
            _run(nnunet_command("nnUNetv2_apply_postprocessing", *pp_args), env=env)
        fresh = [*voxelbase_command(), "--project", str(work / "fresh")]
        _run([*fresh, "import-nnunet", str(model), "--name", "back"])
        _run([*fresh, "predict", "-e", "back", "--input", str(images), "--output", str(work / "back"), "--no-tta"])

        ours, back = _segmentations(work / "vb"), _segmentations(work / "back")
        theirs, theirs_raw = _segmentations(nnunet_final), _segmentations(work / "nnunet")
        labels = sorted({int(v) for s in ours.values() for v in np.unique(s)} - {0}) or [1, 2]
        vs_nnunet = agreement(ours, theirs, labels)
        vs_roundtrip = agreement(back, theirs, labels)
        print_table("voxelbase predict vs nnU-Net (exported folder, postprocessing.pkl applied)", vs_nnunet)
        print_table("import-nnunet of the export, voxelbase predict vs nnU-Net", vs_roundtrip)
        if pickles:
            print_table("voxelbase predict vs nnU-Net without its postprocessing", agreement(ours, theirs_raw, labels))
        command = " ".join(nnunet_command("nnUNetv2_predict_from_modelfolder", *nnunet_args))
        print(f"\nnnU-Net command: {command}")
        write_results(
            "nnunet_export" if args.kind == "ct" else f"nnunet_export_{args.kind}",
            {
                "kind": args.kind,
                "configuration": args.configuration,
                "export_command": " ".join(["voxelbase", *export_command[3:]]),
                "nnunet_command": command,
                "cases": args.cases,
                "test_cases": args.test_cases,
                "epochs": args.epochs,
                "iterations_per_epoch": args.iterations,
                "seconds": {
                    "train": train_s,
                    "export": export_s,
                    "voxelbase_predict": ours_s,
                    "nnunet_predict": theirs_s,
                },
                "voxelbase_vs_nnunet": vs_nnunet,
                "reimported_vs_nnunet": vs_roundtrip,
                "nnunet_postprocessing_applied": bool(pickles),
                "min_agreement": min(r["agree"] for r in vs_nnunet),
            },
        )
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
