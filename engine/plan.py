"""The plan artifact as frozen, typed objects: what training and inference read, and nothing else.

The planner writes `<project>/plans/<dataset>/<plan>.json` (`{"configurations": {name: {...}}}`) and a copy of each
configuration in the catalog and in every checkpoint. `ConfigurationPlan.from_dict` parses one configuration once;
`to_dict` gives back exactly the dict it came from, so the artifact, the catalog row and the checkpoint stay the
same JSON. No other module looks values up in a plan dict: a renamed key breaks here, at parse time, not deep in a
training loop.

Axes are (z, y, x). A 2d configuration states its spacing and patch in-plane (two values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ANISOTROPY_THRESHOLD = 3.0  # one threshold for the planner's target spacing and the resampler's separate-z rule

# nnU-Net's resampling defaults: what a plan made before `resampling` was recorded gets
# nnU-Net's cascade: this configuration trains on the predictions of that one (the planner's previous_stage)
CASCADE_STAGES: dict[str, str] = {"3d_cascade_fullres": "3d_lowres"}

DEFAULT_RESAMPLING: dict[str, Any] = {
    "image_order": 3,
    "label_order": 1,
    "probabilities_order": 1,
    "order_z": 0,
    "force_separate_z": None,
    "anisotropy_threshold": ANISOTROPY_THRESHOLD,
}


class PlanFormatError(ValueError):
    """A plan dict that lacks a key or has a wrong value; the message names the key."""


def _need(data: Mapping, key: str, where: str):
    if key not in data:
        raise PlanFormatError(f"{where} lacks {key!r}; re-run `voxelbase plan`")
    return data[key]


ANNOTATED_KEY = -1  # class locations of every annotated (not ignored) voxel, as nnU-Net's `[-1] + all_labels` key


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class Normalization:
    """One channel's intensity normalization (nnU-Net's scheme names; CT statistics are the dataset's)."""

    scheme: str
    use_nonzero_mask: bool
    mean: float | None = None
    std: float | None = None
    percentile_00_5: float | None = None
    percentile_99_5: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> Normalization:
        return cls(
            scheme=str(_need(data, "scheme", "a normalization entry")),
            use_nonzero_mask=bool(data.get("use_nonzero_mask", False)),
            mean=data.get("mean"),
            std=data.get("std"),
            percentile_00_5=data.get("percentile_00_5"),
            percentile_99_5=data.get("percentile_99_5"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "use_nonzero_mask": self.use_nonzero_mask,
            "mean": self.mean,
            "std": self.std,
            "percentile_00_5": self.percentile_00_5,
            "percentile_99_5": self.percentile_99_5,
        }


@dataclass(frozen=True)
class Resampling:
    """Spline orders and nnU-Net's separate-z rule, for images, labels and (back to the original) probabilities."""

    image_order: int = 3
    label_order: int = 1
    probabilities_order: int = 1
    order_z: int = 0
    force_separate_z: bool | None = None
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD
    # images resampled in float64 slice by slice exactly as nnU-Net does (bit-identical, several times slower):
    # what an imported nnU-Net model uses, so that its predictions agree with nnU-Net's own to the last float16 step
    bit_exact: bool = False

    @classmethod
    def from_dict(cls, data: Mapping | None) -> Resampling:
        merged = {**DEFAULT_RESAMPLING, **(data or {})}
        return cls(
            image_order=int(merged["image_order"]),
            label_order=int(merged["label_order"]),
            probabilities_order=int(merged["probabilities_order"]),
            order_z=int(merged["order_z"]),
            force_separate_z=merged["force_separate_z"],
            anisotropy_threshold=float(merged["anisotropy_threshold"]),
            bit_exact=bool(merged.get("bit_exact", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "image_order": self.image_order,
            "label_order": self.label_order,
            "probabilities_order": self.probabilities_order,
            "order_z": self.order_z,
            "force_separate_z": self.force_separate_z,
            "anisotropy_threshold": self.anisotropy_threshold,
        }
        if self.bit_exact:  # written only when set: plans (and their hashes) made without it stay as they were
            out["bit_exact"] = True
        return out


@dataclass(frozen=True)
class Architecture:
    """The U-Net topology: `network` is 'plain_unet' or 'resenc_unet'; per-stage lists, full resolution first."""

    network: str
    conv_dims: int
    n_stages: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]

    @classmethod
    def from_dict(cls, data: Mapping) -> Architecture:
        where = "the plan's architecture"
        return cls(
            network=str(_need(data, "network", where)),
            conv_dims=int(_need(data, "conv_dims", where)),
            n_stages=int(_need(data, "n_stages", where)),
            features_per_stage=_ints(_need(data, "features_per_stage", where)),
            kernel_sizes=tuple(_ints(k) for k in _need(data, "kernel_sizes", where)),
            strides=tuple(_ints(s) for s in _need(data, "strides", where)),
            n_conv_per_stage=_ints(_need(data, "n_conv_per_stage", where)),
            n_conv_per_stage_decoder=_ints(_need(data, "n_conv_per_stage_decoder", where)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "conv_dims": self.conv_dims,
            "n_stages": self.n_stages,
            "features_per_stage": list(self.features_per_stage),
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            "strides": [list(s) for s in self.strides],
            "n_conv_per_stage": list(self.n_conv_per_stage),
            "n_conv_per_stage_decoder": list(self.n_conv_per_stage_decoder),
        }


def _labels(data: Mapping) -> dict[str, int | list[int]]:
    return {str(k): (list(v) if isinstance(v, (list, tuple)) else int(v)) for k, v in data.items()}


def output_count(labels: Mapping[str, Any]) -> int:
    """Segmentation heads for dataset.json's labels: labels incl. background (regions: one per foreground region),
    never 'ignore'."""
    kept = {name: value for name, value in labels.items() if name != "ignore"}
    if any(isinstance(v, (list, tuple)) for v in kept.values()):
        return sum(1 for v in kept.values() if v != 0 and v != [0])
    return len(kept)


def region_names_of(labels: Mapping[str, Any]) -> list[str]:
    """A region dataset's regions in output order: every foreground entry (dataset.json's order), never 'ignore'."""
    return [n for n, v in labels.items() if n != "ignore" and v not in (0, [0])]


@dataclass(frozen=True)
class ConfigurationPlan:
    """One planned configuration ('2d', '3d_fullres', '3d_lowres', '3d_cascade_fullres') of one plan."""

    dataset: str | None
    plan: str | None  # the plan's name, e.g. 'nnunet-8gb'
    configuration: str
    preset: str
    gpu_memory_gb: float
    dataset_hash: str | None
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    median_image_size_in_voxels: tuple[float, ...]
    batch_dice: bool
    n_channels: int
    labels: Mapping[str, int | list[int]]  # dataset.json's labels: name -> value, or a region's value list
    num_classes: int  # network outputs: labels with background, or one per region; never 'ignore'
    normalization: tuple[Normalization, ...]
    resampling: Resampling
    architecture: Architecture
    previous_stage: str | None
    transpose_forward: tuple[int, ...]
    vram_estimate_elements: int | None = None
    next_stage: str | None = None
    regions_class_order: tuple[int, ...] | None = None  # region datasets: the label value each region writes
    region_names: tuple[str, ...] | None = None  # region datasets: the regions in output order (dataset.json's)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept for round trips

    _KNOWN = (
        "dataset plan configuration preset gpu_memory_gb dataset_hash spacing patch_size batch_size "
        "median_image_size_in_voxels batch_dice n_channels labels num_classes normalization resampling architecture "
        "previous_stage transpose_forward vram_estimate_elements next_stage regions_class_order region_names"
    ).split()

    @classmethod
    def from_dict(cls, data: Mapping) -> ConfigurationPlan:
        where = f"plan configuration {data.get('configuration', '?')!r}"
        return cls(
            dataset=data.get("dataset"),
            plan=data.get("plan"),
            configuration=str(_need(data, "configuration", where)),
            preset=str(data.get("preset", "nnunet")),
            gpu_memory_gb=float(data.get("gpu_memory_gb", 8.0)),
            dataset_hash=data.get("dataset_hash"),
            spacing=tuple(float(s) for s in _need(data, "spacing", where)),
            patch_size=_ints(_need(data, "patch_size", where)),
            batch_size=int(_need(data, "batch_size", where)),
            median_image_size_in_voxels=tuple(float(m) for m in data.get("median_image_size_in_voxels", ())),
            batch_dice=bool(data.get("batch_dice", False)),
            n_channels=int(_need(data, "n_channels", where)),
            labels=_labels(_need(data, "labels", where)),
            num_classes=int(_need(data, "num_classes", where)),
            normalization=tuple(Normalization.from_dict(n) for n in _need(data, "normalization", where)),
            resampling=Resampling.from_dict(data.get("resampling")),
            architecture=Architecture.from_dict(_need(data, "architecture", where)),
            previous_stage=data.get("previous_stage"),
            transpose_forward=_ints(data.get("transpose_forward", (0, 1, 2))),
            vram_estimate_elements=data.get("vram_estimate_elements"),
            next_stage=data.get("next_stage"),
            regions_class_order=(
                _ints(data["regions_class_order"]) if data.get("regions_class_order") is not None else None
            ),
            region_names=tuple(str(n) for n in data["region_names"]) if data.get("region_names") else None,
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "plan": self.plan,
            "configuration": self.configuration,
            "preset": self.preset,
            "gpu_memory_gb": self.gpu_memory_gb,
            "dataset_hash": self.dataset_hash,
            "spacing": list(self.spacing),
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "median_image_size_in_voxels": list(self.median_image_size_in_voxels),
            "batch_dice": self.batch_dice,
            "n_channels": self.n_channels,
            "labels": {k: (list(v) if isinstance(v, list) else v) for k, v in self.labels.items()},
            "num_classes": self.num_classes,
            "normalization": [n.to_dict() for n in self.normalization],
            "resampling": self.resampling.to_dict(),
            "architecture": self.architecture.to_dict(),
            "previous_stage": self.previous_stage,
            "transpose_forward": list(self.transpose_forward),
            "vram_estimate_elements": self.vram_estimate_elements,
        }
        if self.next_stage is not None:
            out["next_stage"] = self.next_stage
        if self.regions_class_order is not None:
            out["regions_class_order"] = list(self.regions_class_order)
        if self.region_names is not None:
            out["region_names"] = list(self.region_names)
        out.update(self.extra)
        return out

    @property
    def previous_stage_labels(self) -> list[int]:
        """A cascade stage's extra inputs: the previous stage's segmentation one-hot encoded, one channel per
        foreground label value in this order (nnU-Net's `MoveSegAsOneHotToDataTransform`); empty otherwise."""
        if not self.previous_stage:
            return []
        values = {v for k, v in self.labels.items() if k != "ignore" for v in (v if isinstance(v, list) else [v])}
        return sorted(int(v) for v in values if int(v) != 0)

    @property
    def input_channels(self) -> int:
        """What the network takes: the image channels, plus the previous stage's one-hot channels in a cascade."""
        return self.n_channels + len(self.previous_stage_labels)

    @property
    def axes_forward(self) -> tuple[int, int, int]:
        """How this configuration's stored arrays order a case's (z, y, x) axes. A 2-D configuration cuts slices
        along the case's coarsest axis, so it works in nnU-Net's transposed order (`transpose_forward`): stored
        arrays, their shapes, crop boxes, spacings and class locations all follow it, and outputs are transposed back.
        3-D configurations are stated in (z, y, x) (the planner untransposes them) and stored so, except a 3-D plan
        imported from nnU-Net, which keeps nnU-Net's transposed statement (its network's kernels and strides are in
        that order) and says so with `stated_transposed`."""
        if self.architecture.conv_dims == 2 or self.extra.get("stated_transposed"):
            return tuple(int(a) for a in self.transpose_forward)  # type: ignore[return-value]
        return (0, 1, 2)

    @property
    def axes_backward(self) -> tuple[int, int, int]:
        """The inverse of `axes_forward`: stored axis order -> (z, y, x)."""
        return tuple(int(a) for a in np.argsort(self.axes_forward))  # type: ignore[return-value]

    @property
    def foreground_labels(self) -> list[int]:
        """The class indices scored as foreground: 1 .. num_classes - 1; for regions 1 .. number of regions (the
        output channel plus one)."""
        if self.has_regions:
            return list(range(1, self.num_classes + 1))
        return list(range(1, self.num_classes))

    @property
    def sampled_labels(self) -> list[int]:
        """Label values to sample class locations for: every declared label except background and 'ignore'."""
        return sorted({v for k, v in self.labels.items() if isinstance(v, int) and v != 0 and k != "ignore"})

    @property
    def location_classes(self) -> dict[int, tuple[int, ...]]:
        """What preprocessing samples class locations for, key -> the label values it covers (nnU-Net's rule):
        each foreground label (key = its value) or, for regions, each region (key = its output channel + 1); with an
        ignore label also ANNOTATED_KEY, every voxel that is not ignored (background included), which the loader
        centres patches on so that they never sit in unannotated space."""
        classes: dict[int, tuple[int, ...]] = (
            {index + 1: members for index, (_, members) in enumerate(self.regions)}
            if self.has_regions
            else {value: (value,) for value in self.sampled_labels}
        )
        ignore = self.ignore_label
        if ignore is not None:
            classes[ANNOTATED_KEY] = tuple(v for v in range(self.label_value_count) if v != ignore)
        return classes

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, list) for k, v in self.labels.items() if k != "ignore")

    @property
    def has_ignore_label(self) -> bool:
        return "ignore" in self.labels

    @property
    def ignore_label(self) -> int | None:
        """The ignore label's value: voxels the loss, the sampling and the metrics leave out (nnU-Net's rule)."""
        value = self.labels.get("ignore")
        return int(value) if value is not None and not isinstance(value, list) else None

    @property
    def regions(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, member values) of each region in output-channel order; empty for a plain-label plan.

        As nnU-Net's LabelManager: in a region dataset every foreground entry is a region, a plain value v being
        the region (v,); background and 'ignore' are not."""
        if not self.has_regions:
            return []
        names = self.region_names or region_names_of(self.labels)
        return [(name, tuple(int(x) for x in _as_list(self.labels[name]))) for name in names]

    @property
    def label_value_count(self) -> int:
        """Highest value a stored label map may hold, plus one (the ignore label and region members included)."""
        values = [0]
        for value in self.labels.values():
            values.extend(value if isinstance(value, list) else [value])
        return max(int(v) for v in values) + 1

    def target_spacing(self, case_spacing) -> tuple[float, ...]:
        """The spacing a case (given in this plan's `axes_forward` order) is resampled to; a 2-D plan keeps the
        case's own spacing along its first axis, the one slices are cut along."""
        planned = [float(s) for s in self.spacing]
        if len(planned) == 2:
            planned = [float(case_spacing[0]), *planned]
        return tuple(planned)

    def preprocessing_agrees(self, other: ConfigurationPlan) -> str | None:
        """The first setting that decides preprocessing or the output classes and differs, or None: folds
        averaged together must agree on these."""
        for name in (
            "spacing",
            "normalization",
            "resampling",
            "n_channels",
            "num_classes",
            "labels",
            "regions_class_order",
        ):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name}: {mine!r} vs {theirs!r}"
        return None


@dataclass(frozen=True)
class Plan:
    """A whole plan artifact: every configuration the planner made for one dataset, preset and memory target."""

    configurations: Mapping[str, ConfigurationPlan]

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        return cls(
            {name: ConfigurationPlan.from_dict(c) for name, c in _need(data, "configurations", "a plan").items()}
        )

    def to_dict(self) -> dict[str, Any]:
        return {"configurations": {name: c.to_dict() for name, c in self.configurations.items()}}

    def __getitem__(self, configuration: str) -> ConfigurationPlan:
        return self.configurations[configuration]
