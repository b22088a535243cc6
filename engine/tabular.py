"""Rendering Arrow tables as text: an aligned table, CSV (RFC 4180, lists as JSON) or one JSON array."""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import math

import pyarrow as pa


def _jsonable(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_jsonable(value))
    return str(value)


def format_table(table: pa.Table, *, fmt: str = "table", max_width: int = 60) -> str:
    rows = table.to_pylist()
    columns = table.column_names
    if fmt == "json":
        return json.dumps([{k: _jsonable(v) for k, v in row.items()} for row in rows], allow_nan=False)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    ""
                    if row[c] is None
                    else (json.dumps(_jsonable(row[c])) if isinstance(row[c], (list, dict)) else _jsonable(row[c]))
                    for c in columns
                ]
            )
        return buffer.getvalue().rstrip("\r\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, csv or json")
    if not columns:
        return "(no rows)"
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    cells = [[v if len(v) <= max_width else v[: max_width - 1] + "…" for v in r] for r in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
