"""Model bundles: a trained experiment as one self-contained folder or `.zip`, to predict without a project.

Layout (every path relative to the bundle root):

    manifest.json                                   format version, experiment, labels, channels, file ending,
                                                    configurations and folds, selection, postprocessing, the
                                                    resolved spec, the training spacing range, and the sha256 of
                                                    every other file
    plans/<configuration>.json                      `ConfigurationPlan.to_dict()`, as saved in the checkpoints
    weights/<configuration>/fold_<k>.safetensors    the network's state dict (tensors only: loading runs no code)

Every listed file is checked against its sha256 before anything is built, so a truncated download or an edited
file is refused by name rather than producing plausible but wrong segmentations.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from voxelbase.catalog.runs import ensemble_members, ensemble_name
from voxelbase.device import resolve_device
from voxelbase.inference.inputs import PredictionError
from voxelbase.inference.models import ConfigurationModels, PredictionModels, choose_folds
from voxelbase.networks import network_for_plan
from voxelbase.plan import ConfigurationPlan, PlanFormatError
from voxelbase.spec import spec_from_dict

BUNDLE_FORMAT = "voxelbase-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(PredictionError):
    """A bundle that cannot be used: missing, altered, of another format, or lacking what was asked for."""


def plan_file(configuration: str) -> str:
    return f"plans/{configuration}.json"


def weights_file(configuration: str, fold: str) -> str:
    return f"weights/{configuration}/fold_{fold}.safetensors"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_name(name: str) -> bool:
    """A manifest entry must stay inside the bundle: no absolute paths, no '..'."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


class BundleReader:
    """The files of a bundle folder or zip, by their posix path inside it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as error:
                raise BundleError(f"{self.path}: not a model bundle (not a folder or a zip file: {error})") from error
            # a zip made by hand may nest everything under one folder: accept that folder as the root
            names = set(self._zip.namelist())
            roots = {n.split("/", 1)[0] for n in names}
            self._prefix = f"{roots.pop()}/" if MANIFEST not in names and len(roots) == 1 else ""
        elif not self.path.is_dir():
            raise BundleError(f"{self.path}: no model bundle there (export one with voxelbase export EXPERIMENT)")

    def read(self, name: str) -> bytes | None:
        """The file's bytes, None when it is not in the bundle."""
        if self._zip is not None:
            try:
                return self._zip.read(self._prefix + name)
            except KeyError:
                return None
        file = self.path / name
        return file.read_bytes() if file.is_file() else None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def read_manifest(reader: BundleReader) -> dict:
    data = reader.read(MANIFEST)
    if data is None:
        raise BundleError(f"{reader.path}: {MANIFEST} is missing; not a model bundle")
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise BundleError(f"{reader.path}: {MANIFEST} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{reader.path}: {MANIFEST} is not a Voxelbase model bundle manifest")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(
            f"{reader.path}: bundle format version {manifest.get('format_version')} is not supported "
            f"(this Voxelbase reads version {BUNDLE_VERSION})"
        )
    return manifest


