"""Planning rules: from a dataset fingerprint to one plan per configuration, as nnU-Net v2 decides them.

Pure functions over a fingerprint dict (the shape `fingerprint.load_fingerprint` returns; nnU-Net's own
`dataset_fingerprint.json` plus the channel names, labels and number of training cases from its
dataset.json). Nothing here reads files or the catalog, so the rules can be checked against nnU-Net's
output on their own.

Like nnU-Net, the rules work in a transposed axis order whose first axis is the one with the coarsest
target spacing (the 2d configuration slices along it); the plans they return are stated back in (z, y, x)
order, with `transpose_forward` recorded in every plan.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import numpy as np

from voxelbase.plan import ANISOTROPY_THRESHOLD, DEFAULT_RESAMPLING, output_count, region_names_of
from voxelbase.planning.presets import PlanningError, Preset, get_preset
from voxelbase.planning.topology import (
    MIN_FEATURE_MAP_EDGE,
    feature_map_elements,
    features_per_stage,
    initial_patch_size,
    pool_and_conv_layout,
)

LOWRES_THRESHOLD = 0.25  # a lowres stage when the fullres patch covers less than this of the median image
LOWRES_SPACING_STEP = 1.03
NONZERO_MASK_THRESHOLD = 0.75  # crop keeps less than this of the image -> normalise inside the nonzero mask

# channel name (case-insensitive) -> normalization scheme; anything else is z-scored per image
_SCHEME_BY_CHANNEL = {
    "ct": "ct",
    "nonorm": "noscale",
    "zscore": "zscore",
    "rescale_to_0_1": "rescale_to_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
}
# schemes that leave voxels outside the nonzero mask at 0 and may therefore use it
_MASKABLE_SCHEMES = {"zscore"}


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Median spacing, except on a clearly anisotropic axis, which gets its 10th percentile.

    Taking the median on an axis that is both coarse (> 3x the others) and short in voxels (3x fewer) would
    make the thick-slice cases dominate and cost interpolation artifacts; the 10th percentile keeps more
    slices, but never finer than the other axes.
    """
    target = np.percentile(spacings, 50, 0)
    median_shape = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    other_spacings = [target[a] for a in others]
    other_sizes = [median_shape[a] for a in others]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(other_spacings)
    aniso_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(other_sizes)
    if aniso_spacing and aniso_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < max(other_spacings):
            coarse = max(max(other_spacings), coarse) + 1e-5
        target[worst] = coarse
    return target


def _transpose(spacing: np.ndarray) -> tuple[list[int], list[int]]:
    coarsest = int(np.argmax(spacing))
    forward = [coarsest] + [a for a in range(3) if a != coarsest]
    backward = [forward.index(a) for a in range(3)]
    return forward, backward


