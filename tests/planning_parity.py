"""Comparing Voxelbase plans with nnU-Net's plans file (shared by the planning tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "nnunet_synth_ct"

PLANS_FILES = {
    "nnunet": "nnUNetPlans.json",
    "resenc-m": "nnUNetResEncUNetMPlans.json",
    "resenc-l": "nnUNetResEncUNetLPlans.json",
    "resenc-xl": "nnUNetResEncUNetXLPlans.json",
}
SCHEME_NAMES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "noscale",
    "RescaleTo01Normalization": "rescale_to_0_1",
    "RGBTo01Normalization": "rgb_to_0_1",
}


def fixture_dirs() -> list[Path]:
    return [FIXTURES] + sorted(p for p in (FIXTURES / "extra").iterdir() if p.is_dir())


def fingerprint_from_nnunet(folder: Path) -> dict:
    """nnU-Net's dataset_fingerprint.json plus what its planner reads from dataset.json."""
    fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    fingerprint.update(
        channel_names=dataset_json["channel_names"],
        labels=dataset_json["labels"],
        num_training=dataset_json["numTraining"],
    )
    return fingerprint


def _zyx(values: list, forward: list[int]) -> list:
    """nnU-Net states 3d values in its transposed order; put them back in (z, y, x)."""
    if len(values) != 3:
        return list(values)
    out = [None] * 3
    for i, axis in enumerate(forward):
        out[axis] = values[i]
    return out


def same_4_digits(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=5e-4, abs_tol=0.0)


def parity_problems(ours: dict[str, dict], nnunet_plans: dict) -> list[str]:
    """Every difference that matters between our configurations and nnU-Net's; empty when on par."""
    forward = nnunet_plans["transpose_forward"]
    problems = []
    theirs = nnunet_plans["configurations"]
    if set(ours) != set(theirs):
        problems.append(f"configurations differ: ours {sorted(ours)}, nnU-Net {sorted(theirs)}")
    for name, ref in theirs.items():
        if name not in ours:
            continue
        mine = ours[name]
        if "inherits_from" in ref:
            parent = theirs[ref["inherits_from"]]
            if mine["previous_stage"] != ref["previous_stage"]:
                problems.append(f"{name}: previous_stage {mine['previous_stage']} != {ref['previous_stage']}")
            ref = parent
        arch = ref["architecture"]["arch_kwargs"]
        expected = {
            "patch_size": _zyx(ref["patch_size"], forward),
            "batch_size": ref["batch_size"],
            "strides": [_zyx(s, forward) for s in arch["strides"]],
            "kernel_sizes": [_zyx(k, forward) for k in arch["kernel_sizes"]],
            "features_per_stage": list(arch["features_per_stage"]),
            "n_conv_per_stage": list(arch.get("n_conv_per_stage", arch.get("n_blocks_per_stage"))),
            "n_conv_per_stage_decoder": list(arch["n_conv_per_stage_decoder"]),
            "normalization": [SCHEME_NAMES[s] for s in ref["normalization_schemes"]],
            "use_nonzero_mask": list(ref["use_mask_for_norm"]),
            "batch_dice": ref["batch_dice"],
        }
        got = {
            "patch_size": mine["patch_size"],
            "batch_size": mine["batch_size"],
            "strides": mine["architecture"]["strides"],
            "kernel_sizes": mine["architecture"]["kernel_sizes"],
            "features_per_stage": mine["architecture"]["features_per_stage"],
            "n_conv_per_stage": mine["architecture"]["n_conv_per_stage"],
            "n_conv_per_stage_decoder": mine["architecture"]["n_conv_per_stage_decoder"],
            "normalization": [n["scheme"] for n in mine["normalization"]],
            "use_nonzero_mask": [n["use_nonzero_mask"] for n in mine["normalization"]],
            "batch_dice": mine["batch_dice"],
        }
        for key, value in expected.items():
            if got[key] != value:
                problems.append(f"{name}: {key} ours {got[key]} != nnU-Net {value}")
        for key in ("spacing", "median_image_size_in_voxels"):
            want = _zyx(ref[key], forward)
            have = mine[key]
            if len(want) != len(have) or not all(same_4_digits(a, b) for a, b in zip(have, want)):
                problems.append(f"{name}: {key} ours {have} != nnU-Net {want}")
        network = "resenc_unet" if "ResidualEncoderUNet" in ref["architecture"]["network_class_name"] else "plain_unet"
        if mine["architecture"]["network"] != network:
            problems.append(f"{name}: network {mine['architecture']['network']} != {network}")
    return problems
