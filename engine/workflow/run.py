"""`voxelbase run SPEC`: the whole declared experiment, doing only the steps whose key changed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from engine.catalog import transaction
from engine.catalog.queries import run_query
from engine.project import Project
from engine.spec import ExperimentSpec, load_spec
from engine.workflow.steps import Step, build_steps


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


def _recorded(project: Project, experiment: str) -> dict[str, dict]:
    if not project.catalog_path.exists():
        return {}
    rows = run_query(
        "SELECT step, spec_hash, code_hash, inputs_hash FROM steps WHERE experiment = ?",
        project=project,
        params=[experiment],
    ).to_pylist()
    return {r["step"]: r for r in rows}


def _why(step: Step, recorded: dict | None, inputs: str) -> str | None:
    """Why the step must run, or None when its recorded key matches."""
    if recorded is None:
        return "never ran"
    changed = [
        what
        for what, now, then in (
            ("spec settings changed", step.spec_hash, recorded["spec_hash"]),
            ("code changed", step.code_hash, recorded["code_hash"]),
            ("inputs changed", inputs, recorded["inputs_hash"]),
        )
        if now != then
    ]
    return ", ".join(changed) or None


def _record(project: Project, experiment: str, step: Step, inputs: str, seconds: float) -> None:
    with transaction(project) as con:
        con.execute(
            "INSERT OR REPLACE INTO steps (experiment, step, spec_hash, code_hash, inputs_hash, seconds, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, current_timestamp)",
            [experiment, step.name, step.spec_hash, step.code_hash, inputs, seconds],
        )


def run_experiment(
    spec: ExperimentSpec | str | os.PathLike,
    *,
    project: Project | str | None = None,
    dry_run: bool = False,
    overrides=(),
    echo=print,
) -> RunReport:
    """Run every step of the experiment whose key (spec section, code, inputs) differs from the recorded one."""
    project = Project.resolve(project)
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides=overrides)
    report = RunReport(spec.name, dry_run)
    recorded = _recorded(project, spec.name)
    pending: set[str] = set()  # steps that run (or would) in this invocation
    for step in build_steps(project, spec):
        upstream = [name for name in step.after if name in pending]
        if dry_run and upstream:
            report.steps.append((step.name, "would run", f"after {', '.join(upstream)}"))
            pending.add(step.name)
            continue
        inputs = step.inputs()
        why = _why(step, recorded.get(step.name), inputs)
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
        _record(project, spec.name, step, step.inputs(), time.perf_counter() - started)
        report.steps.append((step.name, "ran", f"{why}: {summary}"))
    return report
