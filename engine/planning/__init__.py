"""Planning: the dataset fingerprint from SQL, and nnU-Net's planning rules turned into plan artifacts."""

from engine.planning.api import PlanResult, fold_case_ids, load_plan, load_splits, plan_dataset
from engine.planning.fingerprint import load_fingerprint
from engine.planning.presets import PRESETS, PlanningError, plan_name
from engine.planning.rules import plan_experiment
from engine.planning.splits import default_splits
from engine.planning.user_splits import SplitsResult, export_splits, import_splits, make_splits, show_splits

CODE_VERSION = "1"  # bump when this stage's results change: `voxelbase run` redoes the steps it performs

__all__ = [
    "PRESETS",
    "PlanResult",
    "PlanningError",
    "SplitsResult",
    "default_splits",
    "export_splits",
    "fold_case_ids",
    "import_splits",
    "load_fingerprint",
    "load_plan",
    "load_splits",
    "make_splits",
    "plan_dataset",
    "plan_experiment",
    "plan_name",
    "show_splits",
]
