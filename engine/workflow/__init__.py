"""The declarative `run`: an experiment spec as a chain of steps, each done only when its key changed."""

from voxelbase.workflow.run import RunReport, run_experiment

__all__ = ["RunReport", "run_experiment"]
