"""Planner presets: nnU-Net's default planner and its residual-encoder planners, as data.

Each preset is the set of constants one nnU-Net planner class hard-codes. The reference values are counts
of feature-map elements (see topology.feature_map_elements) that nnU-Net calibrated to fit a batch of
`ref_batch_*` in `reference_gb` of GPU memory; a different memory target scales them linearly.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxelbase.errors import VoxelbaseError


class PlanningError(VoxelbaseError, ValueError):
    """The dataset or the options cannot be planned; the message says why and what to do."""


@dataclass(frozen=True)
class Preset:
    name: str
    network: str  # 'plain_unet' or 'resenc_unet'
    default_gpu_memory_gb: float
    reference_gb: float
    reference_elements_3d: float
    reference_elements_2d: float
    max_dataset_covered: float  # a batch sees at most this fraction of the dataset's voxels
    encoder_blocks: tuple[int, ...]  # convs (plain) or residual blocks (resenc) per encoder stage
    decoder_convs: tuple[int, ...]
    # nnU-Net's default planner shrinks the patch until a batch of `min_batch_size` fits the reference scaled
    # from `ref_batch_*` (so 2d patches may use six twelfths of the reference); its ResEnc planners shrink until
    # the reference batch itself fits
    shrink_for_min_batch: bool = False
    ref_batch_3d: int = 2
    ref_batch_2d: int = 12
    min_batch_size: int = 2
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512

    @property
    def residual(self) -> bool:
        return self.network == "resenc_unet"


_RESENC_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
_RESENC_DECODER = (1,) * 12

PRESETS: dict[str, Preset] = {
    "nnunet": Preset(
        name="nnunet",
        network="plain_unet",
        default_gpu_memory_gb=8.0,
        reference_gb=8.0,
        reference_elements_3d=560_000_000,
        reference_elements_2d=85_000_000,
        max_dataset_covered=0.05,
        encoder_blocks=(2,) * 14,
        decoder_convs=(2,) * 13,
        shrink_for_min_batch=True,
    ),
    "resenc-m": Preset(
        name="resenc-m",
        network="resenc_unet",
        default_gpu_memory_gb=8.0,
        reference_gb=8.0,
        reference_elements_3d=680_000_000,
        reference_elements_2d=135_000_000,
        max_dataset_covered=1.0,
        encoder_blocks=_RESENC_ENCODER,
        decoder_convs=_RESENC_DECODER,
    ),
    "resenc-l": Preset(
        name="resenc-l",
        network="resenc_unet",
        default_gpu_memory_gb=24.0,
        reference_gb=24.0,
        reference_elements_3d=2_100_000_000,
        reference_elements_2d=380_000_000,
        max_dataset_covered=1.0,
        encoder_blocks=_RESENC_ENCODER,
        decoder_convs=_RESENC_DECODER,
    ),
    "resenc-xl": Preset(
        name="resenc-xl",
        network="resenc_unet",
        default_gpu_memory_gb=40.0,
        reference_gb=40.0,
        reference_elements_3d=3_600_000_000,
        reference_elements_2d=560_000_000,
        max_dataset_covered=1.0,
        encoder_blocks=_RESENC_ENCODER,
        decoder_convs=_RESENC_DECODER,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PlanningError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def plan_name(preset: Preset, gpu_memory_gb: float) -> str:
    """'nnunet-8gb', 'resenc-l-24gb', 'nnunet-10.5gb': the preset and the memory target name the plan."""
    return f"{preset.name}-{float(gpu_memory_gb):g}gb"