def normalization(fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """Per channel: CT channels are clipped to the foreground 0.5-99.5 percentiles and scaled by the dataset's
    foreground mean/std; other named schemes as nnU-Net names them; anything else is z-scored per image,
    inside the nonzero mask when cropping removed a lot (then the background is outside the body)."""
    use_mask = float(fingerprint["median_relative_size_after_cropping"]) < NONZERO_MASK_THRESHOLD
    props = fingerprint.get("foreground_intensity_properties_per_channel", {})
    result = []
    for key, name in sorted(fingerprint["channel_names"].items(), key=lambda kv: int(kv[0])):
        scheme = _SCHEME_BY_CHANNEL.get(str(name).casefold(), "zscore")
        stats = props.get(str(key), props.get(int(key), {})) if isinstance(props, dict) else {}
        result.append(
            {
                "scheme": scheme,
                "use_nonzero_mask": bool(use_mask and scheme in _MASKABLE_SCHEMES),
                "mean": stats.get("mean"),
                "std": stats.get("std"),
                "percentile_00_5": stats.get("percentile_00_5"),
                "percentile_99_5": stats.get("percentile_99_5"),
            }
        )
    return result


def _estimate(patch_size, layout, preset: Preset, *, features, num_outputs: int, cache: dict) -> int:
    key = (tuple(int(p) for p in patch_size), layout.strides)
    if key not in cache:
        n = layout.n_stages
        cache[key] = feature_map_elements(
            patch_size,
            strides=layout.strides,
            features=features,
            n_conv_encoder=preset.encoder_blocks[:n],
            n_conv_decoder=preset.decoder_convs[: n - 1],
            num_classes=num_outputs,
            residual=preset.residual,
        )
    return cache[key]


def plan_configuration(
    spacing: np.ndarray,
    median_shape,
    *,
    preset: Preset,
    gpu_memory_gb: float,
    num_outputs: int,
    approx_dataset_voxels: float,
    cache: dict,
) -> dict[str, Any]:
    """Patch size, batch size and topology for one configuration, in the transposed axis order.

    Start from a large patch shaped like the inverse spacing (clipped to the median image), then shrink the
    axis that is largest relative to the median image, one pooling multiple at a time, until the network's
    feature maps fit the memory target. Spare memory goes into the batch size, capped so that one batch
    does not see more than `max_dataset_covered` of the dataset.
    """
    dim = len(spacing)
    cap = preset.max_features_2d if dim == 2 else preset.max_features_3d
    median = list(median_shape)[:dim]
    layout = pool_and_conv_layout(spacing, initial_patch_size(spacing, median))
    if layout.n_stages < 2:
        raise PlanningError(
            f"the median image ({', '.join(f'{m:g}' for m in median)} voxels) is too small for a U-Net: "
            f"no axis reaches {2 * MIN_FEATURE_MAP_EDGE} voxels"
        )
    patch = list(layout.patch_size)
    features = features_per_stage(layout.n_stages, base=preset.base_features, cap=cap)
    estimate = _estimate(patch, layout, preset, features=features, num_outputs=num_outputs, cache=cache)
    reference_elements = preset.reference_elements_2d if dim == 2 else preset.reference_elements_3d
    reference = reference_elements * (gpu_memory_gb / preset.reference_gb)
    ref_batch = preset.ref_batch_2d if dim == 2 else preset.ref_batch_3d

    def too_big(estimate: int) -> bool:
        if preset.shrink_for_min_batch:
            return estimate / ref_batch * preset.min_batch_size > reference
        return estimate > reference

    while too_big(estimate):
        axis = int(np.argsort([p / m for p, m in zip(patch, median)])[-1])
        # step by the divisor the *smaller* patch would need, so no valid size is skipped (224 between 256 and 192)
        trial = list(patch)
        trial[axis] -= layout.divisor[axis]
        step = pool_and_conv_layout(spacing, trial).divisor[axis]
        patch[axis] -= step
        if patch[axis] < 1:
            raise PlanningError(_too_small(gpu_memory_gb))
        layout = pool_and_conv_layout(spacing, patch)
        if layout.n_stages < 2:
            raise PlanningError(_too_small(gpu_memory_gb))
        patch = list(layout.patch_size)
        features = features_per_stage(layout.n_stages, base=preset.base_features, cap=cap)
        estimate = _estimate(patch, layout, preset, features=features, num_outputs=num_outputs, cache=cache)

    batch_size = round((reference / estimate) * ref_batch)
    batch_cap = round(approx_dataset_voxels * preset.max_dataset_covered / np.prod(patch, dtype=np.float64))
    batch_size = max(min(batch_size, batch_cap), preset.min_batch_size)
    n = layout.n_stages
    return {
        "spacing": [float(s) for s in spacing],
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch_size),
        "median_image_size_in_voxels": [float(m) for m in median],
        "strides": [list(s) for s in layout.strides],
        "kernel_sizes": [list(k) for k in layout.kernel_sizes],
        "features_per_stage": list(features),
        "n_conv_per_stage": list(preset.encoder_blocks[:n]),
        "n_conv_per_stage_decoder": list(preset.decoder_convs[: n - 1]),
        "vram_estimate_elements": int(estimate),
    }


def _too_small(gpu_memory_gb: float) -> str:
    return (
        f"GPU memory target {gpu_memory_gb:g} GB is too small for even the smallest patch "
        f"(a U-Net with one pooling step does not fit); use a larger --gpu-memory"
    )


def _untranspose(values: list, backward: list[int]) -> list:
    return [values[b] for b in backward]


def _to_zyx(config: dict[str, Any], *, dim: int, backward: list[int]) -> dict[str, Any]:
    """State a transposed 3d configuration in (z, y, x); 2d ones keep the in-plane axes' natural order."""
    if dim == 2:
        return config
    out = dict(config)
    for key in ("spacing", "patch_size", "median_image_size_in_voxels"):
        out[key] = _untranspose(config[key], backward)
    out["strides"] = [_untranspose(s, backward) for s in config["strides"]]
    out["kernel_sizes"] = [_untranspose(k, backward) for k in config["kernel_sizes"]]
    return out


def _num_outputs(labels: dict[str, Any]) -> int:
    """Output channels nnU-Net budgets memory for: one per declared label entry."""
    return len(labels)


