"""Bundles to and from a project: `voxelbase export` writes one from an experiment's checkpoints and catalog rows,
`voxelbase import-model` registers one as an experiment, so `predict --experiment`, `compare` and SQL see it.

Both write files first under a temporary name and rename them into place, so an interrupted command never leaves
something that looks complete; import records its catalog rows in one transaction after its files are in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import channel_names, dataset_info, training_spacing_range
from voxelbase.catalog.results import (
    SelectionRow,
    forget_experiment_results,
    postprocessing_decisions,
    record_postprocessing,
    record_selection,
    selection,
)
from voxelbase.catalog.runs import experiment_row, forget_experiment_runs, record_experiment, record_finished_run
from voxelbase.catalog.steps import forget_steps
from voxelbase.inference.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    MANIFEST,
    BundleError,
    bundle_network,
    open_bundle,
    plan_file,
    sha256,
    weights_file,
)
from voxelbase.inference.models import (
    CHECKPOINT,
    choose_configuration,
    choose_folds,
    experiment_spec,
    trained_folds,
)
from voxelbase.networks import load_checkpoint, save_checkpoint
from voxelbase.plan import CASCADE_STAGES
from voxelbase.project import Project
from voxelbase.spec import spec_from_dict
from voxelbase.store.layout import unsafe_name


@dataclass(frozen=True)
class ExportResult:
    path: Path
    choice: str
    configurations: dict[str, list[str]]

    def summary(self) -> str:
        parts = "; ".join(f"{c}: folds {', '.join(f)}" for c, f in self.configurations.items())
        return f"wrote {self.path} ({self.choice}; {parts})"


def _bundle_files(project: Project, experiment: str, configurations: dict[str, tuple[str, ...]]) -> dict[str, bytes]:
    """plans/ and weights/ of the chosen folds, from their final checkpoints; the folds of one configuration must
    share one plan, since the bundle keeps one per configuration."""
    from safetensors.torch import save as save_safetensors

    files: dict[str, bytes] = {}
    for configuration, folds in configurations.items():
        plans = {}
        for fold in folds:
            state = load_checkpoint(project.run_dir(experiment, configuration, fold) / CHECKPOINT)
            plans[fold] = state["plan"]
            tensors = {k: v.detach().cpu().contiguous() for k, v in state["network"].items()}
            files[weights_file(configuration, fold)] = save_safetensors(tensors)
        first = folds[0]
        for fold in folds[1:]:
            if plans[fold] != plans[first]:
                raise BundleError(
                    f"{configuration}: fold {fold} was trained with a different plan than fold {first}; "
                    "export with --folds of one plan"
                )
        files[plan_file(configuration)] = json.dumps(plans[first], indent=1, sort_keys=True).encode()
    return files


def _write_atomically(output: Path, files: dict[str, bytes], *, replace_existing: bool) -> None:
    """A folder, or a zip when `output` ends in .zip, written beside it under a temporary name, then renamed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".zip":
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
            if output.is_dir():
                shutil.rmtree(output)
            os.replace(tmp_name, output)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if output.exists() and replace_existing:
            old = output.with_name(f".{output.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output, old) if output.is_dir() else output.unlink()
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_bundle(
    experiment: str,
    output: str | os.PathLike,
    *,
    project: Project | str | None = None,
    configuration: str | None = None,
    folds=None,
    replace_existing: bool = False,
) -> ExportResult:
    """Write a bundle of `experiment` (default: its selection, else its only configuration; every finished
    cross-validation fold, fold 'all' when none) to `output` (a folder, or a zip when it ends in .zip)."""
    project = Project.resolve(project)
    output = Path(output)
    if output.exists() and not replace_existing:
        raise BundleError(f"{output} exists; pass --replace to overwrite it")
    dataset, spec = experiment_spec(project, experiment)
    trained = trained_folds(project, experiment)
    choice, members = choose_configuration(project, experiment, configuration, trained)
    chosen = {name: choose_folds(experiment, name, folds, trained) for name in members}
    for name in members:  # a cascade travels with its low-res stage's same folds: predict runs that stage first
        previous = CASCADE_STAGES.get(name)
        if previous is None:
            continue
        missing = [f for f in chosen[name] if f not in trained.get(previous, [])]
        if missing:
            raise BundleError(
                f"{experiment}/{name} cascades from {previous}, whose fold(s) {', '.join(missing)} are not trained; "
                f"train them, or export with --folds of both stages"
            )
        chosen[previous] = tuple(dict.fromkeys((*chosen.get(previous, ()), *chosen[name])))
    with connect(project, read_only=True) as con:
        names = channel_names(con, dataset)
        info = dataset_info(con, dataset)
        spacing = training_spacing_range(con, dataset)
        recorded = selection(con, experiment)
        decisions = postprocessing_decisions(con, experiment)
    files = _bundle_files(project, experiment, chosen)
    labels = json.loads(files[plan_file(members[0])])["labels"]
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "experiment": experiment,
        "dataset": dataset,
        "labels": labels,
        "channel_names": names,
        "file_ending": info.file_ending if info is not None else None,
        "spacing_range": [spacing[0], spacing[1]] if spacing else None,
        "choice": choice,
        "configurations": {name: list(f) for name, f in chosen.items()},
        "selection": None if recorded is None else _selection_dict(recorded),
        "postprocessing": {c: d for c, d in decisions.items() if c in (choice, *members)},
        "spec": spec.to_dict(),
        "files": {name: sha256(data) for name, data in sorted(files.items())},
    }
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    _write_atomically(output, files, replace_existing=replace_existing)
    return ExportResult(output, choice, {name: list(f) for name, f in chosen.items()})


