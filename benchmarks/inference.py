"""Inference seconds per case and peak memory, side by side with nnU-Net v2's `nnUNetv2_predict`.

    python -m benchmarks.inference [--repeats 1] [--no-large] [--large-shape 600 512 512] [--large-coarsen 2]
                                   [--imported-only | --no-imported] [--imported-cases 6]

Same data (the reference generator: 12 training and 2 test cases, seed 0), same network, same weights, same
device: nothing is trained. nnU-Net plans the dataset (fingerprint + plan, not timed); its `3d_fullres`
architecture, patch size, spacing and intensity statistics become Voxelbase's plan (the planners agree on the
topology; the intensity statistics come from randomly sampled voxels, and using nnU-Net's makes both normalise
identically); a network with that architecture is randomly initialised (seed 0) and saved as a Voxelbase
checkpoint (fold 0 of experiment 'bench') and, with the parameters mapped by registration order onto nnU-Net's
own network (built in nnU-Net's virtual environment), as an nnU-Net results folder (`checkpoint_final.pth`,
`plans.json`, `dataset.json`, `dataset_fingerprint.json`). Timed: `voxelbase predict` and `nnUNetv2_predict` on the
2 test cases, wall clock including start-up, with and without mirroring TTA, alternating. An untimed first run of
each saves probabilities, which are compared voxel by voxel to check that both really run the same model.

The large-volume check predicts one CT-like int16 image of `--large-shape` voxels (600x512x512 by default) with a
narrow network (features 4-8-16-32), `--no-tta`, and reports Voxelbase's peak RSS. The CPU is too slow for a
network at full resolution, so the plan spacing is `--large-coarsen` times the image's (the network grid is 8x
smaller at 2); everything around the network -- reading, cropping, normalising and resampling the full image,
resampling every class back to 600x512x512, the argmax and the write -- runs at full size.

The imported-model section (`--imported-only` runs just it, `--no-imported` skips it; the default run includes
it) uses a real nnU-Net trained model: `tests/fixtures/nnunet_trained_model` (see its NOTE.md; folds 0 and 1, 2
test images). The model folder is copied without its `crossval_results_*` (nnUNetv2_predict applies no
postprocessing) and registered with `voxelbase import-nnunet SOURCE --name nnunet_tiny` in a temporary project.
The 2 test images are replicated under new case names to `--imported-cases` cases (6 by default: case_000 ..,
alternating demo_006 and demo_007). Timed, alternating sides, with and without mirroring:
`voxelbase predict --experiment nnunet_tiny --folds 0 1 --device cpu [--no-tta]` against
`nnUNetv2_predict_from_modelfolder -m FOLDER -f 0 1 -device cpu -npp 1 -nps 1 [--disable_tta]` (one preprocessing
and one export process, as the fixture was made; the machine has 2 cores). Whole-command seconds include start-up
(interpreter, imports, model loading). Seconds per case excluding start-up are NOT reported by either tool: they
are measured as (T_N - T_1) / (N - 1), T_1 being the whole command on 1 case (demo_006 alone) and T_N on the N
cases (best of `--repeats` each). Peak RSS is that of the largest process of the N-case command. Voxel agreement
is the fraction of equal voxels between the two tools' segmentations of each case (first N-case run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

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
from benchmarks.train_step import architecture_from_nnunet

DATASET_DIR = f"Dataset{NNUNET_ID:03d}_Synth"
TRAINER_DIR = "nnUNetTrainer__nnUNetPlans__3d_fullres"
REPO = Path(__file__).resolve().parents[1]
IMPORTED_FIXTURE = REPO / "tests" / "fixtures" / "nnunet_trained_model"
IMPORTED_MODEL = "nnUNetTrainer_vbTiny__nnUNetPlans__3d_fullres"
IMPORTED_NAME = "nnunet_tiny"
NARROW = {
    "network": "plain_unet",
    "conv_dims": 3,
    "n_stages": 4,
    "features_per_stage": [4, 8, 16, 32],
    "kernel_sizes": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2, 2],
}

# Runs in nnU-Net's venv: its own network for the plan, our parameters copied on in registration order.
NNUNET_CHECKPOINT_SCRIPT = r"""
import json, sys, torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
a = json.loads(sys.argv[1])
arch = json.load(open(a["plans"]))["configurations"]["3d_fullres"]["architecture"]
net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                             a["in_channels"], a["num_classes"], deep_supervision=False)
ours = torch.load(a["weights"], weights_only=True)
theirs = list(net.named_parameters())  # unique parameters (its state_dict repeats shared modules)
assert len(ours) == len(theirs), (len(ours), len(theirs))
with torch.no_grad():
    for (ours_key, value), (key, target) in zip(ours, theirs):
        assert tuple(value.shape) == tuple(target.shape), (ours_key, key, value.shape, target.shape)
        target.copy_(value)
torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
            "init_args": {"plans": json.load(open(a["plans"])), "configuration": "3d_fullres", "fold": 0,
                          "dataset_json": json.load(open(a["dataset_json"])), "device": "cpu"},
            "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0, "optimizer_state": None,
            "grad_scaler_state": None, "logging": {}, "_best_ema": None}, a["out"])
print("OK", len(theirs))
"""


def _run(command: list[str], *, env: dict | None = None) -> None:
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def _save_voxelbase_model(project: Path, *, experiment: str, plan: dict, seed: int) -> list:
    """A randomly initialised network saved as fold 0 of `experiment`, recorded as a finished run; returns its
    parameters in registration order (for nnU-Net; the networks have no buffers)."""
    import torch

    from voxelbase.networks import network_for_plan, save_checkpoint
    from voxelbase.plan import ConfigurationPlan
    from voxelbase.project import Project
    from voxelbase.spec import spec_from_dict
    from voxelbase.training import records

    proj = Project.resolve(project)
    torch.manual_seed(seed)
    plan_dict, plan = plan, ConfigurationPlan.from_dict(plan)
    network = network_for_plan(plan, deep_supervision=False)
    spec = spec_from_dict({"name": experiment, "dataset": plan.dataset, "train": {"folds": [0], "epochs": 1}})
    run_dir = proj.run_dir(experiment, plan.configuration, "0")
    save_checkpoint(
        run_dir / "checkpoint_final.pt",
        network=network,
        optimizer=None,
        epoch=0,
        spec=spec.to_dict(),
        plan=plan_dict,
        state={},
    )
    records.record_experiment(proj, name=experiment, dataset=plan.dataset, spec=spec.to_dict(), spec_hash=spec.hash())
    run_id = records.start_run(
        proj,
        experiment=experiment,
        configuration=plan.configuration,
        fold="0",
        plan=plan.plan,
        spec_hash=spec.hash(),
        epochs=1,
        device="cpu",
        run_dir=str(run_dir),
    )
    records.finish_run(proj, run_id, status="finished")
    return [(name, p.detach().clone()) for name, p in network.named_parameters()]


def _nnunet_results(work: Path, env: dict, parameters: list, plan: dict) -> None:
    import torch

    preprocessed = Path(env["nnUNet_preprocessed"]) / DATASET_DIR
    folder = Path(env["nnUNet_results"]) / DATASET_DIR / TRAINER_DIR
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    for name, target in (
        ("nnUNetPlans.json", "plans.json"),
        ("dataset.json", None),
        ("dataset_fingerprint.json", None),
    ):
        (folder / (target or name)).write_text((preprocessed / name).read_text())
    weights = work / "weights.pt"
    torch.save(parameters, weights)
    payload = {
        "plans": str(folder / "plans.json"),
        "dataset_json": str(folder / "dataset.json"),
        "weights": str(weights),
        "out": str(folder / "fold_0" / "checkpoint_final.pth"),
        "in_channels": int(plan["n_channels"]),
        "num_classes": int(plan["num_classes"]),
    }
    _run([str(NNUNET_VENV / "bin" / "python"), "-c", NNUNET_CHECKPOINT_SCRIPT, json.dumps(payload)])


def _agreement(ours: Path, theirs: Path) -> dict:
    """Largest probability difference and voxel agreement of the two predictions of every test case."""
    import SimpleITK as sitk

    worst, equal, total = 0.0, 0, 0
    for npz in sorted(ours.glob("*.npz")):
        a = np.load(npz)["probabilities"].astype(np.float32)
        b = np.load(theirs / npz.name)["probabilities"].astype(np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
        seg_a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"{npz.stem}.nii.gz")))
        seg_b = sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / f"{npz.stem}.nii.gz")))
        equal += int((seg_a == seg_b).sum())
        total += seg_a.size
    return {"max_abs_probability_difference": worst, "voxel_agreement": equal / max(total, 1)}


def _large_volume(work: Path, project: Path, plan: dict, *, shape: list[int], coarsen: float) -> dict:
    """Peak RSS of `voxelbase predict` on one large CT-like image with a narrow network."""
    import SimpleITK as sitk

    spacing = (1.0, 0.7, 0.7)
    rng = np.random.default_rng(0)
    z, y, x = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 <= 1
    organ = ((zz - z / 2) / (0.3 * z)) ** 2 + ((yy - y / 2.2) / (0.15 * y)) ** 2 + (
        (xx - x / 2.5) / (0.15 * x)
    ) ** 2 <= 1
    image = np.full(shape, -1000, np.int16)
    image[np.broadcast_to(body, shape)] = 40
    image[organ] = 120
    image += rng.integers(-20, 21, size=(1, y, x), dtype=np.int16)  # cheap texture, same on every slice
    del body, organ
    inputs = work / "large_in"
    inputs.mkdir(exist_ok=True)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(itk, str(inputs / "large_0000.mha"))
    del image, itk
    narrow = {
        **plan,
        "architecture": NARROW,
        "spacing": [s * coarsen for s in spacing],
        "patch_size": [128, 256, 256],
    }
    _save_voxelbase_model(project, experiment="bench_large", plan=narrow, seed=0)
    out = work / "large_out"
    result = timed(
        voxelbase_command(
            "--project",
            str(project),
            "predict",
            "-e",
            "bench_large",
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--no-tta",
            "--device",
            "cpu",
            "--batch-windows",
            "1",
        )
    )
    voxels = int(np.prod(shape))
    return {
        "shape": shape,
        "image_mb": voxels * 2 / 2**20,
        "plan_spacing": narrow["spacing"],
        "image_spacing": list(spacing),
        "network": "plain_unet 4-8-16-32, patch 128x256x256",
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "peak_rss_over_image_int16": result["peak_rss_mb"] / (voxels * 2 / 2**20),
    }


def _imported_inputs(work: Path, n_cases: int) -> tuple[Path, Path, list[str]]:
    """The fixture's 2 test images: demo_006 alone, and replicated to `n_cases` cases under new names."""
    images = sorted((IMPORTED_FIXTURE / "imagesTs").glob("*_0000.nii.gz"))
    one, many = work / "inputs_1", work / f"inputs_{n_cases}"
    one.mkdir(parents=True, exist_ok=True)
    many.mkdir(parents=True, exist_ok=True)
    shutil.copy(images[0], one / images[0].name)
    cases = []
    for k in range(n_cases):
        case = f"case_{k:03d}"
        shutil.copy(images[k % len(images)], many / f"{case}_0000.nii.gz")
        cases.append(case)
    return one, many, cases


