"""`voxelbase report`: one static HTML page about an experiment, readable offline and from an archive.

The page holds the comparison tables (what `voxelbase compare` prints, for every metric), the recorded selection
and postprocessing decisions, per-fold training curves from `epochs`, per-case Dice and HD95 distributions from
`metrics` of the runs that count (`result_runs`), and overlays of the best, median and worst validation case of
each configuration. Every figure is an inline PNG and the CSS is inline too: `index.html` is the whole report,
with no script, server or network behind it.

The catalog is read once in a short read-only connection; the overlays then read one case at a time (the label,
one slice of the image and the saved validation segmentation), so memory stays at one case whatever the dataset.
"""

from __future__ import annotations

import datetime
import html
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelbase.catalog import connect
from voxelbase.catalog.datasets import case_geometries, dataset_info, dataset_regions, foreground_label_values
from voxelbase.catalog.results import cross_validation_case_metrics, label_names_of_results, postprocessing_decisions
from voxelbase.catalog.runs import (
    experiment_names,
    experiment_row,
    experiments_with_runs,
    finished_folds,
    result_epochs,
)
from voxelbase.errors import VoxelbaseError
from voxelbase.evaluation.compare import compare, for_display
from voxelbase.evaluation.report_render import (
    curves_figure,
    distribution_figure,
    figure_html,
    overlay_figure,
    page,
    table_html,
)
from voxelbase.evaluation.selection import load_selection
from voxelbase.images import Geometry, ImageFileError, read_image
from voxelbase.project import Project
from voxelbase.store import open_case_arrays

METRICS = ("dice", "hd95", "iou", "nsd")  # the first table is open, the others folded


class ReportError(VoxelbaseError, ValueError):
    """A report that cannot be written (unknown experiment, nothing finished yet); the message says what to do."""


@dataclass(frozen=True)
class CaseResult:
    """One validation case of one cross-validation run: Dice and HD95 per foreground label."""

    configuration: str
    kind: str
    fold: str
    case_id: str
    dice: dict[int, float | None]
    hd95: dict[int, float | None]

    @property
    def mean_dice(self) -> float | None:
        """Mean foreground Dice over the labels where it is defined (how cases are ranked)."""
        values = [v for v in self.dice.values() if v is not None]
        return float(np.mean(values)) if values else None


@dataclass(frozen=True)
class _Facts:
    """What the report reads from the catalog, in one short read."""

    experiment: str
    dataset: str | None
    file_ending: str
    label_names: dict[int, str]
    curve_labels: list[str]  # names of the pseudo Dice entries of `epochs.val_dice`, in order
    epochs: list[tuple]
    cases: list[CaseResult]
    decisions: dict[str, dict]
    geometry: dict[str, Geometry]


def write_report(experiment: str, *, output: Path | str, project: Project | str | None = None) -> Path:
    """Write `output/index.html` for `experiment` and return its path (the page replaces an earlier one whole)."""
    project = Project.resolve(project)
    facts = _read_facts(experiment, project)
    sections = [
        _tables_section(experiment, project),
        _selection_section(experiment, project, facts),
        _postprocessing_section(facts),
        _curves_section(facts),
        _distributions_section(facts),
        _overlays_section(facts, project),
    ]
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = f"dataset {facts.dataset or 'unknown'} · project {project.root} · written {stamp}"
    text = page(f"Voxelbase report: {experiment}", subtitle=subtitle, sections=sections)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    index = output / "index.html"
    tmp = output / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(index)  # a reader never sees half a page
    return index


