"""Reading a dataset folder's description: the nnU-Net v2 raw layout and the Medical Segmentation Decathlon layout.

Both become one `DatasetSource`: channels, labels (plain, region and ignore labels) and a list of cases with the
files that make them. Nothing is read beyond `dataset.json` and the folder listings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from voxelbase.catalog.datasets import LabelRow, has_region_labels, ignore_label_of
from voxelbase.ingest.errors import IngestError
from voxelbase.ingest.label_kinds import check_label_kinds
from voxelbase.store.layout import unsafe_name

NNUNET_REQUIRED = ("channel_names", "labels", "numTraining", "file_ending")
MSD_REQUIRED = ("modality", "labels", "training")


LabelDef = LabelRow  # ingest reads what the catalog records


@dataclass(frozen=True)
class CaseSource:
    case_id: str
    split: str  # 'train' or 'test'
    image_files: tuple[Path, ...]  # one per channel (nnU-Net) or one 4-D file (MSD)
    label_file: Path | None
    four_d: bool = False


@dataclass(frozen=True)
class DatasetSource:
    root: Path
    layout: str
    file_ending: str
    channel_names: tuple[str, ...]
    labels: tuple[LabelDef, ...]
    cases: tuple[CaseSource, ...]
    description: dict

    @property
    def declared_values(self) -> frozenset[int]:
        values: set[int] = {0}
        for label in self.labels:
            if label.value is not None:
                values.add(label.value)
            values.update(label.region_values or ())
        return frozenset(values)

    @property
    def max_label_value(self) -> int:
        return max(self.declared_values)

    @property
    def ignore_label(self) -> int | None:
        return ignore_label_of(self.labels)

    @property
    def has_regions(self) -> bool:
        return has_region_labels(self.labels)


def check_case_id(case_id: str, *, where: Path) -> str:
    problem = unsafe_name(case_id)
    if problem:
        raise IngestError(f"{where}: case id {problem}")
    return case_id


def _as_int(value, *, where: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise IngestError(f"{where}: label {key!r} has value {value!r}, expected an integer or a list of integers")
    try:
        number = int(value)
    except ValueError as error:
        raise IngestError(f"{where}: label {key!r} has value {value!r}, expected an integer") from error
    if number != float(value) or number < 0:
        raise IngestError(f"{where}: label {key!r} has value {value!r}, expected a non-negative integer")
    return number


def _nnunet_labels(raw: dict, *, where: Path) -> tuple[LabelDef, ...]:
    if not isinstance(raw, dict) or not raw:
        raise IngestError(f"{where}: 'labels' must be a non-empty mapping of name to value")
    labels = []
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            members = tuple(_as_int(v, where=where, key=name) for v in value)
            if len(members) == 1:
                labels.append(LabelDef(name=name, value=members[0]))
            else:
                labels.append(LabelDef(name=name, value=None, region_values=members))
        else:
            number = _as_int(value, where=where, key=name)
            labels.append(LabelDef(name=name, value=number, is_ignore=(name == "ignore")))
    if not any(label.value == 0 for label in labels):
        raise IngestError(f"{where}: 'labels' must declare background as 0")
    return tuple(labels)


def _require(description: dict, keys: tuple[str, ...], *, where: Path, layout: str) -> None:
    missing = [key for key in keys if key not in description]
    if missing:
        raise IngestError(f"{where}: missing required key(s) {', '.join(map(repr, missing))} for the {layout} layout")


def read_description(root: Path) -> tuple[Path, dict]:
    path = root / "dataset.json"
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder")
    if not path.is_file():
        raise IngestError(f"{path}: not found (a dataset folder needs a dataset.json)")
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IngestError(f"{path}: cannot be read as JSON ({error})") from error
    if not isinstance(description, dict):
        raise IngestError(f"{path}: expected a JSON object")
    return path, description


def discover(root: Path) -> DatasetSource:
    """Describe the dataset at `root`, detecting its layout from dataset.json."""
    root = Path(root).absolute()
    path, description = read_description(root)
    if "modality" in description and "training" in description:
        return _discover_msd(root, path, description)
    _require(description, NNUNET_REQUIRED, where=path, layout="nnU-Net v2")
    return _discover_nnunet(root, path, description)


def _discover_nnunet(root: Path, path: Path, description: dict) -> DatasetSource:
    ending = description["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise IngestError(f"{path}: 'file_ending' must be a string like '.nii.gz', got {ending!r}")
    channel_map = description["channel_names"]
    if not isinstance(channel_map, dict) or not channel_map:
        raise IngestError(f'{path}: \'channel_names\' must be a non-empty mapping like {{"0": "CT"}}')
    channels = tuple(str(channel_map[k]) for k in sorted(channel_map, key=int))
    labels = _nnunet_labels(description["labels"], where=path)
    check_label_kinds(labels, description, where=path)

    train_ids = _case_ids(root / "imagesTr", ending, n_channels=len(channels), where=path, required=True)
    label_dir = root / "labelsTr"
    label_ids = {check_case_id(f.name[: -len(ending)], where=f) for f in _listing(label_dir) if f.name.endswith(ending)}
    for case_id in sorted(train_ids - label_ids):
        raise IngestError(f"{label_dir / (case_id + ending)}: label file missing for training case {case_id!r}")
    for case_id in sorted(label_ids - train_ids):
        raise IngestError(
            f"{root / 'imagesTr' / (case_id + '_0000' + ending)}: image missing for labelled case {case_id!r}"
        )
    if int(description["numTraining"]) != len(train_ids):
        raise IngestError(
            f"{path}: numTraining is {description['numTraining']} but imagesTr holds {len(train_ids)} cases"
        )
    cases = [
        CaseSource(
            case_id=c,
            split="train",
            image_files=tuple(root / "imagesTr" / f"{c}_{ch:04d}{ending}" for ch in range(len(channels))),
            label_file=label_dir / f"{c}{ending}",
        )
        for c in sorted(train_ids)
    ]
    test_dir = root / "imagesTs"
    if test_dir.is_dir():
        test_ids = _case_ids(test_dir, ending, n_channels=len(channels), where=path, required=False)
        clash = test_ids & train_ids
        if clash:
            raise IngestError(f"{test_dir}: case ids {sorted(clash)} are also training cases")
        cases += [
            CaseSource(
                case_id=c,
                split="test",
                image_files=tuple(test_dir / f"{c}_{ch:04d}{ending}" for ch in range(len(channels))),
                label_file=None,
            )
            for c in sorted(test_ids)
        ]
    return DatasetSource(root, "nnunet", ending, channels, labels, tuple(cases), description)


def _listing(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")) if folder.is_dir() else []


def _case_ids(folder: Path, ending: str, *, n_channels: int, where: Path, required: bool) -> set[str]:
    """Case ids from `<case>_<cccc><ending>` files; every case must have every channel."""
    if not folder.is_dir():
        if required:
            raise IngestError(f"{folder}: folder not found (the nnU-Net layout needs imagesTr/)")
        return set()
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    found: dict[str, set[int]] = {}
    for f in _listing(folder):
        match = pattern.match(f.name)
        if not match:
            if f.name.endswith(ending):
                raise IngestError(f"{f}: image files must be named <case>_<cccc>{ending}")
            continue
        case_id = check_case_id(match.group(1), where=f)
        found.setdefault(case_id, set()).add(int(match.group(2)))
    for case_id, present in sorted(found.items()):
        for channel in range(n_channels):
            if channel not in present:
                raise IngestError(
                    f"{folder / f'{case_id}_{channel:04d}{ending}'}: channel {channel} missing for case {case_id!r}"
                )
        extra = sorted(present - set(range(n_channels)))
        if extra:
            raise IngestError(
                f"{folder / f'{case_id}_{extra[0]:04d}{ending}'}: channel {extra[0]} is not declared in {where}"
            )
    if required and not found:
        raise IngestError(f"{folder}: no images named <case>_<cccc>{ending}")
    return set(found)


def _msd_file(root: Path, relative: str, *, where: Path) -> Path:
    if not isinstance(relative, str):
        raise IngestError(f"{where}: expected a file path, got {relative!r}")
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise IngestError(f"{where}: file {relative!r} lies outside the dataset folder")
    return path


def _msd_case_id(path: Path, ending: str) -> str:
    return check_case_id(path.name[: -len(ending)] if path.name.endswith(ending) else path.stem, where=path)


def _discover_msd(root: Path, path: Path, description: dict) -> DatasetSource:
    _require(description, MSD_REQUIRED, where=path, layout="Medical Segmentation Decathlon")
    modality = description["modality"]
    if not isinstance(modality, dict) or not modality:
        raise IngestError(f'{path}: \'modality\' must be a non-empty mapping like {{"0": "MRI"}}')
    channels = tuple(str(modality[k]) for k in sorted(modality, key=int))
    raw_labels = description["labels"]
    if not isinstance(raw_labels, dict):
        raise IngestError(f"{path}: 'labels' must be a mapping of value to name")
    labels = tuple(LabelDef(name=str(n), value=_as_int(v, where=path, key=str(n))) for v, n in raw_labels.items())
    if not any(label.value == 0 for label in labels):
        raise IngestError(f"{path}: 'labels' must declare background as 0")
    ending = ".nii.gz"
    cases = []
    for entry in description["training"]:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise IngestError(f"{path}: every 'training' entry needs 'image' and 'label', got {entry!r}")
        image = _msd_file(root, entry["image"], where=path)
        label = _msd_file(root, entry["label"], where=path)
        cases.append(CaseSource(_msd_case_id(image, ending), "train", (image,), label, four_d=True))
    for entry in description.get("test", []):
        image = _msd_file(root, entry if isinstance(entry, str) else entry.get("image"), where=path)
        cases.append(CaseSource(_msd_case_id(image, ending), "test", (image,), None, four_d=True))
    ids = [c.case_id for c in cases]
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise IngestError(f"{path}: case ids listed twice: {duplicates}")
    if not any(c.split == "train" for c in cases):
        raise IngestError(f"{path}: 'training' lists no cases")
    return DatasetSource(root, "msd", ending, channels, labels, tuple(cases), description)
