"""The label kinds a dataset.json may declare beyond plain values, checked before anything is stored.

- Regions (nnU-Net's region-based training): labels whose values are lists, e.g. "whole_tumor": [1, 2, 3]; then
  `regions_class_order` lists, per region in declaration order, the label value a voxel inside it is written with,
  and every value a region names must be declared (as a plain label or in `regions_class_order`).
- The ignore label ("ignore": N): unannotated voxels; it must be the highest label value and belong to no region.

Each problem is an error naming the dataset.json key, raised before ingest writes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voxelbase.catalog.datasets import LabelRow
from voxelbase.ingest.errors import IngestError


def _region_order(description: dict, regions: Sequence[LabelRow], *, where: Path) -> list[int]:
    order = description.get("regions_class_order")
    names = ", ".join(repr(r.name) for r in regions)
    if order is None:
        raise IngestError(
            f"{where}: 'regions_class_order' is missing; labels declared as regions ({names}) need it: one label "
            f"value per region, in the order the regions are declared"
        )
    if not isinstance(order, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in order):
        raise IngestError(f"{where}: 'regions_class_order' must be a list of integers, got {order!r}")
    if len(order) != len(regions):
        raise IngestError(
            f"{where}: 'regions_class_order' has {len(order)} entr{'y' if len(order) == 1 else 'ies'} but "
            f"{len(regions)} regions are declared ({names}); give one label value per region"
        )
    return order


def check_label_kinds(labels: Sequence[LabelRow], description: dict, *, where: Path) -> None:
    """Refuse regions without a matching `regions_class_order`, regions naming undeclared values, and an ignore
    label that is not the highest value or sits inside a region."""
    ignore = next((label for label in labels if label.is_ignore), None)
    has_regions = any(label.region_values is not None for label in labels)
    plain = {label.value for label in labels if label.value is not None and not label.is_ignore}
    # in a region dataset every foreground entry is a region, a plain value v being the region (v,)
    regions = [label for label in labels if not label.is_ignore and label.value != 0] if has_regions else []
    order = _region_order(description, regions, where=where) if has_regions else []
    declared = plain | set(order) | {0}
    for region in regions:
        members = region.region_values or (region.value,)
        if ignore is not None and ignore.value in members:
            raise IngestError(
                f"{where}: label {region.name!r} is a region containing {ignore.value}, the value of the 'ignore' "
                "label; the ignore label cannot be part of a region"
            )
        undeclared = sorted(set(members) - declared)
        if undeclared:
            raise IngestError(
                f"{where}: label {region.name!r} is a region naming value(s) {undeclared} that no plain label and no "
                "'regions_class_order' entry declares"
            )
    if ignore is not None:
        others = plain - {ignore.value} | set(order)
        for region in regions:
            others |= set(region.region_values or ())
        highest = max(others, default=0)
        if ignore.value <= highest:
            raise IngestError(
                f"{where}: label 'ignore' has value {ignore.value}, but the ignore label must be the highest label "
                f"value (give it {highest + 1} or more)"
            )
