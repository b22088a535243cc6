"""nnU-Net v2 trained models read as Voxelbase plans and networks, without nnU-Net and without running its pickles.

A source is a trained-model folder `<trainer>__<plans>__<configuration>/` (`dataset.json`, `plans.json`,
`fold_<k>/checkpoint_final.pth`, optionally `crossval_results_folds_<k_k>/postprocessing.pkl`), a folder holding
such folders (an unpacked export), or the zip `nnUNetv2_export_model_to_zip` writes (several configurations).

What carries over: each configuration's plan (spacing, patch, normalization with the dataset's CT statistics,
resampling orders, the architecture) and labels, the folds' weights, the mirroring axes nnU-Net's trainer allowed
for test-time augmentation, and the postprocessing `nnUNetv2_find_best_configuration` chose. The plan is marked
`inference_space: logits`, so prediction does what nnU-Net's predictor does: average the folds' logits, resample
logits back to the image, then softmax.

nnU-Net's checkpoints and `postprocessing.pkl` are pickles. Checkpoints load with `torch.load(weights_only=True)`
and an explicit allow-list of the numpy types they hold; the globals a checkpoint names are listed first, and one
outside the list refuses the file by name before anything is unpickled. `postprocessing.pkl` goes through an
unpickler that knows only nnU-Net's keep-the-largest-component function, by name, without importing it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from voxelbase.inference.inputs import PredictionError
from voxelbase.networks import network_for_plan
from voxelbase.networks.nnunet import NnunetArchitectureError, load_nnunet_weights, nnunet_architecture
from voxelbase.plan import ANISOTROPY_THRESHOLD, ConfigurationPlan, PlanFormatError, output_count, region_names_of

NNUNET_CHECKPOINT = "checkpoint_final.pth"
MODEL_FOLDER = re.compile(r"^(?P<trainer>[^/]+?)__(?P<plans>[^/]+?)__(?P<configuration>[^/_][^/]*)$")
FOLD_FOLDER = re.compile(r"^fold_(?P<fold>\d+|all)$")

NORMALIZATION_SCHEMES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "noscale",
    "RescaleTo01Normalization": "rescale_to_0_1",
}
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
KEEP_LARGEST = "nnunetv2.postprocessing.remove_connected_components.remove_all_but_largest_component_from_segmentation"


class NnunetImportError(PredictionError):
    """An nnU-Net model that cannot be imported; the message names the file and the problem."""


# --- the checkpoint allow-list ----------------------------------------------------------------------------------


def _numpy_allow_list() -> dict[str, object]:
    """The globals an nnU-Net checkpoint may name besides torch's own: numpy scalars (its logs and EMA Dice), their
    dtypes, and plain arrays; under numpy 1's module names (`numpy.core`) too, for checkpoints saved with it."""
    core = np._core.multiarray
    allowed: dict[str, object] = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed[f"{module}.scalar"] = core.scalar
        allowed[f"{module}._reconstruct"] = core._reconstruct
    for kind in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"):
        cls = type(np.dtype(kind))
        allowed[f"numpy.dtypes.{cls.__name__}"] = cls
    return allowed


ALLOWED_GLOBALS = _numpy_allow_list()