def _read_facts(experiment: str, project: Project) -> _Facts:
    with connect(project, read_only=True) as con:
        row = experiment_row(con, experiment)
        if row is None and experiment not in experiments_with_runs(con):
            known = sorted(set(experiment_names(con)) | experiments_with_runs(con))
            hint = f"known: {', '.join(known)}" if known else "the catalog has none yet"
            raise ReportError(f"unknown experiment {experiment!r} ({hint})")
        if not finished_folds(con, experiment):
            raise ReportError(
                f"experiment {experiment!r} has no finished training run yet: train it first "
                "(voxelbase run SPEC, or voxelbase train SPEC)"
            )
        names = {v: sorted(n)[0] for v, n in label_names_of_results(con, [experiment]).items()}
        dataset = row.dataset if row is not None else None
        info = dataset_info(con, dataset) if dataset else None
        regions = dataset_regions(con, dataset) if dataset else []
        # a region dataset's pseudo Dice is one entry per region, numbered like its metric rows
        foreground = (
            list(range(1, len(regions) + 1)) if regions else (foreground_label_values(con, dataset) if dataset else [])
        )
        cases = _case_results(cross_validation_case_metrics(con, experiment))
        geometry = case_geometries(con, dataset, sorted({c.case_id for c in cases})) if info else {}
        return _Facts(
            experiment=experiment,
            dataset=dataset,
            file_ending=info.file_ending if info else ".nii.gz",
            label_names=names,
            curve_labels=[names.get(v, str(v)) for v in foreground],
            epochs=result_epochs(con, experiment),
            cases=cases,
            decisions=postprocessing_decisions(con, experiment),
            geometry=geometry,
        )


def _case_results(rows: Iterable[tuple]) -> list[CaseResult]:
    found: dict[tuple, CaseResult] = {}
    for configuration, kind, fold, case_id, label, dice, hd95 in rows:
        key = (configuration, fold, case_id)
        if key not in found:
            found[key] = CaseResult(configuration, kind, fold, case_id, {}, {})
        found[key].dice[int(label)] = dice
        found[key].hd95[int(label)] = hd95
    return list(found.values())


def _by_configuration(cases: Sequence[CaseResult]) -> dict[str, list[CaseResult]]:
    grouped: dict[str, list[CaseResult]] = {}
    for case in cases:
        grouped.setdefault(case.configuration, []).append(case)
    return grouped


def _tables_section(experiment: str, project: Project) -> str:
    parts = ['<h2 id="tables">Cross-validation results</h2>']
    parts.append(
        "<p>Configurations × folds, mean ± standard deviation over the validation cases per label, and the "
        "'mean' row over each configuration's pooled cross-validation cases (as <code>voxelbase compare</code> "
        "prints them).</p>"
    )
    for metric in METRICS:
        table = compare([experiment], project=project, metric=metric)
        if table.num_rows == 0:
            parts.append("<p>No metrics recorded yet.</p>")
            break
        shown = for_display(table).drop_columns(["experiment"])
        classes = ["mean" if fold == "mean" else "" for fold in shown.column("fold").to_pylist()]
        rows = [list(r.values()) for r in shown.to_pylist()]
        body = table_html(shown.column_names, rows, row_classes=classes, css_class=f"compare {metric}")
        if metric == METRICS[0]:
            parts.append(f"<h3>{metric}</h3>{body}")
        else:
            parts.append(f"<details><summary>{metric}</summary>{body}</details>")
    return "\n".join(parts)


def _selection_section(experiment: str, project: Project, facts: _Facts) -> str:
    parts = ['<h2 id="selection">Selection</h2>']
    chosen = load_selection(experiment, project=project)
    if chosen is None:
        parts.append("<p>No configuration selected yet (<code>voxelbase run</code> selects one).</p>")
        return "\n".join(parts)
    parts.append(
        f"<p>Chosen: <strong>{html.escape(chosen.choice)}</strong> ({html.escape(chosen.kind)}), "
        f"cross-validation mean foreground Dice {chosen.mean_dice:.4f}.</p>"
    )
    header = ["configuration", "kind", "mean Dice", "folds", "cases", "eligible", "missing folds"]
    rows = [
        [
            r.get("configuration"),
            r.get("kind"),
            "" if r.get("mean_dice") is None else f"{r['mean_dice']:.4f}",
            ", ".join(r.get("folds", [])),
            r.get("n_cases"),
            "yes" if r.get("eligible") else "no",
            ", ".join(r.get("missing_folds", [])),
        ]
        for r in chosen.ranking
    ]
    parts.append(table_html(header, rows, row_classes=["chosen" if r[0] == chosen.choice else "" for r in rows]))
    return "\n".join(parts)


