"""Class probabilities of a preprocessed image: sliding-window softmax, averaged over a configuration's folds.

The one forward path of end-of-fold validation (evaluation) and `voxelbase predict` (inference): both hand a
preprocessed (C, Z, Y, X) image at plan spacing and get (K, Z, Y, X) probabilities at plan spacing back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.inference.sliding_window import predict_logits
from engine.plan import ConfigurationPlan
from engine.spec import ExperimentSpec, mirror_axes_for


def predict_probabilities(
    networks: Sequence[torch.nn.Module],
    image: np.ndarray,
    *,
    plan: ConfigurationPlan,
    spec: ExperimentSpec,
    device: torch.device,
    tta: bool,
) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) at plan spacing, averaged over `networks` (folds).

    Windows, step, Gaussian weighting and batching come from the spec's `[predict]`; test-time mirroring (when
    `tta`) over the axes training mirrored (`[augment] mirror_axes`).
    """
    patch = plan.patch_size
    mirror = mirror_axes_for(len(patch), spec.augment) if tta else None
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
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
        probabilities = torch.softmax(logits, 0)
        total = probabilities if total is None else total.add_(probabilities)
    return (total / len(networks)).numpy()
