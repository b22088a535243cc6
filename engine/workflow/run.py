"""`voxelbase run SPEC`: the whole declared experiment, doing only the steps whose key changed.

The order, each step's key and each dry-run reason are derived here from the steps' declarations
(`voxelbase.workflow.steps`): a step runs after the steps it names in `after`, and in a dry run a step whose
upstream would run is reported as "would run after ..." since its inputs are not known yet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.steps import record_step, recorded_steps
from voxelbase.parallel import SCHEDULER_ENV
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec, load_spec
from voxelbase.workflow import keys
from voxelbase.workflow.steps import Step, declare_steps, pinned


@dataclass
class RunReport:
    experiment: str
    dry_run: bool
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (step, outcome, why / summary)

    @property
    def ran(self) -> list[str]:
        return [name for name, outcome, _ in self.steps if outcome in ("ran", "would run")]

    def lines(self) -> list[str]:
        width = max((len(name) for name, _, _ in self.steps), default=0)
        out = [f"{name.ljust(width)}  {outcome:<9}  {detail}" for name, outcome, detail in self.steps]
        if not self.ran:
            out.append(f"experiment {self.experiment!r} is up to date: nothing to do")
        return out


def ordered(steps: list[Step]) -> list[Step]:
    """The steps in an order where each comes after everything it names in `after` (declaration order otherwise)."""
    by_name = {step.name: step for step in steps}
    done: set[str] = set()
    out: list[Step] = []

    def visit(step: Step, path: tuple[str, ...]) -> None:
        if step.name in done:
            return
        if step.name in path:
            raise ValueError(f"steps depend on each other in a cycle: {' -> '.join((*path, step.name))}")
        for upstream in step.after:
            if upstream in by_name:
                visit(by_name[upstream], (*path, step.name))
        done.add(step.name)
        out.append(step)

    for step in steps:
        visit(step, ())
    return out


@dataclass(frozen=True)
class StepKey:
    spec_hash: str
    code_hash: str
    inputs_hash: str


def step_key(project: Project, spec: ExperimentSpec, step: Step) -> StepKey:
    """The key of a step now, from its declaration: the one definition used both to decide and to record."""
    spec = pinned(spec)
    inputs = [keys.data_fingerprint(project, spec, spec.train.plan, item) for item in step.data]
    if step.uses_results:
        inputs.append(keys.results_fingerprint(project, spec.name, step.after))
    return StepKey(keys.digest(step.settings(spec)), keys.code_hash(step.stages), keys.digest(inputs))


def _why(now: StepKey, recorded: dict | None) -> str | None:
    """Why the step must run, or None when its recorded key matches."""
    if recorded is None:
        return "never ran"
    changed = [
        what
        for what, mine, then in (
            ("spec settings changed", now.spec_hash, recorded["spec_hash"]),
            ("code changed", now.code_hash, recorded["code_hash"]),
            ("inputs changed", now.inputs_hash, recorded["inputs_hash"]),
        )
        if mine != then
    ]
    return ", ".join(changed) or None


def run_experiment(
    spec: ExperimentSpec | str | os.PathLike,
    *,
    project: Project | str | None = None,
    dry_run: bool = False,
    overrides=(),
    echo=print,
) -> RunReport:
    """Run every step of the experiment whose key (spec settings, code, inputs) differs from the recorded one."""
    project = Project.resolve(project)
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides=overrides)
    if spec.compute is not None and spec.compute.scheduler and not dry_run:
        with scheduler_environment(spec.compute.scheduler):
            return _run(project, spec, dry_run=dry_run, echo=echo)
    return _run(project, spec, dry_run=dry_run, echo=echo)


@contextmanager
def scheduler_environment(scheduler: str) -> Iterator[None]:
    """`[compute] scheduler` for the per-case loops of every step (they read $VOXELBASE_SCHEDULER)."""
    before = os.environ.get(SCHEDULER_ENV)
    os.environ[SCHEDULER_ENV] = scheduler
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SCHEDULER_ENV, None)
        else:
            os.environ[SCHEDULER_ENV] = before


def _run(project: Project, spec: ExperimentSpec, *, dry_run: bool, echo) -> RunReport:
    report = RunReport(spec.name, dry_run)
    recorded: dict[str, dict] = {}
    if project.catalog_path.exists():
        with connect(project, read_only=True) as con:
            recorded = recorded_steps(con, spec.name)
    pending: set[str] = set()  # steps that run (or would) in this invocation
    for step in ordered(declare_steps(project, spec)):
        upstream = [name for name in step.after if name in pending]
        if dry_run and upstream:
            report.steps.append((step.name, "would run", f"after {', '.join(upstream)}"))
            pending.add(step.name)
            continue
        why = _why(step_key(project, spec, step), recorded.get(step.name))
        if why is None:
            report.steps.append((step.name, "done", "up to date"))
            continue
        pending.add(step.name)
        if dry_run:
            report.steps.append((step.name, "would run", why))
            continue
        echo(f"[{step.name}] {why}")
        started = time.perf_counter()
        summary = step.action()
        key = step_key(project, spec, step)  # inputs as they are now that the step ran
        with transaction(project) as con:
            record_step(
                con,
                experiment=spec.name,
                step=step.name,
                spec_hash=key.spec_hash,
                code_hash=key.code_hash,
                inputs_hash=key.inputs_hash,
                seconds=time.perf_counter() - started,
            )
        report.steps.append((step.name, "ran", f"{why}: {summary}"))
    return report
