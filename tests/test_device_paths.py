"""The accelerator code paths that a CPU can exercise: mixed-precision rules, autocast training (bf16 and fp16 with
its gradient scaler, which CPU autocast runs too), device-side pseudo-Dice counts, and the prepared GPU smoke
script run end to end on the CPU without SimpleITK."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from voxelbase.device import DeviceError, autocast_dtype
from voxelbase.networks import load_checkpoint
from voxelbase.spec import parse_spec
from voxelbase.training.trainer import _pseudo_dice_counts, train_fold

CPU = torch.device("cpu")


def test_autocast_dtype_follows_the_amp_setting():
    assert autocast_dtype(CPU, "auto") is None  # autocast on the CPU only when asked for
    assert autocast_dtype(CPU, "off") is None
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16
    assert autocast_dtype(CPU, "fp16") == torch.float16  # an explicit fp16 is never silently bf16
    with pytest.raises(DeviceError, match="amp"):
        autocast_dtype(CPU, "fp8")


def test_pseudo_dice_counts_match_a_count_per_class():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 4, 6, 7, 5), generator=generator).to(torch.bfloat16)
    target = torch.randint(0, 4, (2, 1, 6, 7, 5), generator=generator).to(torch.int16)
    counts = _pseudo_dice_counts(logits, target, 4)
    predicted, truth = logits.argmax(1), target[:, 0]
    expected = [
        [int(((predicted == c) & (truth == c)).sum()) for c in (1, 2, 3)],
        [int(((predicted == c) & (truth != c)).sum()) for c in (1, 2, 3)],
        [int(((predicted != c) & (truth == c)).sum()) for c in (1, 2, 3)],
    ]
    assert counts.dtype == torch.float64 and counts.device == CPU
    assert counts.tolist() == expected


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory):
    """A tiny project made the way the GPU smoke script makes it (NumPy reader, no SimpleITK)."""
    from benchmarks.gpu_smoke import make_project

    return make_project(tmp_path_factory.mktemp("device"), cases=5, shape=(12, 24, 24), workers=1)


def _spec(name: str, amp: str, epochs: int):
    return parse_spec(
        f'name = "{name}"\ndataset = "synth"\n[train]\nfolds = [0]\nepochs = {epochs}\niterations_per_epoch = 2\n'
        f'val_iterations = 1\nnum_workers = 1\namp = "{amp}"\ndevice = "cpu"\nvalidate = false\n'
    )


def test_fp16_training_scales_the_loss_and_resumes_the_scale(smoke_project):
    result = train_fold(smoke_project, _spec("fp16", "fp16", 1), configuration="3d_fullres", fold="0")
    final = result.run_dir / "checkpoint_final.pt"
    scaler = load_checkpoint(final)["state"]["grad_scaler"]
    assert scaler["scale"] > 0 and "growth_interval" in scaler

    # a distinctive scale in the checkpoint must be the one training continues from (default would be 65536)
    payload = torch.load(final, weights_only=True)
    state = json.loads(payload["state_json"])
    state["grad_scaler"]["scale"] = 1024.0
    payload["state_json"] = json.dumps(state)
    torch.save(payload, final)
    train_fold(smoke_project, _spec("fp16", "fp16", 2), configuration="3d_fullres", fold="0")
    assert load_checkpoint(final)["state"]["grad_scaler"]["scale"] <= 1024.0


def test_bf16_training_needs_no_scaler(smoke_project):
    result = train_fold(smoke_project, _spec("bf16", "bf16", 1), configuration="3d_fullres", fold="0")
    state = load_checkpoint(result.run_dir / "checkpoint_final.pt")["state"]
    assert state["grad_scaler"] == {}
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in state["history"])


def test_gpu_smoke_script_runs_on_the_cpu_without_simpleitk(tmp_path):
    blocked = (
        "import sys; sys.modules['SimpleITK'] = None; from benchmarks.gpu_smoke import main; "
        f"sys.argv = ['gpu_smoke', '--device', 'cpu', '--quick', '--out', {str(tmp_path)!r}]; main()"
    )
    result = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert summary["train"]["status"] == "finished" and len(summary["train"]["epochs"]) == 2
    assert summary["train"]["validation_metric_rows"] > 0
    window = summary["sliding_window"]
    assert window["amp_off_vs_cpu"]["max_abs_diff"] == 0.0  # same device, same precision: identical
    assert window["amp_on_vs_cpu"]["argmax_agreement"] > 0.9
    assert summary["train_step"]["plain"]["median_s"] > 0
    assert summary["train_step"]["channels_last"]["median_s"] > 0
    assert {"augment_1", "augment_2", "threads_2", "processes_2"} <= set(summary["loader"])
    assert all(row["patches_per_s"] > 0 for row in summary["loader"].values())