def _postprocessing_section(facts: _Facts) -> str:
    parts = ['<h2 id="postprocessing">Postprocessing</h2>']
    if not facts.decisions:
        parts.append("<p>No postprocessing decision recorded.</p>")
        return "\n".join(parts)
    name = lambda value: facts.label_names.get(int(value), str(value))  # noqa: E731
    labels = sorted({int(v) for d in facts.decisions.values() for v in d.get("label_dice_before", {})})
    header = ["configuration", "largest foreground component", "largest component of", "Dice before", "Dice after"]
    header += [f"{name(v)} before → after" for v in labels]
    rows = []
    for configuration, decision in facts.decisions.items():
        before, after = decision.get("label_dice_before", {}), decision.get("label_dice_after", {})
        rows.append(
            [
                configuration,
                "yes" if decision.get("foreground_lcc") else "no",
                ", ".join(name(v) for v in decision.get("per_label_lcc", [])) or "none",
                _number(decision.get("dice_before")),
                _number(decision.get("dice_after")),
                *(f"{_number(before.get(str(v)))} → {_number(after.get(str(v)))}" for v in labels),
            ]
        )
    parts.append(table_html(header, rows))
    return "\n".join(parts)


def _curves_section(facts: _Facts) -> str:
    parts = ['<h2 id="curves">Training curves</h2>']
    runs: dict[tuple[str, str], list[tuple]] = {}
    for configuration, fold, *values in facts.epochs:
        runs.setdefault((configuration, fold), []).append(values)
    if not runs:
        parts.append("<p>No epochs recorded.</p>")
    for configuration in sorted({c for c, _ in runs}):
        parts.append(f"<h3>{html.escape(configuration)}</h3><div class='grid'>")
        for (c, fold), rows in runs.items():
            if c != configuration:
                continue
            epoch, train_loss, val_loss, val_dice, lr = (list(column) for column in zip(*rows))
            uri = curves_figure(
                f"{configuration} fold {fold}",
                epochs=epoch,
                train_loss=train_loss,
                val_loss=val_loss,
                val_dice=val_dice,
                lr=lr,
                label_names=facts.curve_labels,
            )
            parts.append(figure_html(uri, f"training curves of {configuration} fold {fold}", "curves"))
        parts.append("</div>")
    return "\n".join(parts)


def _distributions_section(facts: _Facts) -> str:
    parts = ['<h2 id="distributions">Per-case Dice and HD95</h2>']
    grouped = _by_configuration(facts.cases)
    if not grouped:
        parts.append("<p>No per-case metrics of cross-validation folds recorded.</p>")
    for configuration, cases in grouped.items():
        labels = sorted({label for c in cases for label in c.dice})
        dice = {
            facts.label_names.get(v, str(v)): [(c.fold, c.dice[v]) for c in cases if c.dice.get(v) is not None]
            for v in labels
        }
        hd95 = {
            facts.label_names.get(v, str(v)): [(c.fold, c.hd95[v]) for c in cases if c.hd95.get(v) is not None]
            for v in labels
        }
        uri = distribution_figure(configuration, dice=dice, hd95=hd95)
        parts.append(f"<h3>{html.escape(configuration)}</h3>")
        parts.append(figure_html(uri, f"per-case Dice and HD95 of {configuration}", "distribution"))
        header = ["case", "fold", "mean Dice", *(f"Dice {facts.label_names.get(v, v)}" for v in labels)]
        header += [f"HD95 {facts.label_names.get(v, v)}" for v in labels]
        ranked = sorted(cases, key=lambda c: (c.mean_dice is None, -(c.mean_dice or 0.0), c.case_id))
        rows = [
            [c.case_id, c.fold, _number(c.mean_dice), *(_number(c.dice.get(v)) for v in labels)]
            + [_number(c.hd95.get(v), digits=2) for v in labels]
            for c in ranked
        ]
        parts.append(f"<details><summary>{len(rows)} cases</summary>{table_html(header, rows)}</details>")
    return "\n".join(parts)


