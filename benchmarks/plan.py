"""Fingerprint + planning time, side by side with nnU-Net v2's `nnUNetv2_extract_fingerprint` + `nnUNetv2_plan_experiment`.

    python -m benchmarks.plan [--cases 12] [--workers 2] [--repeats 5]

Same data for both (the reference generator, `--seed 0`). Both sides are timed as commands, wall clock, start-up
included. nnU-Net reads every image to fingerprint; Voxelbase fingerprints with SQL over what ingest recorded,
so its one-off ingest is shown as well, and the ratio is given with and without it. The in-process split
(SQL fingerprint vs planning rules, median of `--repeats`) shows where Voxelbase's time goes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    have_nnunet,
    nnunet_command,
    nnunet_env,
    print_table,
    synth,
    timed,
    voxelbase_command,
    write_results,
)


def _in_process(project: Path, repeats: int) -> dict:
    from voxelbase.catalog import connect
    from voxelbase.planning import load_fingerprint, plan_experiment

    fingerprint_s, rules_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with connect(project, read_only=True) as con:
            fingerprint = load_fingerprint(con, "synth")
        middle = time.perf_counter()
        plan_experiment(fingerprint)
        end = time.perf_counter()
        fingerprint_s.append(middle - start)
        rules_s.append(end - middle)
    return {"sql_fingerprint_s": statistics.median(fingerprint_s), "planning_rules_s": statistics.median(rules_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw = synth(work / "synth", "--cases", str(args.cases), "--seed", "0")
        project = work / "project"
        ingest = timed(
            voxelbase_command(
                "--project", str(project), "ingest", str(raw), "--name", "synth", "--workers", str(args.workers)
            )
        )
        plan = timed(voxelbase_command("--project", str(project), "plan", "synth"))
        split = _in_process(project, args.repeats)
        ours = {"ingest_s": ingest["seconds"], "plan_command_s": plan["seconds"], **split}
        rows = [
            {"step": "fingerprint + plan (commands)", "voxelbase_s": plan["seconds"]},
            {"step": "ingest + fingerprint + plan", "voxelbase_s": ingest["seconds"] + plan["seconds"]},
            {"step": "SQL fingerprint (in process)", "voxelbase_s": split["sql_fingerprint_s"]},
            {"step": "planning rules (in process)", "voxelbase_s": split["planning_rules_s"]},
        ]
        theirs = {}
        if have_nnunet():
            env = nnunet_env(work / "nnunet", raw)
            fingerprint = timed(
                nnunet_command("nnUNetv2_extract_fingerprint", "-d", "901", "-np", str(args.workers)), env=env
            )
            planning = timed(nnunet_command("nnUNetv2_plan_experiment", "-d", "901"), env=env)
            total = fingerprint["seconds"] + planning["seconds"]
            theirs = {"extract_fingerprint_s": fingerprint["seconds"], "plan_experiment_s": planning["seconds"]}
            rows[0] |= {"nnunet_s": total, "speed_ratio": total / plan["seconds"]}
            rows[1] |= {"nnunet_s": total, "speed_ratio": total / (ingest["seconds"] + plan["seconds"])}
            rows[2] |= {
                "nnunet_s": fingerprint["seconds"],
                "speed_ratio": fingerprint["seconds"] / split["sql_fingerprint_s"],
            }
            rows[3] |= {"nnunet_s": planning["seconds"], "speed_ratio": planning["seconds"] / split["planning_rules_s"]}
    print_table(f"planning, {args.cases} cases; speed_ratio > 1 means Voxelbase is faster", rows)
    write_results(
        "plan", {"cases": args.cases, "workers": args.workers, "voxelbase": ours, "nnunet": theirs, "rows": rows}
    )


if __name__ == "__main__":
    main()
