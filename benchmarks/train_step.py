"""Seconds per training iteration, Voxelbase's network + loss vs nnU-Net v2's, same plan, same device, same threads.

    python -m benchmarks.train_step [--configuration 3d_fullres] [--batch-size 2] [--iters 3] [--warmup 1]
                                    [--rounds 2] [--threads N] [--device cpu|cuda] [--channels-last] [--compile]
                                    [--same-torch]

One iteration = forward, Dice+CE deep-supervision loss, backward, gradient clipping at 12, SGD step: exactly
nnU-Net's `train_step` without data loading (both sides get the same random batch, deep-supervision targets made
before the clock starts, as both data loaders do). The topology is the plan nnU-Net made for the synthetic
reference dataset (`nnUNetPlans.json`, patch 48x96x96, batch 2 for 3d_fullres); Voxelbase builds its own network
from the same architecture entries. nnU-Net runs in its own virtual environment ($NNUNET_VENV) as a subprocess;
the two sides alternate `--rounds` times, each in a fresh process, and the table reports the median and best
seconds per iteration. `--same-torch` runs the Voxelbase side with nnU-Net's interpreter as well (it needs only
torch), so that both use the same torch build, as a fair ratio requires.
On CUDA, nnU-Net uses its trainer's fp16 autocast + GradScaler; Voxelbase uses bf16 autocast when supported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import NNUNET_VENV, REPO, print_table, write_results
from engine.training.loss import build_loss, deep_supervision_scales, downsample_targets
from engine.training.network import build_network, count_parameters
from engine.training.optim import build_optimizer

PLANS = REPO.parent / "shared" / "reference" / "synth_ct" / "nnUNetPlans.json"

# Runs inside nnU-Net's venv: its network from the plan, its loss built as nnUNetTrainer._build_loss does, its
# optimizer, and the body of nnUNetTrainer.train_step.
NNUNET_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
device = torch.device(a["device"])
cfg = json.load(open(a["plans"]))["configurations"][a["configuration"]]
arch = cfg["architecture"]
net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                             a["in_channels"], a["num_classes"], deep_supervision=True).to(device)
strides = arch["arch_kwargs"]["strides"]
scales = list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
loss = DC_and_CE_loss({"batch_dice": cfg["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                      weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
w = np.array([1 / (2 ** i) for i in range(len(scales))]); w[-1] = 0; w = w / w.sum()
loss = DeepSupervisionWrapper(loss, w)
opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
g = torch.Generator().manual_seed(0)
x = torch.randn((a["batch_size"], a["in_channels"], *cfg["patch_size"]), generator=g).to(device)
seg = torch.randint(0, a["num_classes"], (a["batch_size"], 1, *cfg["patch_size"]), generator=g).float()
targets = [torch.nn.functional.interpolate(seg, [round(n * s) for n, s in zip(seg.shape[2:], sc)],
                                           mode="nearest-exact").to(device) for sc in scales]
times = []
for i in range(a["warmup"] + a["iters"]):
    if device.type == "cuda": torch.cuda.synchronize()
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", enabled=True) if device.type == "cuda" else torch.autocast("cpu", enabled=False):
        out = net(x)
        l = loss(out, targets)
    if scaler is not None:
        scaler.scale(l).backward(); scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12); scaler.step(opt); scaler.update()
    else:
        l.backward(); torch.nn.utils.clip_grad_norm_(net.parameters(), 12); opt.step()
    float(l.detach())
    if device.type == "cuda": torch.cuda.synchronize()
    if i >= a["warmup"]: times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"times": times, "params": sum(p.numel() for p in net.parameters()),
                              "torch": torch.__version__}), flush=True)
"""


def architecture_from_nnunet(architecture: dict) -> dict:
    """nnU-Net's plan `architecture` entry as the architecture dict of Voxelbase's plan contract."""
    kwargs = architecture["arch_kwargs"]
    residual = architecture["network_class_name"].endswith("ResidualEncoderUNet")
    return {
        "network": "resenc_unet" if residual else "plain_unet",
        "conv_dims": len(kwargs["kernel_sizes"][0]),
        "n_stages": kwargs["n_stages"],
        "features_per_stage": list(kwargs["features_per_stage"]),
        "kernel_sizes": [list(k) for k in kwargs["kernel_sizes"]],
        "strides": [list(s) for s in kwargs["strides"]],
        "n_conv_per_stage": list(kwargs["n_blocks_per_stage"] if residual else kwargs["n_conv_per_stage"]),
        "n_conv_per_stage_decoder": list(kwargs["n_conv_per_stage_decoder"]),
    }