def _selection_dict(row: SelectionRow) -> dict:
    return {
        "choice": row.choice,
        "kind": row.kind,
        "members": list(row.members),
        "mean_dice": row.mean_dice,
        "ranking": list(row.ranking),
    }


@dataclass(frozen=True)
class ImportResult:
    experiment: str
    run_ids: list[int]
    run_dir: Path

    def summary(self) -> str:
        return f"imported experiment {self.experiment!r}: {len(self.run_ids)} trained fold(s) in {self.run_dir}"


def import_bundle(
    path: str | os.PathLike,
    *,
    project: Project | str | None = None,
    name: str | None = None,
    replace_existing: bool = False,
) -> ImportResult:
    """Register a bundle as experiment `name` (default: the bundle's): final checkpoints in the run folders, then
    the experiment, its finished training runs, selection and postprocessing in one transaction."""
    project = Project.resolve(project)
    bundle = open_bundle(path)
    manifest = bundle.manifest
    experiment = name or manifest["experiment"]
    # names become folders under runs/: a bundle must not write outside them
    for part in (experiment, *bundle.configurations, *(f for fs in bundle.configurations.values() for f in fs)):
        problem = unsafe_name(str(part))
        if problem:
            raise BundleError(f"{path}: cannot import: {problem}")
    spec_dict = dict(manifest["spec"], name=experiment)
    spec = spec_from_dict(spec_dict, source=f"{path}: {MANIFEST}")
    check_new_experiment(project, experiment, replace_existing=replace_existing)
    networks = {
        configuration: {fold: bundle_network(bundle, configuration, fold) for fold in folds}
        for configuration, folds in bundle.configurations.items()
    }
    plans = {configuration: plan.to_dict() for configuration, plan in bundle.plans.items()}
    return install_experiment(
        project, experiment, spec=spec, networks=networks, plans=plans, manifest=manifest, source=path
    )


def check_new_experiment(project: Project, experiment: str, *, replace_existing: bool) -> None:
    """Refuse to import over an existing experiment (its run folders or its catalog row) unless replacing."""
    exists = (project.runs_path / experiment).exists()
    if project.catalog_path.exists():
        with connect(project, read_only=True) as con:
            exists = exists or experiment_row(con, experiment) is not None
    if exists and not replace_existing:
        raise BundleError(f"experiment {experiment!r} already exists in {project.root}; pass --replace or --name NEW")


def install_experiment(
    project: Project,
    experiment: str,
    *,
    spec,
    networks: dict[str, dict[str, torch.nn.Module]],
    plans: dict[str, dict],
    manifest: dict,
    source,
) -> ImportResult:
    """Final checkpoints of `networks` (configuration -> fold -> network, trained with `plans[configuration]`) in
    the run folders, then the experiment, its finished training runs, and `manifest`'s postprocessing and
    selection in one transaction; run folders put back as they were when recording fails."""
    target = project.runs_path / experiment
    project.runs_path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{experiment}.", suffix=".import", dir=project.runs_path))
    old = project.runs_path / f".{experiment}.replaced"
    try:
        for configuration, folds in networks.items():
            for fold, network in folds.items():
                save_checkpoint(
                    tmp / configuration / f"fold_{fold}" / CHECKPOINT,
                    network=network,
                    optimizer=None,
                    epoch=spec.train.epochs if spec.train is not None else 0,
                    spec=spec.to_dict(),
                    plan=plans[configuration],
                    state={"imported_from": str(Path(source).absolute())},
                )
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    configurations = {configuration: list(folds) for configuration, folds in networks.items()}
    try:
        run_ids = _record_import(project, experiment, spec, manifest, configurations)
    except BaseException:
        # the catalog is unchanged: put the run folders back as they were
        shutil.rmtree(target, ignore_errors=True)
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return ImportResult(experiment, run_ids, target)


def _record_import(project: Project, experiment: str, spec, manifest: dict, configurations: dict) -> list[int]:
    spec_hash = spec.hash()
    run_ids = []
    with transaction(project) as con:
        forget_experiment_results(con, experiment)
        forget_experiment_runs(con, experiment)
        forget_steps(con, experiment)
        record_experiment(con, name=experiment, dataset=manifest["dataset"], spec=spec.to_dict(), spec_hash=spec_hash)
        for configuration, folds in configurations.items():
            for fold in folds:
                run_dir = str(project.run_dir(experiment, configuration, fold))
                run_ids.append(
                    record_finished_run(
                        con,
                        experiment=experiment,
                        configuration=configuration,
                        fold=fold,
                        kind="train",
                        run_dir=run_dir,
                        spec_hash=spec_hash,
                    )
                )
        for configuration, decision in (manifest.get("postprocessing") or {}).items():
            record_postprocessing(con, experiment=experiment, configuration=configuration, decision=decision)
        recorded = manifest.get("selection")
        # a selection whose models were left out of the bundle would point predict at folds that are not there
        if recorded is not None and all(m in configurations for m in recorded["members"]):
            row = SelectionRow(
                experiment,
                recorded["choice"],
                recorded["kind"],
                tuple(recorded["members"]),
                float(recorded["mean_dice"]),
                tuple(recorded["ranking"]),
            )
            record_selection(con, row)
    return run_ids


__all__ = [
    "ExportResult",
    "ImportResult",
    "check_new_experiment",
    "export_bundle",
    "import_bundle",
    "install_experiment",
]
