"""Class probabilities of a preprocessed image: sliding-window softmax, averaged over a configuration's folds.

The one forward path of end-of-fold validation (evaluation) and `voxelbase predict` (inference): both hand a
preprocessed (C, Z, Y, X) image at plan spacing and get (K, Z, Y, X) probabilities at plan spacing back.

A plan imported from nnU-Net (`inference_space: logits` among its extra keys) is predicted as nnU-Net's predictor
does it: the folds' logits are averaged (not their softmax), and the logits are what is resampled back to the
image before the softmax (`revert_logits`); its `mirror_axes` are the axes nnU-Net's trainer allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from voxelbase.inference.nnunet_window import nnunet_fold_logits
from voxelbase.inference.sliding_window import predict_logits
from voxelbase.plan import ConfigurationPlan
from voxelbase.spec import ExperimentSpec, mirror_axes_for
from voxelbase.volumes.revert import resample_class_back, to_case_axes


def predicts_logits(plan: ConfigurationPlan) -> bool:
    """Whether the plan's class maps stay logits until they are back in the image's geometry (nnU-Net's way)."""
    return plan.extra.get("inference_space") == "logits"


def _mirror_axes(plan: ConfigurationPlan, spec: ExperimentSpec) -> tuple[int, ...]:
    axes = plan.extra.get("mirror_axes")
    if axes is None:
        return mirror_axes_for(len(plan.patch_size), spec.augment)
    offset = 3 - len(plan.patch_size)
    return tuple(int(a) - offset for a in sorted(set(axes)) if int(a) >= offset)


def revert_logits(logits: np.ndarray, *, properties: dict, plan: ConfigurationPlan) -> np.ndarray:
    """(K, Z, Y, X) logits at plan spacing -> float32 probabilities (K, *shape_before_cropping), as nnU-Net
    reverts them: logits resampled per class, then its inference nonlinearity (softmax; a region plan's per-region
    sigmoid), then uncropped (background 1 outside the crop box; a region plan's maps 0 there)."""
    # nnU-Net resamples its float16 logits into a float16 array, then applies the nonlinearity in float32
    resampled = torch.from_numpy(
        np.stack(
            [resample_class_back(k, properties=properties, plan=plan, dtype=np.float16) for k in np.asarray(logits)]
        )
    ).float()
    probabilities = (torch.sigmoid(resampled) if plan.has_regions else torch.softmax(resampled, 0)).numpy()
    out = np.zeros((probabilities.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    if not plan.has_regions:
        out[0] = 1.0
    b = [int(v) for v in properties["bbox"]]
    out[:, b[0] : b[1], b[2] : b[3], b[4] : b[5]] = probabilities
    return to_case_axes(out, plan)


def predict_probabilities(
    networks: Sequence[torch.nn.Module],
    image: np.ndarray,
    *,
    plan: ConfigurationPlan,
    spec: ExperimentSpec,
    device: torch.device,
    tta: bool,
) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) at plan spacing, averaged over `networks` (folds); per-region sigmoid maps
    (R, Z, Y, X) for a region plan; for a plan that `predicts_logits`, the averaged logits instead.

    Windows, step, Gaussian weighting and batching come from the spec's `[predict]`; test-time mirroring (when
    `tta`) over the axes training mirrored (`[augment] mirror_axes`).
    """
    patch = plan.patch_size
    mirror = _mirror_axes(plan, spec) if tta else None
    logits_out = predicts_logits(plan)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if logits_out:
        logits = nnunet_fold_logits(
            list(networks),
            tensor,
            patch_size=patch,
            step_size=spec.predict.step_size,
            mirror_axes=mirror,
            use_gaussian=spec.predict.use_gaussian,
            sigma_scale=spec.predict.gaussian_sigma_scale,
            device=device,
        )
        return logits.float().numpy()  # float16 values, as nnU-Net hands them to its export
    total = None
    for network in networks:
        logits = predict_logits(
            network,
            tensor,
            patch_size=patch,
            step_size=spec.predict.step_size,
            batch_windows=spec.predict.batch_windows,
            mirror_axes=mirror,
            device=device,
            use_gaussian=spec.predict.use_gaussian,
            gaussian_sigma_scale=spec.predict.gaussian_sigma_scale,
        )
        # region plans: one independent sigmoid per region (nnU-Net's inference nonlinearity for regions)
        probabilities = torch.sigmoid(logits) if plan.has_regions else torch.softmax(logits, 0)
        total = probabilities if total is None else total.add_(probabilities)
    return (total / len(networks)).numpy()