def _case_agreement(ours: Path, theirs: Path, cases: list[str]) -> dict[str, float]:
    """Fraction of equal voxels between the two segmentations of each case."""
    import SimpleITK as sitk

    agreement = {}
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / f"{case}.nii.gz")))
        agreement[case] = float((a == b).mean()) if a.shape == b.shape else 0.0
    return agreement


def _imported_model(work: Path, *, n_cases: int, repeats: int) -> dict:
    """The fixture's real nnU-Net model, imported with `voxelbase import-nnunet`, against nnU-Net's own predictor."""
    if not (IMPORTED_FIXTURE / IMPORTED_MODEL).exists():
        raise SystemExit(f"the nnU-Net model fixture {IMPORTED_FIXTURE / IMPORTED_MODEL} is missing")
    work.mkdir(parents=True, exist_ok=True)
    model = work / "models" / IMPORTED_MODEL
    if not model.exists():  # nnUNetv2_predict applies no postprocessing: leave crossval_results_* out
        shutil.copytree(IMPORTED_FIXTURE / IMPORTED_MODEL, model, ignore=shutil.ignore_patterns("crossval_results_*"))
    project = work / "project"
    vb = ["--project", str(project)]
    _run(voxelbase_command(*vb, "import-nnunet", str(model), "--name", IMPORTED_NAME, "--replace"))
    one, many, cases = _imported_inputs(work, n_cases)
    # nnU-Net reads these only to warn when unset; the model folder is given directly
    env = {k: str(work / "nnunet" / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}

    def ours(inputs: Path, out: Path, tta: bool) -> list[str]:
        flags = () if tta else ("--no-tta",)
        return voxelbase_command(
            *vb, "predict", "--experiment", IMPORTED_NAME, "--input", str(inputs), "--output", str(out),
            "--folds", "0", "1", "--device", "cpu", *flags,
        )  # fmt: skip

    def theirs(inputs: Path, out: Path, tta: bool) -> list[str]:
        flags = () if tta else ("--disable_tta",)
        return nnunet_command(
            "nnUNetv2_predict_from_modelfolder", "-i", str(inputs), "-o", str(out), "-m", str(model),
            "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", *flags,
        )  # fmt: skip

    sides = (("voxelbase", ours), ("nnunet", theirs))
    runs: dict[str, list[dict]] = {}
    agreement: dict[str, dict[str, float]] = {}
    for r in range(repeats):
        for tta in (False, True):
            for side, command in sides if r % 2 == 0 else sides[::-1]:
                for label, inputs in (("1", one), ("N", many)):
                    out = work / f"{side}_{'tta' if tta else 'notta'}_{label}_{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    run = timed(command(inputs, out, tta), env=env if side == "nnunet" else None)
                    runs.setdefault(f"{side} tta={'on' if tta else 'off'} cases={label}", []).append(run)
                    print(f"imported {side} tta={tta} cases={1 if label == '1' else n_cases}: {run}", flush=True)
            if r == 0:
                tag = "tta" if tta else "notta"
                agreement["on" if tta else "off"] = _case_agreement(
                    work / f"voxelbase_{tag}_N_0", work / f"nnunet_{tag}_N_0", cases
                )
    rows = []
    for tta in ("off", "on"):
        row: dict = {"tta": tta}
        for side in ("voxelbase", "nnunet"):
            t1 = min(x["seconds"] for x in runs[f"{side} tta={tta} cases=1"])
            tn = min(x["seconds"] for x in runs[f"{side} tta={tta} cases=N"])
            row[f"{side}_s_per_case_excl_startup"] = (tn - t1) / (n_cases - 1)
            row[f"{side}_s_whole_{n_cases}_cases"] = tn
            row[f"{side}_s_whole_1_case"] = t1
        for side in ("voxelbase", "nnunet"):
            row[f"{side}_peak_mb"] = max(x["peak_rss_mb"] for x in runs[f"{side} tta={tta} cases=N"])
        row["min_voxel_agreement"] = min(agreement[tta].values())
        rows.append(row)
    short = {"voxelbase": "vb", "nnunet": "nn"}
    table = [
        {
            "tta": row["tta"],
            **{f"{short[s]}_s/case_excl_startup": row[f"{s}_s_per_case_excl_startup"] for s in short},
            **{f"{short[s]}_s_whole_{n_cases}": row[f"{s}_s_whole_{n_cases}_cases"] for s in short},
            **{f"{short[s]}_s_whole_1": row[f"{s}_s_whole_1_case"] for s in short},
            **{f"{short[s]}_peak_mb": round(row[f"{s}_peak_mb"]) for s in short},
            "min_agreement": row["min_voxel_agreement"],
        }
        for row in rows
    ]
    print_table(
        f"imported nnU-Net model (tests/fixtures/nnunet_trained_model, folds 0 1), {n_cases} cases, CPU "
        "(s/case excl. start-up = (T_N - T_1) / (N - 1); vb = voxelbase, nn = nnunet)",
        table,
    )
    print_table(
        "voxel agreement per case (voxelbase vs nnunet segmentation)",
        [{"case": c, "tta_off": agreement["off"][c], "tta_on": agreement["on"][c]} for c in cases],
    )
    return {
        "fixture": str(IMPORTED_FIXTURE.relative_to(REPO)),
        "folds": [0, 1],
        "n_cases": n_cases,
        "cases": {c: f"demo_00{6 + k % 2}" for k, c in enumerate(cases)},
        "per_case_time_method": "(T_N - T_1) / (N - 1), whole-command wall seconds, best of repeats",
        "repeats": repeats,
        "results": rows,
        "voxel_agreement": agreement,
        "runs": runs,
        "commands": {
            "import": f"voxelbase import-nnunet {IMPORTED_MODEL} --name {IMPORTED_NAME}",
            "voxelbase": f"voxelbase predict --experiment {IMPORTED_NAME} --input IN --output OUT --folds 0 1 "
            "--device cpu [--no-tta]",
            "nnunet": f"nnUNetv2_predict_from_modelfolder -i IN -o OUT -m {IMPORTED_MODEL} -f 0 1 -device cpu "
            "-npp 1 -nps 1 --disable_progress_bar [--disable_tta]",
        },
    }


def _synth_benchmark(args: argparse.Namespace, work: Path) -> dict:
    """The randomly initialised network on the synthetic data (and the large-volume check)."""
    raw = synth(work / "synth", "--cases", "12", "--test-cases", "2", "--seed", "0")
    project = work / "project"
    vb = ["--project", str(project)]
    env = nnunet_env(work / "nnunet", raw)
    _run(voxelbase_command(*vb, "ingest", str(raw), "--name", "synth", "--workers", "2"))
    _run(voxelbase_command(*vb, "plan", "synth"))
    _run(nnunet_command("nnUNetv2_extract_fingerprint", "-d", str(NNUNET_ID), "-np", "2"), env=env)
    _run(nnunet_command("nnUNetv2_plan_experiment", "-d", str(NNUNET_ID)), env=env)
    from voxelbase.planning import load_plan

    nn_plans = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET_DIR / "nnUNetPlans.json").read_text())
    nn_cfg = nn_plans["configurations"]["3d_fullres"]
    plan = load_plan(project, "synth", configuration="3d_fullres")
    agree = {
        "patch_size": list(plan.patch_size) == nn_cfg["patch_size"],
        "architecture": plan.architecture.to_dict() == architecture_from_nnunet(nn_cfg["architecture"]),
    }
    intensities = nn_plans["foreground_intensity_properties_per_channel"]
    normalization = [  # nnU-Net's sampled intensity statistics, so both normalise identically
        {
            **entry.to_dict(),
            **{k: intensities[str(c)][k] for k in ("mean", "std", "percentile_00_5", "percentile_99_5")},
        }
        for c, entry in enumerate(plan.normalization)
    ]
    plan = {
        **plan.to_dict(),
        "patch_size": nn_cfg["patch_size"],
        "architecture": architecture_from_nnunet(nn_cfg["architecture"]),
        "normalization": normalization,
        "spacing": nn_cfg["spacing"],
    }
    parameters = _save_voxelbase_model(project, experiment="bench", plan=plan, seed=0)
    _nnunet_results(work, env, parameters, plan)

    test_dir = raw / "imagesTs"

    def ours(out: str, *extra: str) -> list[str]:
        return voxelbase_command(
            *vb,
            "predict",
            "-e",
            "bench",
            "--input",
            str(test_dir),
            "--output",
            str(work / out),
            "--device",
            "cpu",
            *extra,
        )

    def theirs(out: str, *extra: str) -> list[str]:
        return nnunet_command(
            "nnUNetv2_predict",
            "-i",
            str(test_dir),
            "-o",
            str(work / out),
            "-d",
            str(NNUNET_ID),
            "-c",
            "3d_fullres",
            "-f",
            "0",
            "-device",
            "cpu",
            *extra,
        )

    timed(ours("check_vb", "--no-tta", "--save-probabilities"))
    timed(theirs("check_nn", "--disable_tta", "--save_probabilities"), env=env)
    check = _agreement(work / "check_vb", work / "check_nn")
    print(f"same model check: {check}", flush=True)

    results: dict[str, list[dict]] = {}
    n_cases = len(list(test_dir.glob("*_0000.nii.gz")))
    for r in range(args.repeats):
        for tta in (False, True):
            sides = (("voxelbase", ours), ("nnunet", theirs))
            for side, command in sides if r % 2 == 0 else sides[::-1]:
                flag = () if tta else (("--no-tta",) if side == "voxelbase" else ("--disable_tta",))
                run = timed(command(f"{side}_{tta}_{r}", *flag), env=env if side == "nnunet" else None)
                results.setdefault(f"{side} tta={'on' if tta else 'off'}", []).append(run)
                print(f"{side} tta={tta}: {run}", flush=True)
    rows = []
    for tta in ("off", "on"):
        vb_runs, nn_runs = results[f"voxelbase tta={tta}"], results[f"nnunet tta={tta}"]
        vb_s = min(x["seconds"] for x in vb_runs) / n_cases
        nn_s = min(x["seconds"] for x in nn_runs) / n_cases
        vb_m = max(x["peak_rss_mb"] for x in vb_runs)
        nn_m = max(x["peak_rss_mb"] for x in nn_runs)
        rows.append(
            {
                "tta": tta,
                "voxelbase_s_per_case": vb_s,
                "nnunet_s_per_case": nn_s,
                "time_ratio": vb_s / nn_s,
                "voxelbase_peak_mb": vb_m,
                "nnunet_peak_mb": nn_m,
                "memory_ratio": vb_m / nn_m,
            }
        )
    print_table(
        f"inference, synth 3d_fullres patch {plan['patch_size']}, {n_cases} test cases, CPU "
        "(seconds include start-up; ratio = voxelbase / nnunet)",
        rows,
    )
    large = None
    if not args.no_large:
        large = _large_volume(work, project, plan, shape=args.large_shape, coarsen=args.large_coarsen)
        print_table("large volume, voxelbase predict --no-tta", [large])
    return {
        "plans_agree": agree,
        "same_model_check": check,
        "n_test_cases": n_cases,
        "results": rows,
        "runs": results,
        "large_volume": large,
        "commands": {
            "voxelbase": "voxelbase predict -e bench --input imagesTs --output OUT --device cpu [--no-tta]",
            "nnunet": "nnUNetv2_predict -i imagesTs -o OUT -d 901 -c 3d_fullres -f 0 -device cpu [--disable_tta]",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side and setting")
    parser.add_argument("--no-large", action="store_true", help="skip the large-volume memory check")
    parser.add_argument("--large-shape", type=int, nargs=3, default=[600, 512, 512], help="z y x voxels")
    parser.add_argument("--large-coarsen", type=float, default=2.0, help="plan spacing / image spacing")
    parser.add_argument("--work", type=Path, default=None, help="keep the work folder here")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--imported-only",
        action="store_true",
        help="run only the imported nnU-Net model section (writes benchmarks/out/inference_imported.json)",
    )
    which.add_argument("--no-imported", action="store_true", help="skip the imported nnU-Net model section")
    parser.add_argument(
        "--imported-cases", type=int, default=6, help="cases for the imported model (the 2 test images replicated)"
    )
    args = parser.parse_args()
    if not have_nnunet():
        raise SystemExit(f"nnU-Net is not installed at {NNUNET_VENV}: the side-by-side needs it")
    if args.imported_cases < 2:
        raise SystemExit("--imported-cases must be at least 2 (time per case is (T_N - T_1) / (N - 1))")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        payload = {} if args.imported_only else _synth_benchmark(args, work)
        if not args.no_imported:
            payload["imported_nnunet"] = _imported_model(
                work / "imported", n_cases=args.imported_cases, repeats=args.repeats
            )
        write_results("inference_imported" if args.imported_only else "inference", payload)


if __name__ == "__main__":
    main()
