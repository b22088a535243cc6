"""End-of-fold validation, as nnU-Net does it: sliding-window prediction of each validation case, resampled
back and uncropped to the case's original geometry, saved, and scored against the original labels.

The per-case metrics go to `metrics` under the training run's id, in one transaction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.catalog import transaction
from engine.catalog.queries import run_query
from engine.evaluation.metrics import case_metrics
from engine.evaluation.records import insert_metrics
from engine.inference.export import geometry_of, write_probabilities, write_segmentation
from engine.inference.sliding_window import predict_logits
from engine.preprocessing import probabilities_to_segmentation, revert_probabilities
from engine.preprocessing.records import load_case_properties
from engine.project import Project
from engine.spec import ExperimentSpec
from engine.store import read_case
from engine.training.augment import mirror_axes_for
from engine.training.checkpoint import load_checkpoint
from engine.training.network import build_network
from engine.training.setup import FoldSetup


def load_network(checkpoint: Path, *, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A trained network (without deep supervision) and its plan, from a checkpoint."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    plan = state["plan"]
    network = build_network(
        plan["architecture"],
        in_channels=int(plan["n_channels"]),
        num_classes=int(plan["num_classes"]),
        deep_supervision=False,
    )
    network.load_state_dict(state["network"])
    return network.to(device).eval(), state


def predict_probabilities(
    networks: list[torch.nn.Module],
    image: np.ndarray,
    *,
    plan: dict,
    spec: ExperimentSpec,
    device: torch.device,
    tta: bool,
) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) at plan spacing, averaged over `networks` (folds)."""
    patch = tuple(plan["patch_size"])
    mirror = mirror_axes_for(len(patch), spec.augment) if tta else None
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    total = None
    for network in networks:
        logits = predict_logits(
            network,
            tensor,
            patch_size=patch,
            step_size=spec.predict.step_size,
            batch_windows=spec.predict.batch_windows,
            mirror_axes=mirror,
            device=device,
            use_gaussian=spec.predict.use_gaussian,
            gaussian_sigma_scale=spec.predict.gaussian_sigma_scale,
        )
        probabilities = torch.softmax(logits, 0)
        total = probabilities if total is None else total.add_(probabilities)
    return (total / len(networks)).numpy()


def validate_fold(
    project: Project, spec: ExperimentSpec, setup: FoldSetup, *, run_id: int, run_dir: Path, device: torch.device
) -> int:
    network, _ = load_network(run_dir / "checkpoint_final.pt", device=device)
    plan, dataset = setup.plan, spec.dataset
    labels = setup.foreground_labels
    ids = [c.case_id for c in setup.val_cases]
    rows = run_query(
        "SELECT case_id, spacing, origin, direction FROM cases WHERE dataset = ? AND list_contains(?, case_id)",
        project=project,
        params=[dataset, ids],
    ).to_pylist()
    geometry = {r["case_id"]: r for r in rows}
    ending = run_query(
        "SELECT file_ending FROM datasets WHERE name = ?", project=project, params=[dataset]
    ).to_pylist()[0]["file_ending"]
    out_dir = run_dir / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = []
    for case_id in tqdm(ids, desc="validation", unit="case", disable=None):
        image, _ = read_case(project, dataset, case_id, stage=setup.stage)
        probabilities = predict_probabilities(
            [network], image, plan=plan, spec=spec, device=device, tta=spec.predict.tta
        )
        properties = load_case_properties(
            project, dataset, case_id, plan=setup.plan_name, configuration=plan["configuration"]
        )
        segmentation = probabilities_to_segmentation(probabilities, properties=properties, plan=plan)
        if spec.train.save_probabilities:
            write_probabilities(
                revert_probabilities(probabilities, properties=properties, plan=plan), out_dir / f"{case_id}.npz"
            )
        _, reference = read_case(project, dataset, case_id)
        try:
            write_segmentation(segmentation, out_dir / f"{case_id}{ending}", geometry=geometry_of(geometry[case_id]))
        except ImportError:  # machines without SimpleITK keep the arrays only
            np.savez_compressed(out_dir / f"{case_id}.segmentation.npz", segmentation=segmentation)
        scored.append(
            (
                case_id,
                case_metrics(
                    segmentation,
                    reference,
                    labels=labels,
                    spacing=geometry[case_id]["spacing"],
                    nsd_tolerance_mm=spec.evaluate.nsd_tolerance_mm,
                ),
            )
        )
    with transaction(project) as con:
        return insert_metrics(con, run_id=run_id, cases=scored, nsd_tolerance_mm=spec.evaluate.nsd_tolerance_mm)
