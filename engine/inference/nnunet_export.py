"""`voxelbase export --format nnunet`: one configuration of an experiment as an nnU-Net v2 trained-model folder,
which `nnUNetv2_predict_from_modelfolder -m DIR` runs (the inverse of `import-nnunet`).

    DIR/dataset.json                                  channel_names, labels, numTraining, file_ending
    DIR/plans.json                                    a whole nnU-Net plans file with this one configuration
    DIR/fold_<k>/checkpoint_final.pth                 network_weights under nnU-Net's key names, init_args, ...
    DIR/crossval_results_folds_<k_k>/postprocessing.pkl   when the experiment chose postprocessing

nnU-Net loads `network_weights` with a strict `load_state_dict`, so every key its network has must be there,
aliases included: the decoder keeps the encoder (`decoder.encoder.*`) and every conv block its modules again
(`all_modules.*`). `nnunet_state_dict_names` writes those names from a Voxelbase architecture (checked against key
lists dumped from nnU-Net in tests/fixtures/nnunet_network/state_dict_keys.json); the tensors come positionally
from the Voxelbase network, whose `named_parameters()` order is nnU-Net's. Checkpoints hold only tensors and plain
Python values, so `torch.load(weights_only=True)` reads them. Name DIR `<trainer>__<plans>__<configuration>`
(as `summary` suggests) to import it back with `voxelbase import-nnunet`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from voxelbase.catalog import connect
from voxelbase.catalog.datasets import dataset_info, fingerprint_rows
from voxelbase.catalog.results import postprocessing_decisions
from voxelbase.inference.bundle_project import _write_atomically
from voxelbase.inference.inputs import PredictionError
from voxelbase.inference.models import CHECKPOINT, choose_configuration, choose_folds, experiment_spec, trained_folds
from voxelbase.inference.nnunet_model import KEEP_LARGEST, NNUNET_CHECKPOINT, NORMALIZATION_SCHEMES, RESAMPLING_FUNCTION
from voxelbase.networks import load_checkpoint
from voxelbase.networks.blocks import LEAKY_SLOPE, NORM_EPS
from voxelbase.networks.nnunet import NETWORK_CLASSES
from voxelbase.plan import ANISOTROPY_THRESHOLD, CASCADE_STAGES, Architecture, ConfigurationPlan
from voxelbase.project import Project
from voxelbase.spec import mirror_axes_for

TRAINER = "nnUNetTrainer"
# preset -> (plans_name, experiment_planner_used), as nnU-Net's planners name them
PLANNERS = {
    "nnunet": ("nnUNetPlans", "ExperimentPlanner"),
    "resenc-m": ("nnUNetResEncUNetMPlans", "nnUNetPlannerResEncM"),
    "resenc-l": ("nnUNetResEncUNetLPlans", "nnUNetPlannerResEncL"),
    "resenc-xl": ("nnUNetResEncUNetXLPlans", "nnUNetPlannerResEncXL"),
}
CLASS_NAMES = {network: class_name for class_name, network in NETWORK_CLASSES.items()}
SCHEME_NAMES = {ours: theirs for theirs, ours in NORMALIZATION_SCHEMES.items()}


class NnunetExportError(PredictionError):
    """An experiment that cannot be written as an nnU-Net model folder; the message says why and what to do."""


# --- nnU-Net's state dict key names --------------------------------------------------------------------------


def _conv_block(prefix: str, *, bias: bool = True) -> list[tuple[str, str]]:
    """ConvDropoutNormReLU: conv, norm, and the same two again under all_modules (key, canonical key)."""
    conv = [f"{prefix}.conv.weight", *([f"{prefix}.conv.bias"] if bias else [])]
    norm = [f"{prefix}.norm.weight", f"{prefix}.norm.bias"]
    aliases = [k.replace(".conv.", ".all_modules.0.") for k in conv] + [
        k.replace(".norm.", ".all_modules.1.") for k in norm
    ]
    return [(k, k) for k in conv + norm] + list(zip(aliases, conv + norm, strict=True))


def _encoder(arch: Architecture, prefix: str) -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    if arch.network == "plain_unet":
        for s, n in enumerate(arch.n_conv_per_stage):
            for c in range(n):
                names += _conv_block(f"{prefix}stages.{s}.0.convs.{c}")
        return names
    names += _conv_block(f"{prefix}stem.convs.0")
    in_features = arch.features_per_stage[0]
    for s, (n, features, stride) in enumerate(
        zip(arch.n_conv_per_stage, arch.features_per_stage, arch.strides, strict=True)
    ):
        for b in range(n):
            block = f"{prefix}stages.{s}.blocks.{b}"
            names += _conv_block(f"{block}.conv1") + _conv_block(f"{block}.conv2")
            if b == 0 and in_features != features:
                # the skip is [avg-pool when strided, 1x1 conv-norm without bias when the width changes]
                names += _conv_block(f"{block}.skip.{1 if any(v != 1 for v in stride) else 0}", bias=False)
        in_features = features
    return names


def nnunet_state_dict_names(arch: Architecture) -> list[tuple[str, str]]:
    """Every key of nnU-Net's state dict for `arch` (deep supervision off, as its predictor builds it), in its
    order, each with the key of the tensor it aliases (itself for a parameter's first name)."""
    if arch.network not in CLASS_NAMES:
        raise NnunetExportError(f"network {arch.network!r} has no nnU-Net counterpart")
    names = _encoder(arch, "encoder.") + [(f"decoder.encoder.{k}", f"encoder.{c}") for k, c in _encoder(arch, "")]
    for s, n in enumerate(arch.n_conv_per_stage_decoder):
        for c in range(n):
            names += _conv_block(f"decoder.stages.{s}.convs.{c}")
    for layer in ("transpconvs", "seg_layers"):
        for s in range(arch.n_stages - 1):
            names += [(f"decoder.{layer}.{s}.weight",) * 2, (f"decoder.{layer}.{s}.bias",) * 2]
    return names


def nnunet_network_weights(arch: Architecture, state: Mapping[str, torch.Tensor]) -> OrderedDict:
    """A Voxelbase network's state dict under nnU-Net's key names (aliases share their tensor)."""
    names = nnunet_state_dict_names(arch)
    canonical = list(dict.fromkeys(c for _, c in names))
    tensors = list(state.values())
    if len(tensors) != len(canonical):
        raise NnunetExportError(
            f"the network holds {len(tensors)} tensors, nnU-Net's {CLASS_NAMES[arch.network]} {len(canonical)}"
        )
    by_name = {name: t.detach().cpu().contiguous().clone() for name, t in zip(canonical, tensors, strict=True)}
    return OrderedDict((key, by_name[source]) for key, source in names)


# --- plans.json and dataset.json ----------------------------------------------------------------------------


def _check_expressible(plan: ConfigurationPlan) -> None:
    """Refuse what an nnU-Net plans file cannot say, or nnU-Net would run differently."""
    where = f"configuration {plan.configuration}"
    if plan.architecture.network not in CLASS_NAMES:
        raise NnunetExportError(f"{where}: network {plan.architecture.network!r} has no nnU-Net counterpart")
    if plan.previous_stage:
        raise NnunetExportError(f"{where}: cascade stages cannot be exported to nnU-Net")
    for n in plan.normalization:
        if n.scheme not in SCHEME_NAMES:
            raise NnunetExportError(f"{where}: normalization {n.scheme!r} has no nnU-Net counterpart")
    if plan.resampling.anisotropy_threshold != ANISOTROPY_THRESHOLD:
        raise NnunetExportError(
            f"{where}: anisotropy threshold {plan.resampling.anisotropy_threshold} (nnU-Net's is {ANISOTROPY_THRESHOLD})"
        )


def _arch_kwargs(arch: Architecture) -> dict:
    dims = arch.conv_dims
    blocks = "n_blocks_per_stage" if arch.network == "resenc_unet" else "n_conv_per_stage"
    return {
        "n_stages": arch.n_stages,
        "features_per_stage": list(arch.features_per_stage),
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [list(k) for k in arch.kernel_sizes],
        "strides": [list(s) for s in arch.strides],
        blocks: list(arch.n_conv_per_stage),
        "n_conv_per_stage_decoder": list(arch.n_conv_per_stage_decoder),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": NORM_EPS, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True, **({} if LEAKY_SLOPE == 0.01 else {"negative_slope": LEAKY_SLOPE})},
    }


def nnunet_plans(plan: ConfigurationPlan, *, median_spacing, median_shape) -> dict:
    """A whole nnU-Net plans file holding `plan` as its one configuration. `median_spacing` and `median_shape` are
    in (z, y, x). The file's `transpose_forward` is the order the plan's own arrays are in (`axes_forward`): a 2d
    plan of a dataset whose coarse axis is y or x is transposed as nnU-Net's, a 3d plan is stated in (z, y, x), and
    nnU-Net's transposition is one setting for the whole file, so with one configuration in it either is exact."""
    _check_expressible(plan)
    forward = list(plan.axes_forward)
    plans_name, planner = PLANNERS.get(plan.preset, PLANNERS["nnunet"])
    r = plan.resampling

    def kwargs(is_seg: bool, order: int) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": r.order_z, "force_separate_z": r.force_separate_z}

    entry = {
        "data_identifier": f"{plans_name}_{plan.configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": plan.batch_size,
        "patch_size": list(plan.patch_size),
        "median_image_size_in_voxels": list(plan.median_image_size_in_voxels),
        "spacing": list(plan.spacing),
        "normalization_schemes": [SCHEME_NAMES[n.scheme] for n in plan.normalization],
        "use_mask_for_norm": [n.use_nonzero_mask for n in plan.normalization],
        "resampling_fn_data": RESAMPLING_FUNCTION,
        "resampling_fn_seg": RESAMPLING_FUNCTION,
        "resampling_fn_data_kwargs": kwargs(False, r.image_order),
        "resampling_fn_seg_kwargs": kwargs(True, r.label_order),
        "resampling_fn_probabilities": RESAMPLING_FUNCTION,
        "resampling_fn_probabilities_kwargs": kwargs(False, r.probabilities_order),
        "architecture": {
            "network_class_name": CLASS_NAMES[plan.architecture.network],
            "arch_kwargs": _arch_kwargs(plan.architecture),
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": plan.batch_dice,
    }
    intensity = {}
    for channel, n in enumerate(plan.normalization):
        stats = {
            "mean": n.mean,
            "std": n.std,
            "percentile_00_5": n.percentile_00_5,
            "percentile_99_5": n.percentile_99_5,
        }
        if n.scheme == "ct" and any(v is None for v in stats.values()):
            raise NnunetExportError(f"configuration {plan.configuration}: channel {channel} lacks CT statistics")
        intensity[str(channel)] = {k: v for k, v in stats.items() if v is not None}
    return {
        "dataset_name": plan.dataset or "voxelbase",
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(median_spacing[a]) for a in forward],
        "original_median_shape_after_transp": [int(round(float(median_shape[a]))) for a in forward],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": forward,
        "transpose_backward": list(plan.axes_backward),
        "configurations": {plan.configuration: entry},
        "experiment_planner_used": planner,
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    }


def _plan_medians(plan: ConfigurationPlan) -> tuple[list[float], list[float]]:
    """Median spacing and shape in (z, y, x) from a plan alone (a 2d plan states only the in-plane axes: the slice
    axis is given the first in-plane spacing and one voxel)."""
    spacing, shape = list(plan.spacing), list(plan.median_image_size_in_voxels) or [1.0] * len(plan.spacing)
    if len(spacing) == 2:
        spacing, shape = [spacing[0], *spacing], [1.0, *shape]
    return [spacing[b] for b in plan.axes_backward], [shape[b] for b in plan.axes_backward]


def nnunet_labels(plan: ConfigurationPlan) -> dict:
    """dataset.json's `labels` (and `regions_class_order`) as nnU-Net's LabelManager reads them: its regions are the
    foreground entries in the file's order, so that order is written explicitly (background, the regions in output
    order, 'ignore' last)."""
    if not plan.has_regions:
        return {"labels": dict(plan.labels)}
    labels = {name: value for name, value in plan.labels.items() if value in (0, [0]) and name != "ignore"}
    labels |= {name: list(values) for name, values in plan.regions}
    if plan.ignore_label is not None:
        labels["ignore"] = plan.ignore_label
    return {"labels": labels, "regions_class_order": list(plan.regions_class_order or ())}


def foreground_values(plan: ConfigurationPlan) -> list[int]:
    """nnU-Net's `foreground_labels`: every label value but background and 'ignore' (a region dataset's too)."""
    if not plan.has_regions:
        return list(plan.sampled_labels)
    return sorted({int(v) for _, values in plan.regions for v in values} - {0})


def _mirror_axes(plan: ConfigurationPlan, spec) -> list[int]:
    """The axes test-time mirroring uses, as nnU-Net numbers them: indices into the patch's spatial axes."""
    dims = len(plan.patch_size)
    axes = plan.extra.get("mirror_axes")  # a plan imported from nnU-Net keeps nnU-Net's own
    if axes is None:
        return list(mirror_axes_for(dims, spec.augment))
    return [int(a) - (3 - dims) for a in sorted(set(axes)) if int(a) >= 3 - dims]


def postprocessing_pickle(decision: Mapping, foreground: list[int]) -> bytes:
    """nnU-Net's postprocessing.pkl ((functions, kwargs)) for a Voxelbase decision, naming nnU-Net's function by
    its import path without importing it (a GLOBAL opcode written by hand)."""
    kwargs = []
    if decision.get("foreground_lcc"):
        kwargs.append({"labels_or_regions": list(foreground)})
    kwargs += [{"labels_or_regions": int(label)} for label in decision.get("per_label_lcc") or []]
    kwargs += [{"labels_or_regions": tuple(int(v) for v in values)} for values in decision.get("per_region_lcc") or []]
    module, name = KEEP_LARGEST.rsplit(".", 1)
    function = pickle.GLOBAL + f"{module}\n{name}\n".encode()
    body = io.BytesIO()
    body.write(pickle.PROTO + bytes([2]) + pickle.MARK)
    body.write(pickle.MARK + function * len(kwargs) + pickle.LIST)
    body.write(pickle.dumps(kwargs, protocol=2)[2:-1])  # the kwargs list without its PROTO header and STOP
    body.write(pickle.TUPLE + pickle.STOP)
    return body.getvalue()


# --- the export ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NnunetExportResult:
    path: Path
    configuration: str
    folds: list[str]
    postprocessing: bool

    def summary(self) -> str:
        note = "; with postprocessing.pkl" if self.postprocessing else ""
        return (
            f"wrote nnU-Net v2 model folder {self.path} ({self.configuration}; folds {', '.join(self.folds)}{note}); "
            f"run it with nnUNetv2_predict_from_modelfolder -m {self.path} -f {' '.join(self.folds)}"
        )


def export_nnunet(
    experiment: str,
    output: str | os.PathLike,
    *,
    project: Project | str | None = None,
    configuration: str | None = None,
    folds=None,
    replace_existing: bool = False,
) -> NnunetExportResult:
    """Write one configuration of `experiment` (default: its selection, else its only configuration; every
    finished cross-validation fold, fold 'all' when none) as an nnU-Net v2 trained-model folder at `output`.
    Everything is built and checked before the folder appears, under a temporary name, in one rename."""
    project = Project.resolve(project)
    output = Path(output)
    if output.suffix.lower() == ".zip":
        raise NnunetExportError(f"{output}: --format nnunet writes a folder; give a folder path")
    if output.exists() and not replace_existing:
        raise NnunetExportError(f"{output} exists; pass --replace to overwrite it")
    dataset, spec = experiment_spec(project, experiment)
    trained = trained_folds(project, experiment)
    if not trained:
        raise NnunetExportError(f"experiment {experiment!r} has no finished fold to export (train it first)")
    choice, members = choose_configuration(project, experiment, configuration, trained)
    cascades = [m for m in members if m in CASCADE_STAGES]
    if cascades:  # its low-res stage would have to travel with it, and be run first
        raise NnunetExportError(
            f"{', '.join(cascades)} cannot be exported yet (a cascade needs its {CASCADE_STAGES[cascades[0]]} "
            "stage beside it); export another configuration with --configuration"
        )
    if len(members) != 1:
        raise NnunetExportError(
            f"{choice}: an nnU-Net model folder holds one configuration; pass --configuration "
            f"{' or '.join(members)} (export each to its own folder)"
        )
    name = members[0]
    chosen = list(choose_folds(experiment, name, folds, trained))
    with connect(project, read_only=True) as con:
        info = dataset_info(con, dataset)
        fingerprint = fingerprint_rows(con, dataset)
        decision = postprocessing_decisions(con, experiment).get(name)
    checkpoints = {f: load_checkpoint(project.run_dir(experiment, name, f) / CHECKPOINT) for f in chosen}
    first = checkpoints[chosen[0]]
    for fold, state in checkpoints.items():
        if state["plan"] != first["plan"]:
            raise NnunetExportError(
                f"{name}: fold {fold} was trained with a different plan than fold {chosen[0]}; pass --folds of one plan"
            )
    plan = ConfigurationPlan.from_dict(first["plan"])
    cases = fingerprint.cases if fingerprint is not None else []
    if cases:
        median_spacing = np.median([c[1] for c in cases], axis=0)
        median_shape = np.round(np.median([c[2] for c in cases], axis=0))
    else:  # an imported experiment without its dataset's fingerprint: the plan's own figures, back in (z, y, x)
        median_spacing, median_shape = _plan_medians(plan)
    plans = nnunet_plans(plan, median_spacing=median_spacing, median_shape=median_shape)
    channels = fingerprint.channel_names if fingerprint is not None else {}
    dataset_json = {
        "channel_names": channels or {str(c): f"channel_{c}" for c in range(plan.n_channels)},
        **nnunet_labels(plan),
        "numTraining": fingerprint.n_labelled if fingerprint is not None else 0,
        "file_ending": info.file_ending if info is not None else ".nii.gz",
        "name": dataset,
        "description": f"exported by Voxelbase from experiment {experiment!r}",
    }
    axes = _mirror_axes(plan, spec)
    files = {
        "dataset.json": json.dumps(dataset_json, indent=4).encode(),
        "plans.json": json.dumps(plans, indent=4).encode(),
    }
    for fold, state in checkpoints.items():
        payload = {
            "network_weights": nnunet_network_weights(plan.architecture, state["network"]),
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": int(state["epoch"]),
            "init_args": {
                "plans": plans,
                "configuration": name,
                "fold": int(fold) if fold.isdigit() else fold,
                "dataset_json": dataset_json,
                "device": "cpu",
            },
            "trainer_name": TRAINER,
            "inference_allowed_mirroring_axes": tuple(axes),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        files[f"fold_{fold}/{NNUNET_CHECKPOINT}"] = buffer.getvalue()
    written_pp = bool(
        decision and (decision.get("foreground_lcc") or decision.get("per_label_lcc") or decision.get("per_region_lcc"))
    )
    if written_pp:
        folds_name = "_".join(chosen)
        files[f"crossval_results_folds_{folds_name}/postprocessing.pkl"] = postprocessing_pickle(
            decision, foreground_values(plan)
        )
    _write_atomically(output, files, replace_existing=replace_existing)
    return NnunetExportResult(output, name, chosen, written_pp)


__all__ = [
    "NnunetExportError",
    "NnunetExportResult",
    "export_nnunet",
    "nnunet_network_weights",
    "nnunet_plans",
    "nnunet_state_dict_names",
    "postprocessing_pickle",
]
