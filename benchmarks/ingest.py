"""Ingest throughput and memory at two dataset sizes, side by side with nnU-Net v2's fingerprint extraction.

    python -m benchmarks.ingest [--sizes 12 36] [--workers 2]

Both read every case of the same data (made with the reference generator); nnU-Net's
`nnUNetv2_extract_fingerprint` is the step of nnU-Net that does so. Peak RSS is that of the largest process.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import (
    dir_bytes,
    have_nnunet,
    nnunet_command,
    nnunet_env,
    print_table,
    synth,
    timed,
    voxelbase_command,
    write_results,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 36])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in args.sizes:
            raw = synth(work / f"synth{n}", "--cases", str(n), "--seed", "0")
            source_bytes = dir_bytes(raw / "imagesTr") + dir_bytes(raw / "labelsTr")
            project = work / f"project{n}"
            ours = timed(
                voxelbase_command(
                    "--project", str(project), "ingest", str(raw), "--name", "synth", "--workers", str(args.workers)
                )
            )
            row = {
                "cases": n,
                "voxelbase_s": ours["seconds"],
                "cases_per_s": n / ours["seconds"],
                "source_MB_per_s": source_bytes / 1e6 / ours["seconds"],
                "peak_rss_MB": ours["peak_rss_mb"],
                "store_over_source": dir_bytes(project / "store") / source_bytes,
            }
            if have_nnunet():
                env = nnunet_env(work / f"nnunet{n}", raw, dataset_id=900 + n)
                theirs = timed(
                    nnunet_command("nnUNetv2_extract_fingerprint", "-d", str(900 + n), "-np", str(args.workers)),
                    env=env,
                )
                row |= {
                    "nnunet_fingerprint_s": theirs["seconds"],
                    "nnunet_peak_rss_MB": theirs["peak_rss_mb"],
                    "speed_ratio": theirs["seconds"] / ours["seconds"],
                }
            rows.append(row)
            shutil.rmtree(project, ignore_errors=True)
    print_table(f"ingest ({args.workers} workers); speed_ratio > 1 means Voxelbase is faster", rows)
    write_results("ingest", {"workers": args.workers, "rows": rows})


if __name__ == "__main__":
    main()
