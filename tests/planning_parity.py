"""Comparing Voxelbase plans with nnU-Net's plans file (shared by the planning tests).

`parity_problems` walks every key nnU-Net writes into a plans file. A key is either compared with its Voxelbase
counterpart (the plan's own value, or, for the network's fixed layer settings, what `voxelbase.networks.blocks`
builds) or listed in `NO_COUNTERPART` with the reason; a key that is neither is itself reported, so a new key in
nnU-Net's output cannot go unnoticed. `tests/fixtures/nnunet_demo_ct/NOTE.md` lists the mapping in prose.
"""

from __future__ import annotations

import inspect
import json
import math
import pydoc
from pathlib import Path

from torch import nn

from voxelbase.networks.blocks import ConvNormAct

FIXTURES = Path(__file__).parent / "fixtures" / "nnunet_synth_ct"
DEMO_FIXTURES = Path(__file__).parent / "fixtures" / "nnunet_demo_ct"

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
NETWORK_NAMES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "plain_unet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "resenc_unet",
}
# the one resampling function Voxelbase implements (engine/volumes/resample.py), for data, labels and probabilities
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
RESAMPLING_ORDERS = {"data": "image_order", "seg": "label_order", "probabilities": "probabilities_order"}
INTENSITY_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")  # what a Voxelbase normalization entry holds

# nnU-Net keys a Voxelbase plan has no counterpart for, and why
NO_COUNTERPART = {
    "dataset_name": "the dataset is named in the catalog (`dataset`), not by nnU-Net's DatasetXXX_Name",
    "plans_name": "a Voxelbase plan is named by preset and memory target (`plan`, e.g. nnunet-8gb)",
    "original_median_spacing_after_transp": "a fingerprint statistic: the `fingerprint` SQL view's median_spacing",
    "original_median_shape_after_transp": "a fingerprint statistic: the `fingerprint` SQL view's median shape",
    "image_reader_writer": "images are read once, at ingest (SimpleITK); plans never name a reader",
    "experiment_planner_used": "the planner is the preset (`preset`), compared through the plans it makes",
    "label_manager": "labels are the dataset's (`labels`, `num_classes`); there is one label handling",
    "data_identifier": "preprocessed data lives under <dataset>/<plan>/<configuration> in the store",
    "preprocessor_name": "there is one preprocessor (engine/preprocessing)",
    "_kw_requires_import": "nnU-Net's note on which kwargs are import paths; the network code imports its layers",
}


def fixture_dirs() -> list[Path]:
    return [FIXTURES] + sorted(p for p in (FIXTURES / "extra").iterdir() if p.is_dir()) + [DEMO_FIXTURES]


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


