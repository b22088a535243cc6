"""`voxelbase import-nnunet`: an nnU-Net v2 trained model registered as an experiment of the project, the same way
`import-model` registers a bundle, so `predict --experiment`, `compare` and SQL see it.

Everything is read and checked (plans, folds, every checkpoint through the allow-list, the networks built and
loaded) before anything is written; then the run folders and one catalog transaction, as for bundles.
"""

from __future__ import annotations

import os
from pathlib import Path

from voxelbase.inference.bundle_project import ImportResult, check_new_experiment, install_experiment
from voxelbase.inference.nnunet_model import NnunetImportError, read_nnunet_model
from voxelbase.project import Project
from voxelbase.spec import spec_from_dict
from voxelbase.store.layout import unsafe_name


def import_nnunet(
    source: str | os.PathLike,
    *,
    name: str,
    project: Project | str | None = None,
    folds=None,
    configurations=None,
    replace_existing: bool = False,
) -> ImportResult:
    """Register the nnU-Net trained model at `source` (a `<trainer>__<plans>__<configuration>` folder, a folder of
    them, or an `nnUNetv2_export_model_to_zip` zip) as experiment `name`: the given folds (default every fold with
    a final checkpoint) of every configuration (or those named)."""
    project = Project.resolve(project)
    problem = unsafe_name(str(name))
    if problem:
        raise NnunetImportError(f"cannot import as {name!r}: {problem}")
    check_new_experiment(project, name, replace_existing=replace_existing)
    model = read_nnunet_model(source, folds=folds, configurations=configurations)
    for part in (*model.folds, *(f for fs in model.folds.values() for f in fs)):
        problem = unsafe_name(str(part))
        if problem:
            raise NnunetImportError(f"{source}: cannot import: {problem}")
    first = next(iter(model.configurations.values()))
    axes = first.plan.extra.get("mirror_axes") or []
    spec = spec_from_dict(
        {
            "name": name,
            "dataset": model.dataset,
            "description": f"imported from nnU-Net v2 ({first.trainer}): {Path(source).absolute()}",
            "train": {
                "configurations": list(model.configurations),
                "folds": sorted({int(f) if f.isdigit() else f for fs in model.folds.values() for f in fs}, key=str),
            },
            "augment": {"mirror_axes": sorted(set(axes))},
        },
        source=f"{source}: the imported experiment",
    )
    manifest = {
        "dataset": model.dataset,
        "postprocessing": {c: m.postprocessing for c, m in model.configurations.items() if m.postprocessing},
        "selection": None,
    }
    return install_experiment(
        project,
        name,
        spec=spec,
        networks={c: m.networks for c, m in model.configurations.items()},
        plans={c: m.plan.to_dict() for c, m in model.configurations.items()},
        manifest=manifest,
        source=source,
    )


__all__ = ["import_nnunet"]
