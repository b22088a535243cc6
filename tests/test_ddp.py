"""DDP training on the CPU (gloo): one step of 2 ranks equals one step of one process on the concatenated batch,
nnU-Net's split of the batch and its oversampling, a 2-rank fold end to end, and a killed rank.

The ranks are real processes: `torch.multiprocessing` for the single step, torch's elastic launcher (through
`voxelbase train --world-size 2`) for the folds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import REPO, copy_project, run_cli
from voxelbase.catalog.queries import run_query
from voxelbase.networks import build_network
from voxelbase.training.distributed import Ranks, batch_share
from voxelbase.training.loss import DiceCELoss, deep_supervision_scales
from voxelbase.training.optim import build_optimizer
from voxelbase.training.trainer import training_step

STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
GLOBAL_BATCH = 4


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    architecture = {
        "network": "plain_unet",
        "conv_dims": 3,
        "n_stages": 3,
        "features_per_stage": [8, 16, 32],
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": STRIDES,
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
    }
    return build_network(architecture, in_channels=1, num_classes=3, deep_supervision=True)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(GLOBAL_BATCH, 1, 8, 16, 16, generator=generator)
    label = torch.randint(0, 3, (GLOBAL_BATCH, 1, 8, 16, 16), generator=generator)
    return image, label


def _one_step(model, network, image, label, *, batch_dice: bool, ddp: bool) -> dict[str, torch.Tensor]:
    loss_fn = DiceCELoss(batch_dice=batch_dice, ds_scales=deep_supervision_scales(STRIDES), ddp=ddp)
    optimizer = build_optimizer(network, lr=0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    training_step(model, loss_fn, optimizer, scaler, image, label, amp_dtype=None, grad_clip=12.0)
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _rank(rank: int, world_size: int, port: int, batch_dice: bool, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        network = _network()
        model = torch.nn.parallel.DistributedDataParallel(network)
        image, label = _batch()
        share = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        weights = _one_step(model, network, image[share], label[share], batch_dice=batch_dice, ddp=True)
        if rank == 0:
            torch.save(weights, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("batch_dice", [True, False], ids=["batch-dice", "sample-dice"])
def test_one_step_on_two_ranks_equals_one_step_on_the_whole_batch(batch_dice, tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank, args=(2, _free_port(), batch_dice, str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)

    network = _network()
    image, label = _batch()
    single = _one_step(network, network, image, label, batch_dice=batch_dice, ddp=False)
    before = _network().state_dict()
    for key, value in single.items():
        assert torch.allclose(distributed[key], value, atol=1e-5, rtol=0), key
    moved = max(float((single[k] - before[k]).abs().max()) for k in single if single[k].is_floating_point())
    assert moved > 1e-4  # the step did change the weights, so the equality above says something


def test_batch_and_oversampling_split_as_nnunet_does():
    # nnU-Net's DDP trainer: batch 5 on 2 ranks is 3 + 2; with oversampling 0.33, round(5 * 0.67) = 3 random
    # samples, so global samples 3 and 4 are forced: both in rank 1's slice (samples 3, 4)
    assert batch_share(5, 0.33, Ranks(0, 2)) == (3, 0.0)
    assert batch_share(5, 0.33, Ranks(1, 2)) == (2, 1.0)
    # batch 2 (nnU-Net's usual 3d batch) on 2 ranks: round(2 * 0.67) = 1 random, sample 1 forced
    assert batch_share(2, 0.33, Ranks(0, 2)) == (1, 0.0)
    assert batch_share(2, 0.33, Ranks(1, 2)) == (1, 1.0)
    # a rank whose slice straddles the boundary forces its share: batch 7 on 2 ranks is 4 + 3, round(7 * 0.67) = 5
    assert batch_share(7, 0.33, Ranks(0, 2)) == (4, 0.0)
    assert batch_share(7, 0.33, Ranks(1, 2)) == (3, 2 / 3)
    assert batch_share(4, 0.5, Ranks()) == (4, 0.5)  # a single process keeps the plan's
    with pytest.raises(Exception, match="cannot be split over 3 ranks"):
        batch_share(2, 0.33, Ranks(0, 3))


SPEC = """\
name = "tiny"
dataset = "demo"