def load_nnunet_checkpoint(data: bytes, *, where: str) -> dict:
    """An nnU-Net checkpoint's contents, on the CPU; refused when its pickle names a type outside the allow-list
    (named in the error), and never by running code from it."""
    try:
        named = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception as error:  # not a zip-format torch file, truncated, ...
        raise NnunetImportError(
            f"{where}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from error
    refused = sorted(set(named) - set(ALLOWED_GLOBALS))
    if refused:
        raise NnunetImportError(
            f"{where}: refused: the checkpoint's pickle names {', '.join(refused)}, outside the allow-list of "
            "numpy types an nnU-Net checkpoint holds; it was not loaded (loading it could run code)"
        )
    try:
        with torch.serialization.safe_globals([(obj, name) for name, obj in ALLOWED_GLOBALS.items()]):
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise NnunetImportError(f"{where}: cannot load the checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("network_weights"), dict):
        raise NnunetImportError(f"{where}: not an nnU-Net checkpoint (no 'network_weights')")
    return payload


class _PostprocessingUnpickler(pickle.Unpickler):
    """Knows nnU-Net's keep-the-largest-component function by name (returns the name; imports nothing)."""

    def find_class(self, module: str, name: str):
        if f"{module}.{name}" == KEEP_LARGEST:
            return KEEP_LARGEST
        if f"{module}.{name}" in ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype"):
            return ALLOWED_GLOBALS[f"{module}.{name}"]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def postprocessing_decision(data: bytes, *, where: str, foreground: list[int]) -> dict:
    """`postprocessing.pkl` ((functions, kwargs)) as Voxelbase's decision {foreground_lcc, per_label_lcc}."""
    try:
        functions, kwargs = _PostprocessingUnpickler(io.BytesIO(data)).load()
    except Exception as error:
        raise NnunetImportError(f"{where}: refused ({type(error).__name__}: {error})") from error
    decision = {"foreground_lcc": False, "per_label_lcc": []}
    for function, arguments in zip(functions, kwargs, strict=True):
        target = arguments.get("labels_or_regions") if isinstance(arguments, dict) else None
        if function != KEEP_LARGEST:
            raise NnunetImportError(f"{where}: postprocessing function {function!r} is not supported")
        if isinstance(target, (list, tuple)) and sorted(int(t) for t in target) == foreground:
            decision["foreground_lcc"] = True
        elif isinstance(target, (int, np.integer)):
            decision["per_label_lcc"].append(int(target))
        elif isinstance(target, (list, tuple)) and target:  # a region: its largest component, the rest background
            decision.setdefault("per_region_lcc", []).append(sorted(int(t) for t in target))
        else:
            raise NnunetImportError(f"{where}: postprocessing of {target!r} is not supported")
    return decision


# --- reading the source -----------------------------------------------------------------------------------------


class _Files:
    """The files of a folder or zip by posix path relative to it."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as error:
                raise NnunetImportError(f"{path}: not an nnU-Net model folder or zip ({error})") from error
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        elif path.is_dir():
            self.names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        else:
            raise NnunetImportError(f"{path}: not found (give an nnU-Net trained-model folder or exported zip)")

    def read(self, name: str) -> bytes | None:
        if self._zip is not None:
            try:
                return self._zip.read(name)
            except KeyError:
                return None
        file = self.path / name
        return file.read_bytes() if file.is_file() else None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _model_folders(files: _Files) -> dict[str, str]:
    """configuration -> its folder's prefix inside the source ('' when the source is the folder itself)."""
    found: dict[str, str] = {}
    source_name = files.path.name
    for name in files.names:
        parts = PurePosixPath(name).parts
        # a model folder is recognised by what it holds: dataset.json, plans.json or fold_<k>/
        for i, part in enumerate(parts[:-1]):
            if part in ("dataset.json", "plans.json") or FOLD_FOLDER.match(part):
                folder_parts = parts[:i]
                break
        else:
            if parts[-1] not in ("dataset.json", "plans.json"):
                continue
            folder_parts = parts[:-1]
        folder = folder_parts[-1] if folder_parts else source_name
        match = MODEL_FOLDER.match(folder)
        if match is None:
            continue
        prefix = "/".join(folder_parts) + "/" if folder_parts else ""
        configuration = match["configuration"]
        if found.setdefault(configuration, prefix) != prefix:
            raise NnunetImportError(
                f"{files.path}: configuration {configuration!r} appears twice ({found[configuration]!r} and "
                f"{prefix!r}); import one folder at a time"
            )
    if not found:
        raise NnunetImportError(
            f"{files.path}: no nnU-Net trained-model folder (<trainer>__<plans>__<configuration>/ with dataset.json, "
            "plans.json and fold_<k>/checkpoint_final.pth) found"
        )
    return found


def _json(files: _Files, name: str) -> dict:
    data = files.read(name)
    where = f"{files.path}/{name}" if files.path.is_dir() else f"{files.path}:{name}"
    if data is None:
        raise NnunetImportError(f"{where} is missing; an nnU-Net trained-model folder needs it")
    try:
        return json.loads(data)
    except ValueError as error:
        raise NnunetImportError(f"{where}: not valid JSON ({error})") from error


def _configuration_entry(plans: dict, name: str, where: str) -> dict:
    """The configuration with `inherits_from` resolved, as nnU-Net's PlansManager does."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise NnunetImportError(f"{where}: plans.json has no configuration {name!r} ({', '.join(configurations)})")
    entry = dict(configurations[name])
    seen = {name}
    while "inherits_from" in entry:
        parent = entry.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise NnunetImportError(f"{where}: configuration {name!r} inherits from {parent!r}, which is not usable")
        seen.add(parent)
        entry = {**configurations[parent], **entry}
    return entry


def _normalization(plans: dict, entry: dict, n_channels: int, where: str) -> list[dict]:
    schemes = entry.get("normalization_schemes") or []
    masks = entry.get("use_mask_for_norm") or [False] * len(schemes)
    if len(schemes) != n_channels:
        raise NnunetImportError(f"{where}: {len(schemes)} normalization schemes for {n_channels} channel(s)")
    properties = plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for channel, (scheme, mask) in enumerate(zip(schemes, masks, strict=True)):
        ours = NORMALIZATION_SCHEMES.get(scheme)
        if ours is None:
            raise NnunetImportError(
                f"{where}: normalization {scheme!r} is not supported ({', '.join(NORMALIZATION_SCHEMES)})"
            )
        stats = properties.get(str(channel), {}) if ours == "ct" else {}
        if ours == "ct" and not stats:
            raise NnunetImportError(f"{where}: CTNormalization of channel {channel} without intensity properties")
        out.append(
            {
                "scheme": ours,
                "use_nonzero_mask": bool(mask),
                "mean": stats.get("mean"),
                "std": stats.get("std"),
                "percentile_00_5": stats.get("percentile_00_5"),
                "percentile_99_5": stats.get("percentile_99_5"),
            }
        )
    return out


def _resampling(entry: dict, where: str) -> dict:
    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        if entry.get(key, RESAMPLING_FUNCTION) != RESAMPLING_FUNCTION:
            raise NnunetImportError(f"{where}: {key} {entry[key]!r} is not supported (only {RESAMPLING_FUNCTION})")
    data = entry.get("resampling_fn_data_kwargs") or {}
    seg = entry.get("resampling_fn_seg_kwargs") or {}
    probabilities = entry.get("resampling_fn_probabilities_kwargs") or {}
    shared = {(k.get("order_z", 0), k.get("force_separate_z")) for k in (data, seg, probabilities)}
    if len(shared) > 1:
        raise NnunetImportError(f"{where}: order_z / force_separate_z differ between images, labels and probabilities")
    order_z, force_separate_z = shared.pop()
    return {
        "image_order": int(data.get("order", 3)),
        "label_order": int(seg.get("order", 1)),
        "probabilities_order": int(probabilities.get("order", 1)),
        "order_z": int(order_z),
        "force_separate_z": force_separate_z,
        "anisotropy_threshold": ANISOTROPY_THRESHOLD,
        "bit_exact": True,  # the model was trained on nnU-Net's float64 resampling: reproduce it bit for bit
    }


def _value(entry: dict, key: str, where: str):
    """A configuration setting of nnU-Net's plans.json; an error naming it when it is not there."""
    value = entry.get(key)
    if value is None:
        raise NnunetImportError(f"{where}: plans.json: configuration {entry.get('data_identifier', '?')} lacks {key!r}")
    return value


def _labels(dataset_json: dict, where: str) -> dict[str, int | list[int]]:
    """dataset.json's labels: name -> value, or a region's list of values (nnU-Net's region-based training)."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise NnunetImportError(f"{where}: dataset.json: 'labels' is missing or empty")
    try:
        return {str(k): [int(x) for x in v] if isinstance(v, (list, tuple)) else int(v) for k, v in labels.items()}
    except (TypeError, ValueError) as error:
        raise NnunetImportError(
            f"{where}: dataset.json: 'labels' holds a value that is not a label ({error})"
        ) from error


def _regions(dataset_json: dict, labels: dict, where: str) -> dict:
    """A region dataset's output order and the label value each region writes, as nnU-Net's LabelManager reads them
    (every foreground entry a region, in dataset.json's order); nothing for plain labels."""
    if not any(isinstance(v, list) for v in labels.values()):
        return {}
    names = region_names_of(labels)
    order = dataset_json.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(names):
        raise NnunetImportError(
            f"{where}: dataset.json: 'regions_class_order' must list one label value per region ({', '.join(names)}), "
            f"got {order!r}"
        )
    return {"regions_class_order": [int(v) for v in order], "region_names": names}


def configuration_plan(
    plans: dict, dataset_json: dict, configuration: str, *, mirror_axes, trainer: str, where: str
) -> ConfigurationPlan:
    """One configuration of nnU-Net's plans.json as a Voxelbase plan (nnU-Net's settings, nnU-Net's inference)."""
    entry = _configuration_entry(plans, configuration, where)
    if entry.get("previous_stage"):
        raise NnunetImportError(f"{where}: {configuration} is a cascade stage; cascades are not supported")
    # nnU-Net's spacing, patch size and mirror axes are in its transposed order, as a Voxelbase plan's are
    transpose = [int(a) for a in plans.get("transpose_forward", (0, 1, 2))]
    if sorted(transpose) != [0, 1, 2]:
        raise NnunetImportError(f"{where}: plans.json: transpose_forward {transpose} is not a permutation of 0, 1, 2")
    labels = _labels(dataset_json, where)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    try:
        architecture = nnunet_architecture(_value(entry, "architecture", where))
    except NnunetArchitectureError as error:
        raise NnunetImportError(f"{where}: {configuration}: {error}") from error
    conv_dims = architecture["conv_dims"]
    data = {
        "dataset": plans.get("dataset_name"),
        "plan": plans.get("plans_name"),
        "configuration": configuration,
        "preset": "nnunet",
        "gpu_memory_gb": 8.0,
        "dataset_hash": None,
        "spacing": [float(s) for s in _value(entry, "spacing", where)],
        "patch_size": [int(p) for p in _value(entry, "patch_size", where)],
        "batch_size": int(_value(entry, "batch_size", where)),
        "median_image_size_in_voxels": [float(m) for m in entry.get("median_image_size_in_voxels", [])],
        "batch_dice": bool(entry.get("batch_dice", False)),
        "n_channels": len(channels),
        "labels": labels,
        "num_classes": output_count(labels),
        **_regions(dataset_json, labels, where),
        "normalization": _normalization(plans, entry, len(channels), where),
        "resampling": _resampling(entry, where),
        "architecture": architecture,
        "previous_stage": None,
        "transpose_forward": transpose,
        **({"stated_transposed": True} if conv_dims == 3 and transpose != [0, 1, 2] else {}),
        # what nnU-Net's predictor does differently from Voxelbase's own models (see engine/inference/probabilities)
        "inference_space": "logits",
        "mirror_axes": [int(a) + 3 - conv_dims for a in mirror_axes],  # Voxelbase's (z, y, x) axis numbers
        "nnunet": {"trainer": trainer, "plans": plans.get("plans_name"), "configuration": configuration},
    }
    try:
        return ConfigurationPlan.from_dict(data)
    except (PlanFormatError, KeyError, TypeError, ValueError) as error:
        raise NnunetImportError(f"{where}: {configuration}: cannot read the plan ({error})") from error


# --- the whole model ---------------------------------------------------------------------------------------------


@dataclass
class NnunetConfiguration:
    name: str
    trainer: str
    plan: ConfigurationPlan
    networks: dict[str, torch.nn.Module] = field(default_factory=dict)  # fold -> network with nnU-Net's weights
    postprocessing: dict | None = None


@dataclass(frozen=True)
class NnunetModel:
    source: Path
    dataset: str
    dataset_json: dict
    configurations: dict[str, NnunetConfiguration]

    @property
    def folds(self) -> dict[str, list[str]]:
        return {name: list(c.networks) for name, c in self.configurations.items()}


def _folds_present(files: _Files, prefix: str) -> list[str]:
    folds = set()
    for name in files.names:
        if name.startswith(prefix) and name.endswith("/" + NNUNET_CHECKPOINT):
            match = FOLD_FOLDER.match(PurePosixPath(name[len(prefix) :]).parts[0])
            if match:
                folds.add(match["fold"])
    return sorted(folds, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def read_nnunet_model(source: str | os.PathLike, *, folds=None, configurations=None) -> NnunetModel:
    """Every configuration of `source` (or those named), with the folds asked for (default: every fold with a
    `checkpoint_final.pth`), their networks built and loaded, on the CPU."""
    path = Path(source)
    files = _Files(path)
    try:
        folders = _model_folders(files)
        if configurations:
            unknown = [c for c in configurations if c not in folders]
            if unknown:
                raise NnunetImportError(
                    f"{path}: no configuration {', '.join(unknown)} in it ({', '.join(sorted(folders))})"
                )
            folders = {c: folders[c] for c in configurations}
        wanted = None if folds is None else list(dict.fromkeys(str(f) for f in folds))
        result: dict[str, NnunetConfiguration] = {}
        dataset_json: dict = {}
        dataset = None
        for configuration, prefix in sorted(folders.items()):
            where = f"{path / prefix}" if path.is_dir() else f"{path}:{prefix}"
            where = where.rstrip("/")
            trainer = MODEL_FOLDER.match(PurePosixPath(prefix).name if prefix else path.name)["trainer"]
            dataset_json = _json(files, prefix + "dataset.json")
            plans = _json(files, prefix + "plans.json")
            dataset = dataset or plans.get("dataset_name") or "nnunet"
            present = _folds_present(files, prefix)
            chosen = wanted if wanted is not None else present
            missing = [f for f in chosen if f not in present]
            if missing or not chosen:
                raise NnunetImportError(
                    f"{where}: fold(s) {', '.join(missing) or 'none'} missing (fold_<k>/{NNUNET_CHECKPOINT}; "
                    f"folds there: {', '.join(present) or 'none'})"
                )
            networks: dict[str, torch.nn.Module] = {}
            plan = None
            for fold in chosen:
                name = f"{prefix}fold_{fold}/{NNUNET_CHECKPOINT}"
                checkpoint = load_nnunet_checkpoint(files.read(name), where=f"{where}/fold_{fold}/{NNUNET_CHECKPOINT}")
                if plan is None:
                    axes = checkpoint.get("inference_allowed_mirroring_axes")
                    plan = configuration_plan(
                        plans,
                        dataset_json,
                        configuration,
                        mirror_axes=list(axes) if axes is not None else [],
                        trainer=str(checkpoint.get("trainer_name", trainer)),
                        where=where,
                    )
                network = network_for_plan(plan, deep_supervision=False)
                try:
                    load_nnunet_weights(network, checkpoint["network_weights"])
                except NnunetArchitectureError as error:
                    raise NnunetImportError(f"{where}/fold_{fold}/{NNUNET_CHECKPOINT}: {error}") from error
                networks[fold] = network.eval()
            postprocessing = None
            folds_name = "_".join(chosen)
            pickled = files.read(f"{prefix}crossval_results_folds_{folds_name}/postprocessing.pkl")
            if pickled is not None:
                postprocessing = postprocessing_decision(
                    pickled,
                    where=f"{where}/crossval_results_folds_{folds_name}/postprocessing.pkl",
                    foreground=list(plan.sampled_labels),
                )
            result[configuration] = NnunetConfiguration(configuration, trainer, plan, networks, postprocessing)
        return NnunetModel(path, str(dataset), dataset_json, result)
    finally:
        files.close()


__all__ = [
    "ALLOWED_GLOBALS",
    "NnunetImportError",
    "NnunetModel",
    "configuration_plan",
    "load_nnunet_checkpoint",
    "read_nnunet_model",
]
