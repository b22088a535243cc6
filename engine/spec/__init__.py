"""spec stage: declarative experiment specs (TOML, validated by schema/experiment.schema.json)."""

from voxelbase.spec.augment import AugmentConfig, mirror_axes_for
from voxelbase.spec.load import (
    SpecError,
    apply_overrides,
    experiment_schema,
    load_spec,
    parse_override,
    parse_spec,
    spec_from_dict,
)
from voxelbase.spec.model import (
    EvaluateSpec,
    ExperimentSpec,
    IngestSpec,
    PlanSpec,
    PredictSpec,
    PreprocessSpec,
    TrainSpec,
)

__all__ = [
    "AugmentConfig",
    "EvaluateSpec",
    "ExperimentSpec",
    "IngestSpec",
    "PlanSpec",
    "PredictSpec",
    "PreprocessSpec",
    "SpecError",
    "TrainSpec",
    "apply_overrides",
    "experiment_schema",
    "load_spec",
    "mirror_axes_for",
    "parse_override",
    "parse_spec",
    "spec_from_dict",
]
