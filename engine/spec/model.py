"""The experiment spec as frozen, typed objects.

A spec file parses once (see `voxelbase.spec.load`) into an `ExperimentSpec`; no raw dicts travel further. Every
default here is nnU-Net v2's (trainer, inference and evaluation), and `schema/experiment.schema.json` repeats them
for readers of the schema (a test keeps the two equal). Training variants are data: `epochs = 250` in the spec,
never a trainer subclass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from voxelbase.spec.augment import AugmentConfig


@dataclass(frozen=True)
class IngestSpec:
    """Where the dataset comes from, for `voxelbase run` to ingest it when it is not in the catalog yet."""

    source: str
    replace: bool = False


@dataclass(frozen=True)
class PlanSpec:
    preset: str = "nnunet"
    gpu_memory_gb: float = 8.0


@dataclass(frozen=True)
class PreprocessSpec:
    workers: int | None = None  # None: automatic


@dataclass(frozen=True)
class ComputeSpec:
    """Where per-case work runs; never what is computed (no step's key depends on it)."""

    scheduler: str | None = None  # a Dask scheduler address or local:N; None: local worker processes


@dataclass(frozen=True)
class TrainSpec:
    """Every hyperparameter nnU-Net's trainer hard-codes, with its default. None means "from the plan"/"automatic"."""

    configurations: tuple[str, ...] = ("3d_fullres",)
    folds: tuple[int | str, ...] = (0, 1, 2, 3, 4)
    plan: str | None = None
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    initial_lr: float = 0.01
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    poly_exponent: float = 0.9
    oversample_foreground: float = 0.33
    probabilistic_oversampling: bool = False
    seed: int = 12345
    device: str = "auto"
    batch_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    batch_dice: bool | None = None
    grad_clip: float = 12.0
    deep_supervision: bool = True
    ds_weight_factor: float = 0.5
    ds_drop_lowest: bool = True
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    dice_smooth: float = 1e-5
    dice_include_background: bool = False
    ema_pseudo_dice: float = 0.9
    checkpoint_every: int = 50
    compile: bool = False
    channels_last: bool | str = "auto"
    amp: str = "auto"
    cudnn_benchmark: bool = True
    num_workers: int | None = None
    pin_memory: bool = True
    augment_device: str = "auto"
    validate: bool = True
    save_probabilities: bool = False


@dataclass(frozen=True)
class PredictSpec:
    tta: bool = True
    step_size: float = 0.5
    use_gaussian: bool = True
    gaussian_sigma_scale: float = 0.125
    batch_windows: int = 4  # nnU-Net predicts one window per forward pass; several keep a GPU busier
    save_probabilities: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class EvaluateSpec:
    nsd_tolerance_mm: float = 1.0


SECTIONS: dict[str, type] = {
    "ingest": IngestSpec,
    "compute": ComputeSpec,
    "plan": PlanSpec,
    "preprocess": PreprocessSpec,
    "train": TrainSpec,
    "augment": AugmentConfig,
    "predict": PredictSpec,
    "evaluate": EvaluateSpec,
}


def _plain(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def section_dict(section: object) -> dict:
    """A section dataclass as JSON-ready values (tuples as lists)."""
    return {f.name: _plain(getattr(section, f.name)) for f in fields(section)}


def _sha256(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment. `spec_dir` (where the file was) only resolves relative paths; it is not hashed."""

    name: str
    dataset: str
    description: str = ""
    ingest: IngestSpec | None = None
    compute: ComputeSpec | None = None  # absent unless written: a spec without it hashes as before
    plan: PlanSpec = field(default_factory=PlanSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    predict: PredictSpec = field(default_factory=PredictSpec)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    spec_dir: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The resolved spec (every default filled in), JSON-ready; `from_dict(to_dict())` gives it back."""
        out: dict = {"name": self.name, "dataset": self.dataset, "description": self.description}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is not None:
                out[name] = section_dict(section)
        return out

    def hash(self) -> str:
        """Stable sha256 of the resolved spec: equal for equal settings whatever the file's layout or defaults."""
        return _sha256(self.to_dict())

    def section_hash(self, name: str) -> str:
        """sha256 of one section (e.g. "plan", "train"), so a declarative run redoes only what changed."""
        if name not in SECTIONS:
            raise KeyError(f"unknown spec section {name!r}; sections are {', '.join(SECTIONS)}")
        section = getattr(self, name)
        return _sha256(None if section is None else section_dict(section))

    def ingest_source(self) -> Path | None:
        """The ingest source as a path, relative paths taken from the spec file's folder."""
        if self.ingest is None:
            return None
        path = Path(self.ingest.source).expanduser()
        if not path.is_absolute() and self.spec_dir is not None:
            path = Path(self.spec_dir) / path
        return path