def run_voxelbase(args: argparse.Namespace, cfg: dict) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    arch = architecture_from_nnunet(cfg["architecture"])
    net = build_network(arch, in_channels=args.in_channels, num_classes=args.num_classes).to(device)
    memory_format = torch.channels_last_3d if arch["conv_dims"] == 3 else torch.channels_last
    if args.channels_last:
        net = net.to(memory_format=memory_format)
    step_net = torch.compile(net) if args.compile else net
    loss_fn = build_loss(batch_dice=cfg["batch_dice"], strides=arch["strides"])
    optimizer = build_optimizer(net, lr=1e-2, weight_decay=3e-5, momentum=0.99)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    g = torch.Generator().manual_seed(0)
    patch = cfg["patch_size"]
    x = torch.randn((args.batch_size, args.in_channels, *patch), generator=g).to(device)
    if args.channels_last:
        x = x.to(memory_format=memory_format)
    seg = torch.randint(0, args.num_classes, (args.batch_size, 1, *patch), generator=g).to(torch.int8)
    targets = [t.to(device) for t in downsample_targets(seg, deep_supervision_scales(arch["strides"]))]
    times = []
    for i in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
            loss = loss_fn(step_net(x), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        float(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {"times": times, "params": count_parameters(net), "torch": torch.__version__}


def _payload(args: argparse.Namespace) -> dict:
    return {
        "plans": str(args.plans),
        "configuration": args.configuration,
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "in_channels": args.in_channels,
        "num_classes": args.num_classes,
        "warmup": args.warmup,
        "iters": args.iters,
    }


def _subprocess(command: list[str], *, threads: int, side: str) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "nnUNet_compile": "false",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{side} side failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def run_nnunet(args: argparse.Namespace) -> dict:
    command = [str(NNUNET_VENV / "bin" / "python"), "-c", NNUNET_SCRIPT, json.dumps(_payload(args))]
    return _subprocess(command, threads=args.threads, side="nnU-Net")


def run_voxelbase_process(args: argparse.Namespace) -> dict:
    python = str(NNUNET_VENV / "bin" / "python") if args.same_torch else sys.executable
    command = [python, "-m", "benchmarks.train_step", "--worker", *sys.argv[1:], "--threads", str(args.threads)]
    return _subprocess(command, threads=args.threads, side="Voxelbase")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=Path, default=PLANS, help="nnU-Net plans JSON giving the topology")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the plan's batch size")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true", help="Voxelbase side only")
    parser.add_argument("--compile", action="store_true", help="torch.compile, Voxelbase side only")
    parser.add_argument("--no-nnunet", action="store_true")
    parser.add_argument("--same-torch", action="store_true", help="run the Voxelbase side under nnU-Net's torch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.plans.exists():
        raise SystemExit(f"plans file {args.plans} not found; pass --plans")
    cfg = json.loads(args.plans.read_text())["configurations"][args.configuration]
    args.batch_size = args.batch_size or cfg["batch_size"]
    if args.worker:
        print("RESULT " + json.dumps(run_voxelbase(args, cfg)), flush=True)
        return
    with_nnunet = not args.no_nnunet and (NNUNET_VENV / "bin" / "python").exists()

    runs: dict[str, list[float]] = {"voxelbase": [], "nnunet": []}
    info: dict[str, dict] = {}
    for r in range(args.rounds):
        for side in ("voxelbase", "nnunet") if r % 2 == 0 else ("nnunet", "voxelbase"):
            if side == "nnunet" and not with_nnunet:
                continue
            result = run_voxelbase_process(args) if side == "voxelbase" else run_nnunet(args)
            runs[side] += result["times"]
            info[side] = {"params": result["params"], "torch": result["torch"]}
            print(f"round {r + 1} {side}: " + ", ".join(f"{t:.2f}" for t in result["times"]) + " s", flush=True)

    rows = []
    for side, times in runs.items():
        if times:
            rows.append(
                {
                    "side": side,
                    "median_s_per_iter": statistics.median(times),
                    "best_s_per_iter": min(times),
                    "iters": len(times),
                    "params": info[side]["params"],
                    "torch": info[side]["torch"],
                }
            )
    ratio = None
    if runs["nnunet"]:
        ratio = statistics.median(runs["voxelbase"]) / statistics.median(runs["nnunet"])
    print_table(
        f"train step, {args.configuration} patch {cfg['patch_size']} batch {args.batch_size}, "
        f"{args.device}, {args.threads} threads",
        rows,
    )
    if ratio is not None:
        print(f"voxelbase / nnunet median time: {ratio:.3f}")
    write_results(
        "train_step",
        {
            "configuration": args.configuration,
            "patch_size": cfg["patch_size"],
            "batch_size": args.batch_size,
            "device": args.device,
            "threads": args.threads,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "same_torch": args.same_torch,
            "results": rows,
            "runs_s": runs,
            "ratio_voxelbase_over_nnunet": ratio,
        },
    )


if __name__ == "__main__":
    main()