def pick_cases(cases: Sequence[CaseResult]) -> list[tuple[str, CaseResult]]:
    """The best, median and worst case by mean foreground Dice (roles merged when fewer than three cases);
    cases without a defined Dice are not ranked."""
    ranked = sorted((c for c in cases if c.mean_dice is not None), key=lambda c: (-c.mean_dice, c.case_id))
    if not ranked:
        return []
    picks: dict[int, list[str]] = {}
    for role, index in (("best", 0), ("median", (len(ranked) - 1) // 2), ("worst", len(ranked) - 1)):
        picks.setdefault(index, []).append(role)
    return [(" = ".join(roles), ranked[index]) for index, roles in sorted(picks.items())]


def _overlays_section(facts: _Facts, project: Project) -> str:
    parts = ['<h2 id="overlays">Best, median and worst validation case</h2>']
    if facts.dataset is None:
        parts.append("<p>The experiment's dataset is not recorded: no overlays.</p>")
        return "\n".join(parts)
    parts.append(
        "<p>Ranked by mean foreground Dice; the axial slice with the most reference foreground, with the boundaries "
        "of the reference and of the prediction (the fold's saved validation segmentation, before "
        "postprocessing).</p>"
    )
    for configuration, cases in _by_configuration(facts.cases).items():
        parts.append(f"<h3>{html.escape(configuration)}</h3><div class='grid'>")
        for role, case in pick_cases(cases):
            uri, note = _overlay(facts, project, case, role)
            caption = f"{role}: {case.case_id} (fold {case.fold}), mean Dice {case.mean_dice:.4f}{note}"
            parts.append(figure_html(uri, caption, "overlay", caption=caption))
        parts.append("</div>")
    return "\n".join(parts)


def _overlay(facts: _Facts, project: Project, case: CaseResult, role: str) -> tuple[str, str]:
    image, label = open_case_arrays(project, facts.dataset, case.case_id)
    reference = np.asarray(label[...]) if label is not None else None
    directory = project.run_dir(facts.experiment, case.configuration, case.fold) / "validation"
    prediction, note = _read_prediction(directory, case.case_id, facts.file_ending)
    shape = tuple(image.shape[1:])
    if prediction is not None and prediction.shape != shape:
        prediction, note = None, f"; saved prediction has shape {prediction.shape}, the case {shape}"
    z = _busiest_slice(reference if reference is not None else prediction, depth=shape[0])
    spacing = facts.geometry[case.case_id].spacing if case.case_id in facts.geometry else (1.0, 1.0, 1.0)
    uri = overlay_figure(
        np.asarray(image[0, z], dtype=np.float32),  # one slice of the first channel, not the whole volume
        reference[z] if reference is not None else np.zeros(shape[1:], np.uint8),
        None if prediction is None else prediction[z],
        spacing_yx=(spacing[1], spacing[2]),
        title=f"{case.configuration} · {role} · {case.case_id} · z={z}",
    )
    return uri, note


def _read_prediction(directory: Path, case_id: str, ending: str) -> tuple[np.ndarray | None, str]:
    """The saved validation segmentation: the image file, or the array kept where SimpleITK was missing."""
    image_file, array_file = directory / f"{case_id}{ending}", directory / f"{case_id}.segmentation.npz"
    if image_file.is_file():
        try:
            return read_image(image_file)[0], ""
        except ImportError:
            if not array_file.is_file():
                return None, f"; reading {image_file.name} needs SimpleITK"
        except ImageFileError as error:
            return None, f"; {error}"
    if array_file.is_file():
        with np.load(array_file) as saved:
            return saved["segmentation"], ""
    return None, f"; no saved prediction in {directory}"


def _busiest_slice(labels: np.ndarray | None, *, depth: int) -> int:
    if labels is None or not labels.any():
        return depth // 2
    return int(np.argmax(np.count_nonzero(labels > 0, axis=(1, 2))))


def _number(value, *, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{float(value):.{digits}f}"
