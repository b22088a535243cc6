"""spec stage: declarative experiment specs (TOML, validated by schema/experiment.schema.json)."""

from engine.spec.load import (
    SpecError,
    apply_overrides,
    experiment_schema,
    load_spec,
    parse_override,
    parse_spec,
    spec_from_dict,
)
from engine.spec.model import (
    EvaluateSpec,
    ExperimentSpec,
    IngestSpec,
    PlanSpec,
    PredictSpec,
    PreprocessSpec,
    TrainSpec,
)

__all__ = [
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
    "parse_override",
    "parse_spec",
    "spec_from_dict",
]
