"""Planning: the dataset fingerprint from SQL, and nnU-Net's planning rules turned into plan artifacts."""

from engine.planning.api import PlanResult, load_plan, load_splits, plan_dataset
from engine.planning.fingerprint import load_fingerprint
from engine.planning.presets import PRESETS, PlanningError, plan_name
from engine.planning.rules import plan_experiment
from engine.planning.splits import default_splits

__all__ = [
    "PRESETS",
    "PlanResult",
    "PlanningError",
    "default_splits",
    "load_fingerprint",
    "load_plan",
    "load_splits",
    "plan_dataset",
    "plan_experiment",
    "plan_name",
]