def plan_experiment(
    fingerprint: dict[str, Any], *, preset: str = "nnunet", gpu_memory_gb: float | None = None
) -> dict[str, dict[str, Any]]:
    """All configurations nnU-Net's planner would make for this fingerprint, keyed by configuration name.

    Always `2d`; `3d_fullres` unless the data is a stack of single slices; `3d_lowres` and
    `3d_cascade_fullres` when the fullres patch covers less than a quarter of the median image and a
    coarser spacing at least halves the image.
    """
    chosen = get_preset(preset)
    memory = float(chosen.default_gpu_memory_gb if gpu_memory_gb is None else gpu_memory_gb)
    if not memory > 0:
        raise PlanningError(f"GPU memory target must be positive, got {gpu_memory_gb!r}")
    spacings = np.vstack([np.asarray(s, dtype=np.float64) for s in fingerprint["spacings"]])
    shapes = np.vstack([np.asarray(s, dtype=np.float64) for s in fingerprint["shapes_after_crop"]])
    labels = dict(fingerprint["labels"])
    num_training = int(fingerprint["num_training"])
    num_outputs = _num_outputs(labels)
    cache: dict = {}

    fullres_spacing = target_spacing(spacings, shapes)
    forward, backward = _transpose(fullres_spacing)
    spacing_t = fullres_spacing[forward]
    new_shapes = [
        np.array([int(round(sp / t * sh)) for sp, t, sh in zip(spacing, fullres_spacing, shape)])
        for spacing, shape in zip(fingerprint["spacings"], fingerprint["shapes_after_crop"])
    ]
    median_t = np.median(new_shapes, 0)[forward]
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * num_training)
    common = {"preset": chosen, "gpu_memory_gb": memory, "num_outputs": num_outputs, "cache": cache}

    configs: dict[str, dict[str, Any]] = {}
    fullres = lowres = None
    if median_t[0] != 1:
        fullres = plan_configuration(spacing_t, median_t, approx_dataset_voxels=dataset_voxels, **common)
        median_voxels = np.prod(median_t, dtype=np.float64)
        patch_voxels = np.prod(fullres["patch_size"], dtype=np.float64)
        lowres_spacing = deepcopy(spacing_t)
        while patch_voxels / median_voxels < LOWRES_THRESHOLD:
            # coarsen the fine axes first until every axis is within 2x of the coarsest, then all together
            coarsest = max(lowres_spacing)
            if np.any((coarsest / lowres_spacing) > 2):
                lowres_spacing[(coarsest / lowres_spacing) > 2] *= LOWRES_SPACING_STEP
            else:
                lowres_spacing *= LOWRES_SPACING_STEP
            scaled = spacing_t / lowres_spacing * median_t
            median_voxels = np.prod(scaled, dtype=np.float64)
            lowres = plan_configuration(
                lowres_spacing,
                tuple(round(i) for i in scaled),
                approx_dataset_voxels=float(median_voxels * num_training),
                **common,
            )
            patch_voxels = np.prod(lowres["patch_size"], dtype=np.int64)
        if np.prod(median_t, dtype=np.float64) / median_voxels < 2:
            lowres = None  # not enough smaller than fullres to be worth a stage
        fullres["batch_dice"] = lowres is not None
        if lowres is not None:
            lowres["batch_dice"] = False

    config_2d = plan_configuration(spacing_t[1:], median_t[1:], approx_dataset_voxels=dataset_voxels, **common)
    config_2d["batch_dice"] = True
    configs["2d"] = _finish(config_2d, fingerprint, chosen, memory, "2d", forward, backward)
    if lowres is not None:
        configs["3d_lowres"] = _finish(lowres, fingerprint, chosen, memory, "3d_lowres", forward, backward)
        configs["3d_lowres"]["next_stage"] = "3d_cascade_fullres"
    if fullres is not None:
        configs["3d_fullres"] = _finish(fullres, fingerprint, chosen, memory, "3d_fullres", forward, backward)
        if lowres is not None:
            cascade = deepcopy(configs["3d_fullres"])
            cascade["configuration"] = "3d_cascade_fullres"
            cascade["previous_stage"] = "3d_lowres"
            configs["3d_cascade_fullres"] = cascade
    return configs


def _finish(
    config: dict[str, Any],
    fingerprint: dict[str, Any],
    preset: Preset,
    memory: float,
    name: str,
    forward: list[int],
    backward: list[int],
) -> dict[str, Any]:
    """One configuration as the plan artifact contract states it."""
    dim = len(config["spacing"])
    config = _to_zyx(config, dim=dim, backward=backward)
    labels = dict(fingerprint["labels"])
    n_stages = len(config["strides"])
    return {
        "dataset": fingerprint.get("dataset"),
        "plan": fingerprint.get("plan"),
        "configuration": name,
        "preset": preset.name,
        "gpu_memory_gb": memory,
        "dataset_hash": fingerprint.get("dataset_hash"),
        "spacing": config["spacing"],
        "patch_size": config["patch_size"],
        "batch_size": config["batch_size"],
        "median_image_size_in_voxels": config["median_image_size_in_voxels"],
        "batch_dice": bool(config["batch_dice"]),
        "n_channels": len(fingerprint["channel_names"]),
        "labels": labels,
        "num_classes": output_count(labels),
        "normalization": normalization(fingerprint),
        "resampling": dict(DEFAULT_RESAMPLING),
        "architecture": {
            "network": preset.network,
            "conv_dims": dim,
            "n_stages": n_stages,
            "features_per_stage": config["features_per_stage"],
            "kernel_sizes": config["kernel_sizes"],
            "strides": config["strides"],
            "n_conv_per_stage": config["n_conv_per_stage"],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
        },
        "previous_stage": None,
        "transpose_forward": list(forward),
        "vram_estimate_elements": config["vram_estimate_elements"],
        **(
            {
                "regions_class_order": list(fingerprint["regions_class_order"]),
                # the output order, kept apart from the labels mapping, whose key order JSON may not keep
                "region_names": region_names_of(labels),
            }
            if fingerprint.get("regions_class_order")
            else {}
        ),
    }
