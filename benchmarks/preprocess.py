"""Preprocessing time and bytes on disk, side by side with nnU-Net v2's `nnUNetv2_preprocess`.

    python -m benchmarks.preprocess [--cases 12] [--shape 48 96 96] [--workers 2] [--repeats 3] [--configuration 3d_fullres]

Same data for both (the reference generator, `--seed 0`), each planned by its own planner first (not timed).
Timed: the `voxelbase preprocess` command and the `nnUNetv2_preprocess` command, wall clock with start-up, the
same number of worker processes, alternating, `--repeats` times each from an empty output; the table reports the
fastest and the median run. Bytes: the preprocessed folder of each (Voxelbase's Zarr stage folder; nnU-Net's
`nnUNetPlans_<configuration>` folder of blosc2 arrays and pickles).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import duckdb

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


def _reset_voxelbase(project: Path, configuration: str) -> None:
    """Forget every preprocessed case, so that the next run does all the work again."""
    for stage in (project / "store" / "synth").glob(f"*/{configuration}"):
        shutil.rmtree(stage)
    con = duckdb.connect(str(project / "catalog.duckdb"))
    try:
        con.execute("DELETE FROM preprocessed_cases")
        con.execute("DELETE FROM class_locations")
    finally:
        con.close()


def _summary(seconds: list[float]) -> dict:
    return {"best_s": min(seconds), "median_s": statistics.median(seconds), "runs_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="z y x voxels (generator default 48 96 96)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configuration", default="3d_fullres")
    args = parser.parse_args()
    shape = ["--shape", *map(str, args.shape)] if args.shape else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw = synth(work / "synth", "--cases", str(args.cases), "--seed", "0", *shape)
        raw_bytes = dir_bytes(raw / "imagesTr") + dir_bytes(raw / "labelsTr")
        project = work / "project"
        vb = ["--project", str(project)]
        timed(voxelbase_command(*vb, "ingest", str(raw), "--name", "synth", "--workers", str(args.workers)))
        timed(voxelbase_command(*vb, "plan", "synth"))
        nn = None
        if have_nnunet():
            env = nnunet_env(work / "nnunet", raw)
            timed(nnunet_command("nnUNetv2_extract_fingerprint", "-d", "901", "-np", str(args.workers)), env=env)
            timed(nnunet_command("nnUNetv2_plan_experiment", "-d", "901"), env=env)
            nn = nnunet_command("nnUNetv2_preprocess", "-d", "901", "-c", args.configuration, "-np", str(args.workers))
        ours, theirs = [], []
        preprocess = voxelbase_command(
            *vb, "preprocess", "synth", "--configuration", args.configuration, "--workers", str(args.workers)
        )
        for _ in range(args.repeats):
            _reset_voxelbase(project, args.configuration)
            ours.append(timed(preprocess)["seconds"])
            if nn:
                theirs.append(timed(nn, env=env)["seconds"])
        our_bytes = sum(dir_bytes(p) for p in (project / "store" / "synth").glob(f"*/{args.configuration}"))
        row = {
            "configuration": args.configuration,
            "cases": args.cases,
            "workers": args.workers,
            "voxelbase_s": min(ours),
            "voxelbase_MB": our_bytes / 1e6,
            "raw_MB": raw_bytes / 1e6,
        }
        nnunet = {}
        if nn:
            their_bytes = dir_bytes(
                Path(env["nnUNet_preprocessed"]) / "Dataset901_Synth" / f"nnUNetPlans_{args.configuration}"
            )
            row |= {
                "nnunet_s": min(theirs),
                "nnunet_MB": their_bytes / 1e6,
                "speed_ratio": min(theirs) / min(ours),
                "bytes_ratio": our_bytes / their_bytes,
            }
            nnunet = {**_summary(theirs), "bytes": their_bytes}
    print_table(
        "preprocessing (fastest of the runs); speed_ratio > 1: Voxelbase faster; bytes_ratio < 1: Voxelbase smaller",
        [row],
    )
    write_results(
        "preprocess",
        {
            "cases": args.cases,
            "shape": args.shape,
            "workers": args.workers,
            "configuration": args.configuration,
            "raw_bytes": raw_bytes,
            "voxelbase": {**_summary(ours), "bytes": our_bytes},
            "nnunet": nnunet,
            "rows": [row],
        },
    )


if __name__ == "__main__":
    main()
