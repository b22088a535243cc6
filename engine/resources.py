"""Files the package ships beside its code: the catalog's SQL migrations and the spec's JSON Schema.

Installed from a wheel they live in `voxelbase/schema/`; in a source checkout (and an editable install) they live
in the repository's top-level `schema/`, next to the `engine/` source folder.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def schema_dir() -> Path:
    """The folder holding `NNN_name.sql` migrations and `experiment.schema.json`."""
    for candidate in (_PACKAGE / "schema", _PACKAGE.parent / "schema"):
        if (candidate / "experiment.schema.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"the schema folder ships with the package but was found neither in {_PACKAGE} nor beside it"
    )