[train]
epochs = 2
iterations_per_epoch = 2
val_iterations = 1
folds = [0, 1]
checkpoint_every = 1
device = "cpu"
num_workers = 1
batch_size = 2

[predict]
tta = false
"""


def query(project, sql: str, *params) -> list[dict]:
    return run_query(sql, project=project, params=list(params)).to_pylist()


def _table_counts(project, run_id: int) -> dict[str, int]:
    return {
        "epochs": query(project, "SELECT count(*) AS n FROM epochs WHERE run_id = ?", run_id)[0]["n"],
        # folds hold different numbers of validation cases: every case scored on every label
        "metrics per case": query(
            project, "SELECT count(*) / count(DISTINCT case_id) AS n FROM metrics WHERE run_id = ?", run_id
        )[0]["n"],
        "validation runs": query(project, "SELECT count(*) AS n FROM result_runs WHERE run_id = ?", run_id)[0]["n"],
    }


def test_a_two_rank_fold_fills_the_tables_a_single_rank_fold_does(preprocessed_base, tmp_path):
    project = copy_project(preprocessed_base, tmp_path)
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    run_cli(project, "train", str(spec), "--fold", "0", "--world-size", "2")
    run_cli(project, "train", str(spec), "--fold", "1")
    runs = query(
        project, "SELECT run_id, fold, status, world_size, epochs FROM runs WHERE kind = 'train' ORDER BY fold"
    )
    assert [(r["fold"], r["status"], r["world_size"]) for r in runs] == [("0", "finished", 2), ("1", "finished", 1)]
    two, one = (_table_counts(project, r["run_id"]) for r in runs)
    assert two == one and two["epochs"] == 2 and two["metrics per case"] == 3
    run_dir = project.run_dir("tiny", "3d_fullres", "0")
    assert (run_dir / "checkpoint_final.pt").exists() and (run_dir / "progress.png").exists()
    losses = query(project, "SELECT train_loss, val_dice FROM epochs WHERE run_id = ?", runs[0]["run_id"])
    assert all(r["train_loss"] is not None and r["val_dice"] for r in losses)


def test_a_killed_rank_leaves_the_run_interrupted_and_it_resumes_on_one_rank(preprocessed_base, tmp_path):
    project = copy_project(preprocessed_base, tmp_path)
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC.replace("epochs = 2", "epochs = 20"))
    args = [sys.executable, "-m", "voxelbase.cli", "--project", str(project.root), "train", str(spec)]
    args += ["--fold", "0", "--world-size", "2", "--set", "train.validate=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    checkpoint = project.run_dir("tiny", "3d_fullres", "0") / "checkpoint_latest.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    victim = _rank_one_of(process.pid)
    os.kill(victim, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "rank 1" in output and "interrupted" in output and "--resume" in output, output

    runs = query(project, "SELECT run_id, status, world_size, error FROM runs")
    assert [(r["status"], r["world_size"]) for r in runs] == [("interrupted", 2)], runs
    kept = query(project, "SELECT epoch, train_loss FROM epochs ORDER BY epoch")
    assert 1 <= len(kept) < 20

    result = run_cli(project, "train", str(spec), "--fold", "0", "--resume", "--set", "train.validate=false")
    assert "20 epochs" in result.output
    runs = query(project, "SELECT status, world_size FROM runs")
    assert runs == [{"status": "finished", "world_size": 1}]
    epochs = query(project, "SELECT epoch, train_loss FROM epochs ORDER BY epoch")
    assert [e["epoch"] for e in epochs] == list(range(20))
    assert epochs[: len(kept) - 1] == kept[: len(kept) - 1]  # what was recorded before the kill is kept


def _rank_one_of(launcher: int) -> int:
    """Rank 1's pid: of the rank processes the launcher spawned (in rank order), the second one started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ranks = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getsid(int(entry.name)) != launcher:
                    continue
                command = (entry / "cmdline").read_bytes()
                started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
            except (OSError, ProcessLookupError, ValueError):
                continue
            if b"spawn_main" in command:
                ranks.append((started, int(entry.name)))
        if len(ranks) == 2:
            return sorted(ranks)[1][1]
        time.sleep(0.05)
    raise AssertionError("the two ranks were not found")