def verify_bundle(reader: BundleReader, manifest: dict) -> dict[str, bytes]:
    """Every listed file's bytes, each checked against its sha256; the first missing or altered one is an error."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{reader.path}: {MANIFEST} lists no files")
    contents = {}
    for name, expected in sorted(files.items()):
        if not _safe_name(name):
            raise BundleError(f"{reader.path}: {MANIFEST} lists an unsafe path {name!r}")
        data = reader.read(name)
        if data is None:
            raise BundleError(f"{reader.path}: {name} is missing from the bundle")
        if sha256(data) != expected:
            raise BundleError(f"{reader.path}: {name} has been altered or damaged (its sha256 does not match)")
        contents[name] = data
    for configuration, folds in manifest["configurations"].items():
        for name in (plan_file(configuration), *(weights_file(configuration, f) for f in folds)):
            if name not in contents:
                raise BundleError(f"{reader.path}: {name} is missing from the bundle's file list")
    return contents


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, each configuration's plan and each fold's weights (on the CPU)."""

    path: Path
    manifest: dict
    plans: dict[str, ConfigurationPlan]
    weights: dict[tuple[str, str], dict[str, torch.Tensor]]

    @property
    def configurations(self) -> dict[str, list[str]]:
        return {c: [str(f) for f in folds] for c, folds in self.manifest["configurations"].items()}


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle; nothing is trusted before every sha256 matched."""
    from safetensors.torch import load as load_safetensors

    reader = BundleReader(path)
    try:
        manifest = read_manifest(reader)
        contents = verify_bundle(reader, manifest)
    finally:
        reader.close()
    plans, weights = {}, {}
    for configuration, folds in manifest["configurations"].items():
        name = plan_file(configuration)
        try:
            plans[configuration] = ConfigurationPlan.from_dict(json.loads(contents[name]))
        except (ValueError, PlanFormatError) as error:
            raise BundleError(f"{reader.path}: {name} is not a valid plan ({error})") from error
        for fold in folds:
            name = weights_file(configuration, str(fold))
            try:
                weights[configuration, str(fold)] = load_safetensors(contents[name])
            except Exception as error:  # safetensors reports a bad header in several exception types
                raise BundleError(f"{reader.path}: {name} is not a safetensors file ({error})") from error
    return Bundle(Path(path), manifest, plans, weights)


def bundle_network(bundle: Bundle, configuration: str, fold: str) -> torch.nn.Module:
    """The fold's network on the CPU, built from the plan as `load_trained_model` builds it, in eval mode."""
    network = network_for_plan(bundle.plans[configuration], deep_supervision=False)
    try:
        network.load_state_dict(bundle.weights[configuration, fold])
    except RuntimeError as error:
        raise BundleError(
            f"{bundle.path}: {weights_file(configuration, fold)} does not fit the network of "
            f"{plan_file(configuration)} ({str(error).splitlines()[0]})"
        ) from error
    return network.eval()


@dataclass(frozen=True)
class BundleModels:
    """What `predict` needs from a bundle: the models, plus what it would otherwise read from the catalog."""

    models: PredictionModels
    channel_names: list[str]
    spacing_range: tuple[list[float], list[float]] | None


def load_bundle_models(
    path: str | os.PathLike, *, configuration: str | None = None, folds=None, device: str | None = None
) -> BundleModels:
    """Verify a bundle and load its networks (default: its recorded choice with every fold it holds)."""
    bundle = open_bundle(path)
    manifest = bundle.manifest
    experiment = manifest["experiment"]
    spec = spec_from_dict(manifest["spec"], source=f"{path}: {MANIFEST}")
    trained = bundle.configurations
    if configuration is None:
        choice = manifest["choice"]
        member_names = ensemble_members(choice)
    else:
        member_names = ensemble_members(configuration)
        choice = ensemble_name(member_names) if len(member_names) > 1 else configuration
    for name in member_names:
        if name not in trained:
            raise BundleError(f"{path}: configuration {name!r} is not in the bundle (it holds {', '.join(trained)})")
    torch_device = resolve_device(device or spec.predict.device)

    def member(name: str, chosen: tuple[str, ...]) -> ConfigurationModels:
        """One configuration's folds; a cascade stage with its previous stage's same folds (run first)."""
        plan = bundle.plans[name]
        previous = None
        if plan.previous_stage:
            missing = [f for f in chosen if f not in trained.get(plan.previous_stage, [])]
            if missing:
                raise BundleError(
                    f"{path}: {name} cascades from {plan.previous_stage}, whose fold(s) {', '.join(missing)} are not "
                    "in the bundle"
                )
            previous = member(plan.previous_stage, chosen)
        networks = tuple(bundle_network(bundle, name, f).to(torch_device) for f in chosen)
        return ConfigurationModels(name, chosen, plan, networks, previous)

    members = [member(name, choose_folds(experiment, name, folds, trained)) for name in member_names]
    decision = manifest.get("postprocessing", {}).get(choice)
    models = PredictionModels(experiment, manifest["dataset"], spec, choice, tuple(members), decision, torch_device)
    spacing = manifest.get("spacing_range")
    return BundleModels(
        models,
        list(manifest.get("channel_names") or []),
        (list(spacing[0]), list(spacing[1])) if spacing else None,
    )
