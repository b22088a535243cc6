"""Drawing the report: its figures, each drawn with matplotlib's object API (no pyplot, so no global figure state
and no display backend) and returned as a PNG data URI, and the HTML around them, so the page needs no file beside
it and no network.

Everything here takes plain values; reading the catalog and the store is `report.py`'s job.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

REFERENCE_COLOUR = "#00d5ff"  # cyan and magenta stay apart on grey and for red-green colour blindness
PREDICTION_COLOUR = "#ff2db4"
FOLD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
DPI = 90


def data_uri(fig: Figure) -> str:
    """The figure as an inline PNG (`data:image/png;base64,...`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _style_points(n: int) -> dict:
    """Markers when there are few epochs: a one-epoch run draws no line at all without them."""
    return {"marker": "o", "markersize": 3} if n <= 30 else {}


def curves_figure(
    title: str,
    *,
    epochs: Sequence[int],
    train_loss: Sequence[float | None],
    val_loss: Sequence[float | None],
    val_dice: Sequence[Sequence[float | None]],
    lr: Sequence[float | None],
    label_names: Sequence[str],
) -> str:
    """Losses, pseudo Dice per label and learning rate over the epochs of one fold, stacked with a shared x axis."""
    fig = Figure(figsize=(5.2, 6.4), layout="constrained")
    ax_loss, ax_dice, ax_lr = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.4]})
    style = _style_points(len(epochs))
    x = list(epochs)
    ax_loss.plot(x, _floats(train_loss), color="tab:blue", label="train loss", **style)
    ax_loss.plot(x, _floats(val_loss), color="tab:red", label="validation loss", **style)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set_title(title, fontsize=10)
    n_labels = max((len(d) for d in val_dice if d is not None), default=0)
    for i in range(n_labels):
        values = [None if d is None or i >= len(d) else d[i] for d in val_dice]
        name = label_names[i] if i < len(label_names) else f"label {i + 1}"
        ax_dice.plot(x, _floats(values), label=name, **style)
    ax_dice.set_ylim(0, 1)
    ax_dice.set_ylabel("pseudo Dice")
    if n_labels:
        ax_dice.legend(loc="upper left", fontsize=8, ncol=min(n_labels, 3))
    ax_lr.plot(x, _floats(lr), color="black", **style)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(x) == 1:  # a lone epoch would sit in a range of fractional epochs
        ax_lr.set_xlim(x[0] - 0.5, x[0] + 0.5)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_loss, ax_dice, ax_lr):
        ax.grid(alpha=0.3)
    return data_uri(fig)


def distribution_figure(
    title: str, *, dice: Mapping[str, Sequence[tuple[str, float]]], hd95: Mapping[str, Sequence[tuple[str, float]]]
) -> str:
    """Per label, a box of the per-case values with each case drawn as a point coloured by its fold: Dice on
    the left, HD95 on the right. `dice` and `hd95` map label name -> (fold, value) of the cases where it is
    defined (NULL Dice and HD95 are left out, as in the summary means)."""
    names = list(dice)
    fig = Figure(figsize=(max(6.0, 1.6 * len(names) * 2 + 1.5), 3.8), layout="constrained")
    ax_dice, ax_hd = fig.subplots(1, 2)
    folds = sorted({fold for values in (*dice.values(), *hd95.values()) for fold, _ in values}, key=_fold_key)
    colours = {fold: FOLD_COLOURS[i % len(FOLD_COLOURS)] for i, fold in enumerate(folds)}
    rng = np.random.default_rng(0)  # the same jitter every time the report is written
    for ax, data, ylabel in ((ax_dice, dice, "Dice"), (ax_hd, hd95, "HD95 (mm)")):
        positions = [i + 1 for i, name in enumerate(names) if data.get(name)]
        if positions:
            ax.boxplot(
                [[v for _, v in data[names[p - 1]]] for p in positions],
                positions=positions,
                widths=0.5,
                showfliers=False,
                medianprops={"color": "black"},
            )
        for i, name in enumerate(names):
            for fold, value in data.get(name, ()):
                ax.scatter(i + 1 + rng.uniform(-0.15, 0.15), value, s=14, color=colours[fold], zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 4 else 0)
        ax.set_xlim(0.4, len(names) + 0.6)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax_dice.set_ylim(-0.02, 1.02)
    ax_dice.set_title(f"{title}: Dice per case", fontsize=10)
    ax_hd.set_title(f"{title}: HD95 per case", fontsize=10)
    if folds:
        handles = [Line2D([], [], ls="", marker="o", color=colours[f], label=f"fold {f}") for f in folds]
        ax_hd.legend(handles=handles, fontsize=8, loc="best")
    return data_uri(fig)