def _same_floats(have, want, rel_tol: float) -> bool:
    return len(have) == len(want) and all(math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0) for a, b in zip(have, want))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def network_layer_settings(conv_dims: int) -> dict:
    """What Voxelbase's networks fix for every conv layer, read off the block they are built from, in the terms
    of nnU-Net's arch_kwargs (nnU-Net writes import paths; Voxelbase's are resolved to compare classes)."""
    block = ConvNormAct(1, 1, conv_dims=conv_dims, kernel_size=[3] * conv_dims, stride=[1] * conv_dims)
    dropouts = [m for m in block.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    return {
        "conv_op": type(block.conv),
        "conv_bias": block.conv.bias is not None,
        "norm_op": type(block.norm),
        "norm_op_kwargs": {"eps": block.norm.eps, "affine": block.norm.affine},
        "dropout_op": type(dropouts[0]) if dropouts else None,
        "nonlin": type(block.act),
        "nonlin_kwargs": {"inplace": block.act.inplace, "negative_slope": block.act.negative_slope},
    }


def _layer_problems(name: str, arch: dict, conv_dims: int) -> list[str]:
    """nnU-Net's fixed layer kwargs against the layers Voxelbase builds."""
    mine = network_layer_settings(conv_dims)
    problems = []
    for key in ("conv_op", "norm_op", "nonlin"):
        theirs = pydoc.locate(arch[key]) if arch[key] is not None else None
        if theirs is not mine[key]:
            problems.append(f"{name}: {key} ours {_class_path(mine[key])} != nnU-Net {arch[key]}")
    if arch["conv_bias"] != mine["conv_bias"]:
        problems.append(f"{name}: conv_bias ours {mine['conv_bias']} != nnU-Net {arch['conv_bias']}")
    if (arch["norm_op_kwargs"] or {}) != mine["norm_op_kwargs"]:
        problems.append(f"{name}: norm_op_kwargs ours {mine['norm_op_kwargs']} != nnU-Net {arch['norm_op_kwargs']}")
    if arch["dropout_op"] is not None or arch["dropout_op_kwargs"] is not None or mine["dropout_op"] is not None:
        problems.append(
            f"{name}: dropout ours {mine['dropout_op']} != nnU-Net {arch['dropout_op']} {arch['dropout_op_kwargs']}"
        )
    # nonlin kwargs nnU-Net leaves out take the layer's defaults (LeakyReLU: negative_slope=0.01)
    nonlin = pydoc.locate(arch["nonlin"])
    defaults = {
        k: p.default
        for k, p in inspect.signature(nonlin).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    wanted = {**defaults, **(arch["nonlin_kwargs"] or {})}
    wanted = {k: wanted[k] for k in mine["nonlin_kwargs"] if k in wanted}
    if wanted != mine["nonlin_kwargs"]:
        problems.append(f"{name}: nonlin_kwargs ours {mine['nonlin_kwargs']} != nnU-Net {wanted}")
    return problems


def parity_problems(
    ours: dict[str, dict],
    nnunet_plans: dict,
    *,
    complete: bool = True,
    spacing_rel_tol: float = 1e-9,
    intensity_tolerance: float = 0.0,
) -> list[str]:
    """Every difference between our configurations and nnU-Net's plans; empty when on par.

    `complete`: nnU-Net's plans are a whole plans file, so every key it writes must be there and accounted for
    (False for reduced plans that keep only some keys; those are compared where present).
    `spacing_rel_tol`: relative tolerance on spacings and median image sizes (float noise of the fingerprint).
    `intensity_tolerance`: allowed difference of a CT channel's foreground statistics, as a fraction of nnU-Net's
    0.5-99.5 percentile range (0: exactly nnU-Net's numbers, as when planning from nnU-Net's own fingerprint).
    """
    problems: list[str] = []

    def missing(where: str, key: str) -> None:
        if complete:
            problems.append(f"{where}: nnU-Net's plan has no {key!r} (expected a whole plans file)")

    compared_top = {
        "transpose_forward",
        "transpose_backward",
        "configurations",
        "foreground_intensity_properties_per_channel",
    }
    for key in nnunet_plans:
        if key not in compared_top and key not in NO_COUNTERPART:
            problems.append(f"plans: nnU-Net key {key!r} is neither compared nor listed as without counterpart")
    for key in compared_top | {k for k in NO_COUNTERPART if k in ("dataset_name", "plans_name", "label_manager")}:
        if key not in nnunet_plans:
            missing("plans", key)

    forward = nnunet_plans["transpose_forward"]
    theirs = nnunet_plans["configurations"]
    if set(ours) != set(theirs):
        problems.append(f"configurations differ: ours {sorted(ours)}, nnU-Net {sorted(theirs)}")
    for name, ref in theirs.items():
        if name not in ours:
            continue
        mine = ours[name]
        if mine["transpose_forward"] != forward:
            problems.append(f"{name}: transpose_forward ours {mine['transpose_forward']} != nnU-Net {forward}")
        if "transpose_backward" in nnunet_plans:
            backward = [mine["transpose_forward"].index(a) for a in range(len(mine["transpose_forward"]))]
            if backward != nnunet_plans["transpose_backward"]:
                problems.append(
                    f"{name}: transpose_backward (inverse of ours) {backward} != nnU-Net "
                    f"{nnunet_plans['transpose_backward']}"
                )
        if "inherits_from" in ref:
            parent = theirs[ref["inherits_from"]]
            if mine["previous_stage"] != ref["previous_stage"]:
                problems.append(f"{name}: previous_stage {mine['previous_stage']} != {ref['previous_stage']}")
            ref = {**parent, **{k: v for k, v in ref.items() if k not in ("inherits_from", "previous_stage")}}
        else:
            if mine["previous_stage"] is not None:
                problems.append(f"{name}: previous_stage ours {mine['previous_stage']} != nnU-Net None")
        if "next_stage" in ref and mine.get("next_stage") != ref["next_stage"]:
            problems.append(f"{name}: next_stage ours {mine.get('next_stage')} != nnU-Net {ref['next_stage']}")
        problems += _configuration_problems(
            name, mine, ref, forward, complete=complete, spacing_rel_tol=spacing_rel_tol
        )
    intensity = nnunet_plans.get("foreground_intensity_properties_per_channel")
    if intensity is not None:
        for name, mine in ours.items():
            for channel, entry in enumerate(mine["normalization"]):
                stats = intensity.get(str(channel))
                if stats is None:
                    problems.append(f"{name}: nnU-Net has no foreground intensity properties for channel {channel}")
                    continue
                allowed = intensity_tolerance * (stats["percentile_99_5"] - stats["percentile_00_5"])
                for key in INTENSITY_KEYS:
                    if entry[key] is None or abs(entry[key] - stats[key]) > allowed:
                        problems.append(
                            f"{name}: channel {channel} {key} ours {entry[key]} != nnU-Net {stats[key]}"
                            + (f" (allowed difference {allowed:g})" if allowed else "")
                        )
    return problems


def _configuration_problems(
    name: str, mine: dict, ref: dict, forward: list[int], *, complete: bool, spacing_rel_tol: float
) -> list[str]:
    problems: list[str] = []
    compared = {
        "batch_size",
        "patch_size",
        "median_image_size_in_voxels",
        "spacing",
        "normalization_schemes",
        "use_mask_for_norm",
        "batch_dice",
        "architecture",
        *(f"resampling_fn_{kind}" for kind in RESAMPLING_ORDERS),
        *(f"resampling_fn_{kind}_kwargs" for kind in RESAMPLING_ORDERS),
    }
    for key in ref:
        if key not in compared and key not in NO_COUNTERPART and key not in ("next_stage",):
            problems.append(f"{name}: nnU-Net key {key!r} is neither compared nor listed as without counterpart")
    for key in sorted(compared | {"data_identifier", "preprocessor_name"}):
        if key not in ref and complete:
            problems.append(f"{name}: nnU-Net's plan has no {key!r} (expected a whole plans file)")

    def check(key: str, have, want) -> None:
        if have != want:
            problems.append(f"{name}: {key} ours {have} != nnU-Net {want}")

    if "patch_size" in ref:
        check("patch_size", mine["patch_size"], _zyx(ref["patch_size"], forward))
    if "batch_size" in ref:
        check("batch_size", mine["batch_size"], ref["batch_size"])
    if "batch_dice" in ref:
        check("batch_dice", mine["batch_dice"], ref["batch_dice"])
    if "normalization_schemes" in ref:
        check(
            "normalization_schemes",
            [n["scheme"] for n in mine["normalization"]],
            [SCHEME_NAMES.get(s, s) for s in ref["normalization_schemes"]],
        )
    if "use_mask_for_norm" in ref:
        check(
            "use_mask_for_norm", [n["use_nonzero_mask"] for n in mine["normalization"]], list(ref["use_mask_for_norm"])
        )
    for key in ("spacing", "median_image_size_in_voxels"):
        if key in ref:
            want = _zyx(ref[key], forward)
            if not _same_floats(mine[key], want, spacing_rel_tol):
                problems.append(f"{name}: {key} ours {mine[key]} != nnU-Net {want}")

    resampling = mine["resampling"]
    for kind, order_key in RESAMPLING_ORDERS.items():
        fn_key, kwargs_key = f"resampling_fn_{kind}", f"resampling_fn_{kind}_kwargs"
        if fn_key in ref:
            check(fn_key, RESAMPLING_FUNCTION, ref[fn_key])
        if kwargs_key in ref:
            have = {
                "is_seg": kind == "seg",
                "order": resampling[order_key],
                "order_z": resampling["order_z"],
                "force_separate_z": resampling["force_separate_z"],
            }
            check(kwargs_key, have, ref[kwargs_key])

    if "architecture" in ref:
        problems += _architecture_problems(name, mine["architecture"], ref["architecture"], forward, complete=complete)
    return problems


_ARCH_KEYS = {
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
}


def _architecture_problems(name: str, mine: dict, ref: dict, forward: list[int], *, complete: bool) -> list[str]:
    problems: list[str] = []
    for key in ref:
        if key not in ("network_class_name", "arch_kwargs") and key not in NO_COUNTERPART:
            problems.append(f"{name}: nnU-Net architecture key {key!r} is neither compared nor listed")
    if "network_class_name" in ref:
        want = NETWORK_NAMES.get(ref["network_class_name"], ref["network_class_name"])
        if mine["network"] != want:
            problems.append(f"{name}: network ours {mine['network']} != nnU-Net {ref['network_class_name']}")
    arch = ref["arch_kwargs"]
    blocks = "n_blocks_per_stage" if "n_blocks_per_stage" in arch else "n_conv_per_stage"
    for key in arch:
        if key not in _ARCH_KEYS and key != blocks:
            problems.append(f"{name}: nnU-Net arch_kwargs key {key!r} is neither compared nor listed")
    if complete:
        for key in sorted(_ARCH_KEYS | {blocks}):
            if key not in arch:
                problems.append(f"{name}: nnU-Net's arch_kwargs have no {key!r} (expected a whole plans file)")
    expected = {
        "n_stages": arch.get("n_stages"),
        "features_per_stage": list(arch["features_per_stage"]) if "features_per_stage" in arch else None,
        "kernel_sizes": [_zyx(k, forward) for k in arch["kernel_sizes"]] if "kernel_sizes" in arch else None,
        "strides": [_zyx(s, forward) for s in arch["strides"]] if "strides" in arch else None,
        "n_conv_per_stage": list(arch[blocks]) if blocks in arch else None,
        "n_conv_per_stage_decoder": list(arch["n_conv_per_stage_decoder"])
        if "n_conv_per_stage_decoder" in arch
        else None,
    }
    for key, want in expected.items():
        if want is not None and mine[key] != want:
            problems.append(f"{name}: {key} ours {mine[key]} != nnU-Net {want}")
    if arch.get("strides"):
        check_dims = len(arch["strides"][0])
        if mine["conv_dims"] != check_dims:
            problems.append(f"{name}: conv_dims ours {mine['conv_dims']} != nnU-Net {check_dims}")
    if all(k in arch for k in _ARCH_KEYS):
        problems += _layer_problems(name, arch, mine["conv_dims"])
    return problems
