"""Planning: the dataset fingerprint from SQL, and nnU-Net's planning rules turned into plan artifacts."""

from voxelbase.planning.api import PlanResult, fold_case_ids, load_plan, load_splits, plan_dataset
from voxelbase.planning.fingerprint import load_fingerprint
from voxelbase.planning.presets import PRESETS, PlanningError, plan_name
from voxelbase.planning.rules import plan_experiment
from voxelbase.planning.splits import default_splits
from voxelbase.planning.user_splits import SplitsResult, export_splits, import_splits, make_splits, show_splits

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