def overlay_figure(
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray | None,
    *,
    spacing_yx: tuple[float, float],
    title: str,
) -> str:
    """One axial slice in grey with the reference and the predicted label boundaries in two colours (every
    foreground label's boundary in its source's colour), aspect true to the voxel spacing."""
    fig = Figure(figsize=(4.2, 4.6), layout="constrained")
    ax = fig.subplots()
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    ax.imshow(
        image,
        cmap="gray",
        vmin=low,
        vmax=high if high > low else low + 1,
        interpolation="nearest",
        aspect=spacing_yx[0] / spacing_yx[1],
    )
    handles = [Line2D([], [], color=REFERENCE_COLOUR, lw=2.4, label="reference")]
    _contours(ax, reference, REFERENCE_COLOUR, 2.4)
    if prediction is not None:
        _contours(ax, prediction, PREDICTION_COLOUR, 1.3)  # thinner, on top: the reference shows around it
        handles.append(Line2D([], [], color=PREDICTION_COLOUR, lw=1.3, label="prediction"))
    else:
        handles.append(Line2D([], [], color="none", label="prediction file missing"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return data_uri(fig)


def _contours(ax, labels: np.ndarray, colour: str, width: float) -> None:
    """Each foreground label's boundary along the voxel edges: the mask is upsampled (nearest) before contouring,
    so a small slice shows its voxels' staircase instead of lines cut diagonally through voxel centres."""
    factor = int(np.clip(np.ceil(512 / max(labels.shape)), 1, 16))
    ys = (np.arange(labels.shape[0] * factor) + 0.5) / factor - 0.5
    xs = (np.arange(labels.shape[1] * factor) + 0.5) / factor - 0.5
    for value in np.unique(labels):
        if value <= 0:
            continue
        mask = labels == value
        if mask.all():  # no boundary to draw inside the slice
            continue
        fine = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1).astype(np.float32)
        ax.contour(xs, ys, fine, levels=[0.5], colors=[colour], linewidths=width)


def _floats(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _fold_key(fold: str) -> tuple:
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)


def figure_html(uri: str, alt: str, kind: str, *, caption: str | None = None) -> str:
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img class="{kind}" src="{uri}" alt="{html.escape(alt)}">{text}</figure>'


def table_html(
    header: Sequence, rows: Sequence[Sequence], *, row_classes: Sequence[str] | None = None, css_class: str = ""
) -> str:
    """An HTML table of escaped text cells."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    opening = f'<table class="{html.escape(css_class)}">' if css_class else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1.5rem; color: #1d2330; background: #fff; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #5b6475; margin-top: 0; }
h2 { border-bottom: 2px solid #d9dee8; padding-bottom: 0.2rem; margin-top: 2.2rem; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #d9dee8; padding: 0.25rem 0.55rem; text-align: right; white-space: nowrap; }
th { background: #eef1f6; } td:first-child, th:first-child { text-align: left; }
tr.mean td, tr.chosen td { font-weight: 600; background: #f4f7ec; }
details { margin: 0.4rem 0; } summary { cursor: pointer; color: #2c5fa8; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ee; }
figcaption { font-size: 0.8rem; color: #3d4556; max-width: 380px; }
"""


def page(title: str, *, subtitle: str, sections: Sequence[str]) -> str:
    """The whole document: inline style, no script, no external reference."""
    links = " ".join(
        f'<a href="#{anchor}">{text}</a>'
        for anchor, text in (
            ("tables", "tables"),
            ("selection", "selection"),
            ("postprocessing", "postprocessing"),
            ("curves", "curves"),
            ("distributions", "distributions"),
            ("overlays", "overlays"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="subtitle">{html.escape(subtitle)}</p>\n<nav>{links}</nav>\n'
        + "\n".join(f"<section>{s}</section>" for s in sections)
        + "\n</body>\n</html>\n"
    )
