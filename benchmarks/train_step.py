"""Seconds per training iteration, Voxelbase's network + loss vs nnU-Net v2's, same plan, device, torch and threads.

    python -m benchmarks.train_step [--configuration 3d_fullres] [--batch-size 2] [--iters 6] [--warmup 1]
                                    [--threads N] [--device cpu|cuda] [--channels-last] [--compile] [--no-nnunet]

One iteration = forward, Dice+CE deep-supervision loss, backward, gradient clipping at 12, SGD step: exactly
nnU-Net's `nnUNetTrainer.train_step` without data loading (both sides get the same random batch, deep-supervision
targets made before the clock starts, as both data loaders do). The topology is the plan nnU-Net made for the
synthetic reference dataset (`nnUNetPlans.json`; 3d_fullres: patch 48x96x96, batch 2); Voxelbase builds its own
network from the same architecture entries, nnU-Net its own from the plan.

For a fair ratio on a shared, noisy machine both sides run in ONE worker process started with nnU-Net's
interpreter ($NNUNET_VENV; Voxelbase needs only torch there), so they use the same torch build and threads, and
their iterations alternate (A B B A ...) so that load changes hit both alike. nnU-Net is imported only inside that
worker. Without nnU-Net (or with --no-nnunet) only Voxelbase is timed, in this interpreter.
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
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import NNUNET_VENV, REPO, print_table, write_results
from voxelbase.networks import build_network, count_parameters
from voxelbase.training.loss import build_loss, deep_supervision_scales, downsample_targets
from voxelbase.training.optim import build_optimizer

PLANS = REPO.parent / "shared" / "reference" / "synth_ct" / "nnUNetPlans.json"

Step = Callable[[], float]


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


def _batch(args: argparse.Namespace, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    patch = cfg["patch_size"]
    x = torch.randn((args.batch_size, args.in_channels, *patch), generator=g)
    seg = torch.randint(0, args.num_classes, (args.batch_size, 1, *patch), generator=g).to(torch.int16)
    return x, seg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def voxelbase_step(args: argparse.Namespace, cfg: dict) -> tuple[Step, int]:
    device = torch.device(args.device)
    arch = architecture_from_nnunet(cfg["architecture"])
    net = build_network(arch, in_channels=args.in_channels, num_classes=args.num_classes).to(device)
    memory_format = torch.channels_last_3d if arch["conv_dims"] == 3 else torch.channels_last
    x, seg = _batch(args, cfg)
    x = x.to(device)
    if args.channels_last:
        net = net.to(memory_format=memory_format)
        x = x.to(memory_format=memory_format)
    step_net = torch.compile(net) if args.compile else net
    loss_fn = build_loss(batch_dice=cfg["batch_dice"], strides=arch["strides"])
    optimizer = build_optimizer(net, lr=1e-2, weight_decay=3e-5, momentum=0.99)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    targets = [t.to(device) for t in downsample_targets(seg, deep_supervision_scales(arch["strides"]))]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
            loss = loss_fn(step_net(x), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        return float(loss.detach())

    return step, count_parameters(net)


def nnunet_step(args: argparse.Namespace, cfg: dict) -> tuple[Step, int]:
    """nnU-Net's network from the plan, its loss as nnUNetTrainer._build_loss makes it, its optimizer, and the body
    of nnUNetTrainer.train_step. Runs only in the worker started with nnU-Net's interpreter."""
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    device = torch.device(args.device)
    arch = cfg["architecture"]
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        args.in_channels,
        args.num_classes,
        deep_supervision=True,
    ).to(device)
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(arch["arch_kwargs"]["strides"]), axis=0))[:-1]
    dice_ce = DC_and_CE_loss(
        {"batch_dice": cfg["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    weights = np.array([1 / (2**i) for i in range(len(scales))])
    weights[-1] = 0
    loss_fn = DeepSupervisionWrapper(dice_ce, weights / weights.sum())
    optimizer = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    x, seg = _batch(args, cfg)
    x = x.to(device)
    seg_float = seg.float()
    targets = [
        torch.nn.functional.interpolate(
            seg_float, [round(n * s) for n, s in zip(seg.shape[2:], sc, strict=True)], mode="nearest-exact"
        )
        .to(seg.dtype)
        .to(device)
        for sc in scales
    ]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=device.type == "cuda"):
            loss = loss_fn(net(x), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            optimizer.step()
        return float(loss.detach())

    return step, sum(p.numel() for p in net.parameters())


def worker(args: argparse.Namespace, cfg: dict) -> dict:
    """Warm up each side, then alternate timed iterations A B B A A B ..."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sides: dict[str, tuple[Step, int]] = {"voxelbase": voxelbase_step(args, cfg)}
    if args.with_nnunet:
        sides["nnunet"] = nnunet_step(args, cfg)
    for step, _ in sides.values():
        for _ in range(args.warmup):
            step()
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.iters):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            sides[name][0]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            print(f"iteration {i + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return {
        "times": times,
        "params": {name: sides[name][1] for name in names},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=Path, default=PLANS, help="nnU-Net plans JSON giving the topology")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the plan's batch size")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true", help="Voxelbase side only")
    parser.add_argument("--compile", action="store_true", help="torch.compile, Voxelbase side only")
    parser.add_argument("--no-nnunet", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-nnunet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.plans.exists():
        raise SystemExit(f"plans file {args.plans} not found; pass --plans")
    cfg = json.loads(args.plans.read_text())["configurations"][args.configuration]
    args.batch_size = args.batch_size or cfg["batch_size"]
    if args.worker:
        print("RESULT " + json.dumps(worker(args, cfg)), flush=True)
        return

    nnunet_python = NNUNET_VENV / "bin" / "python"
    with_nnunet = not args.no_nnunet and nnunet_python.exists()
    python = str(nnunet_python) if with_nnunet else sys.executable
    command = [python, "-m", "benchmarks.train_step", *sys.argv[1:], "--worker", "--threads", str(args.threads)]
    if with_nnunet:
        command.append("--with-nnunet")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "nnUNet_compile": "false",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"benchmark worker failed (exit {proc.returncode}); see its output above")
    result = json.loads(line[len("RESULT ") :])

    rows = [
        {
            "side": side,
            "median_s_per_iter": statistics.median(times),
            "best_s_per_iter": min(times),
            "iters": len(times),
            "params": result["params"][side],
        }
        for side, times in result["times"].items()
    ]
    ratio = None
    if "nnunet" in result["times"]:
        ratio = statistics.median(result["times"]["voxelbase"]) / statistics.median(result["times"]["nnunet"])
    print_table(
        f"train step, {args.configuration} patch {cfg['patch_size']} batch {args.batch_size}, {args.device}, "
        f"{result['threads']} threads, torch {result['torch']}",
        rows,
    )
    if ratio is not None:
        print(f"voxelbase / nnunet median seconds per iteration: {ratio:.3f}")
    write_results(
        "train_step",
        {
            "configuration": args.configuration,
            "patch_size": cfg["patch_size"],
            "batch_size": args.batch_size,
            "device": args.device,
            "threads": result["threads"],
            "torch": result["torch"],
            "channels_last": args.channels_last,
            "compile": args.compile,
            "results": rows,
            "runs_s": result["times"],
            "ratio_voxelbase_over_nnunet": ratio,
        },
    )


if __name__ == "__main__":
    main()
