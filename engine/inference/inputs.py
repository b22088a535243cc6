"""Images to predict: an `imagesTs`-style folder (`<case>_<cccc><ending>`, any format SimpleITK reads).

Everything about the folder is checked before any prediction starts -- channel files present and no extra ones,
safe case ids, one ending per case, an output folder that cannot overwrite the inputs -- so a bad folder fails in
a second with a message naming the file, not after an hour of inference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelbase.errors import VoxelbaseError
from voxelbase.images import Geometry, ImageFileError, read_channels
from voxelbase.store.layout import unsafe_name

# `<case>_<cccc><ending>`: the case id is greedy, so 'a_0000_0001.nii.gz' is channel 1 of case 'a_0000'
INPUT_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.[A-Za-z0-9][A-Za-z0-9.]*)$")
KNOWN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl.gz", ".gipl", ".tif", ".tiff", ".png")


class PredictionError(VoxelbaseError, ValueError):
    """Prediction cannot run as asked; the message names the file, experiment or fold and what to do."""


class PredictionWarning(UserWarning):
    """Prediction runs, but the result may be poor (e.g. a spacing far from the training cases')."""


@dataclass(frozen=True)
class InputCase:
    case_id: str
    files: tuple[Path, ...]  # one per channel, in channel order
    ending: str  # the input's own file ending, reused for the output

    @property
    def output_name(self) -> str:
        return f"{self.case_id}{self.ending}"


def _describe_channels(n_channels: int, names: Sequence[str] | None) -> str:
    label = f"{n_channels} channel{'s' if n_channels != 1 else ''}"
    return f"{label} ({', '.join(names)})" if names else label


def list_input_cases(
    input_dir: Path, *, n_channels: int, channel_names: Sequence[str] | None = None
) -> list[InputCase]:
    """The cases in `input_dir`, each with exactly `n_channels` files `<case>_0000..<ending>`."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise PredictionError(f"{input_dir}: input folder not found")
    found: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    for path in sorted(input_dir.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        match = INPUT_NAME.match(path.name)
        if match is None:
            if path.name.lower().endswith(KNOWN_ENDINGS):
                raise PredictionError(
                    f"{path}: input images must be named <case>_<cccc><ending> (e.g. case_0000.nii.gz), one file "
                    "per channel"
                )
            continue  # not an image (a dataset.json, notes, ...)
        case_id = match["case"]
        problem = unsafe_name(case_id)
        if problem:
            raise PredictionError(f"{path}: case id {problem}")
        ending = match["ending"]
        if endings.setdefault(case_id, ending) != ending:
            raise PredictionError(
                f"{path}: case {case_id!r} mixes file endings {endings[case_id]!r} and {ending!r}; use one format"
            )
        found.setdefault(case_id, {})[int(match["channel"])] = path
    if not found:
        raise PredictionError(f"{input_dir}: no images named <case>_<cccc><ending> (e.g. case_0000.nii.gz)")
    expected = _describe_channels(n_channels, channel_names)
    cases = []
    for case_id, channels in sorted(found.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            name = f"{case_id}_{missing[0]:04d}{endings[case_id]}"
            raise PredictionError(
                f"{input_dir / name}: missing; case {case_id!r} has {len(channels)} channel file(s) but the model "
                f"was trained on {expected}"
            )
        extra = sorted(set(channels) - set(range(n_channels)))
        if extra:
            raise PredictionError(
                f"{channels[extra[0]]}: case {case_id!r} has {len(channels)} channel files but the model was trained "
                f"on {expected}; remove the extra channel(s) or use a model trained on them"
            )
        cases.append(InputCase(case_id, tuple(channels[c] for c in range(n_channels)), endings[case_id]))
    return cases


def read_input_case(case: InputCase) -> tuple[np.ndarray, Geometry]:
    """The case's (C, Z, Y, X) image (source dtype) and its geometry, with every check ingest makes."""
    try:
        return read_channels(case.files)
    except ImageFileError as error:
        raise PredictionError(str(error)) from error


def check_output_dir(input_dir: Path, output_dir: Path) -> None:
    """Refuse an output folder that is the input folder or lies inside it: outputs must never replace inputs
    (a `<case>.nii.gz` written among `<case>_0000.nii.gz` files would also be read as input next time)."""
    source = Path(input_dir).resolve()
    target = Path(output_dir).resolve()
    if target == source or source in target.parents:
        raise PredictionError(
            f"output folder {output_dir} {'is' if target == source else 'lies inside'} the input folder "
            f"{input_dir}; choose a folder outside it so no input is overwritten"
        )
    if target.exists() and not target.is_dir():
        raise PredictionError(f"output {output_dir} exists and is not a folder")
