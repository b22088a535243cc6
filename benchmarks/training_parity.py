"""Training parity with nnU-Net v2, piece by piece, on a work folder of `benchmarks.learning`.

    python -m benchmarks.training_parity --work DIR [--configuration 3d_fullres] [--fold 1] [--steps 8]
                                         [--batches 300] [--trainings N] [--output training_parity]

`benchmarks.learning` compares whole trainings, whose outcome at a CPU-sized budget spreads by ±10 Dice points from
one seed to the next. This benchmark takes the training apart, on the same preprocessed data and plan (run it on the
folder a `benchmarks.learning` run left, after that run; it reads both projects, trains nothing of theirs):

1. steps: nnU-Net's own trainer (its network, loss, optimizer, data loader with augmentation) makes its initial
   weights and a few batches and takes `--steps` optimizer steps; Voxelbase's network, built from its own plan, gets
   the same initial weights and takes the same steps on the same batches with its loss, optimizer and gradient
   clipping. Printed: both losses and gradient norms per step.
2. batches: `--batches` training batches from each system's own sampler and augmentation (Voxelbase's patch stream,
   nnU-Net's nnUNetDataLoader + training transforms), summarised per sample (intensity mean/std, mean absolute
   gradient along x and z, organ fraction, organ intensity): mean ± standard error per system and their z-score.
   Equal samplers and augmentations give |z| of about 2 or less on every row.
3. trainings (`--trainings N`): N short trainings of Voxelbase's own training step at the spec's budget (epochs x
   iterations, poly learning rate), each run twice from the same initial weights: once on Voxelbase's patch stream,
   once on nnU-Net's loader batches. Each network is scored on the fold's validation cases at preprocessed
   resolution (sliding window, no mirroring): organ Dice of both and their paired difference. A gap that comes from
   the sampler or augmentation shows here; one that does not is elsewhere (initialisation, nnU-Net's own loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.common import NNUNET_ID, NNUNET_VENV, have_nnunet, nnunet_env, print_table, write_results

DATASET = "synth"
SPEC = "learning_s0.toml"  # the spec `benchmarks.learning` wrote for seed 0: plan, budget, seed

# Run inside nnU-Net's environment: its trainer's initial weights, its loss over a few steps, and training batches.
NNUNET_SIDE = """
import copy, json, sys
import numpy as np, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

preprocessed, configuration, fold, steps, batches, out = sys.argv[1:7]
torch.set_num_threads(1)
np.random.seed(0)
torch.manual_seed(0)
plans = json.load(open(preprocessed + "/nnUNetPlans.json"))
plans.setdefault("continue_training", False)  # read by the trainer's constructor in newer nnU-Net releases
dataset = json.load(open(preprocessed + "/dataset.json"))
trainer = nnUNetTrainer(plans, configuration, int(fold), dataset, device=torch.device("cpu"))
trainer.initialize()
loader, _ = trainer.get_dataloaders()
step_batches = [next(loader) for _ in range(int(steps))]
initial = copy.deepcopy(trainer.network.state_dict())  # deepcopy keeps nnU-Net's shared (aliased) tensors shared
trainer.optimizer.param_groups[0]["lr"] = trainer.initial_lr
trainer.network.train()
losses = []
for batch in step_batches:
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = trainer.loss(trainer.network(batch["data"]), batch["target"])
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
    trainer.optimizer.step()
    losses.append((loss.item(), norm.item()))
images, labels = [], []
for _ in range(int(batches)):
    batch = next(loader)
    images.append(batch["data"].numpy().astype(np.float32))
    labels.append(batch["target"][0].numpy().astype(np.int8))
torch.save({"initial": initial, "steps": [(b["data"], b["target"][0]) for b in step_batches], "losses": losses,
            "lr": trainer.initial_lr, "images": np.stack(images), "labels": np.stack(labels)}, out)
"""

STATISTICS = ["intensity mean", "intensity std", "abs gradient x", "abs gradient z", "organ fraction", "organ mean"]


def sample_statistics(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample of a batch (B, C, Z, Y, X): the figures in STATISTICS (organ = label 1; NaN without organ)."""
    rows = []
    for image, label in zip(images[:, 0].astype(np.float64), labels[:, 0], strict=True):
        organ = image[label == 1]
        rows.append(
            [
                image.mean(),
                image.std(),
                np.abs(np.diff(image, axis=-1)).mean(),
                np.abs(np.diff(image, axis=0)).mean(),
                (label == 1).mean(),
                organ.mean() if organ.size else np.nan,
            ]
        )
    return np.array(rows)


def run_nnunet_side(work: Path, configuration: str, fold: int, steps: int, batches: int) -> dict:
    import torch

    env = os.environ | nnunet_env(work / "nnunet", work / "raw") | {"nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}
    preprocessed = Path(env["nnUNet_preprocessed"]) / f"Dataset{NNUNET_ID:03d}_Synth"
    out = work / "parity" / f"nnunet_{configuration}_fold{fold}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(NNUNET_VENV / "bin" / "python"), "-c", NNUNET_SIDE, str(preprocessed), configuration, str(fold)]
    subprocess.run([*command, str(steps), str(batches), str(out)], env=env, check=True, capture_output=True)
    return torch.load(out, weights_only=False)


def voxelbase_steps(setup, spec, nnunet: dict) -> list[tuple[float, float]]:
    """Voxelbase's network, loss and optimizer from nnU-Net's initial weights over nnU-Net's batches."""
    import torch

    from voxelbase.networks.nnunet import load_nnunet_weights
    from voxelbase.networks.trained import network_for_plan
    from voxelbase.training.loss import training_loss
    from voxelbase.training.optim import build_optimizer

    cfg, plan = spec.train, setup.plan
    network = network_for_plan(plan, deep_supervision=cfg.deep_supervision)
    load_nnunet_weights(network, nnunet["initial"])
    loss_fn = training_loss(cfg, plan)
    optimizer = build_optimizer(
        network, lr=cfg.initial_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    network.train()
    losses = []
    for image, target in nnunet["steps"]:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(image), target)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(network.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append((loss.item(), norm.item()))
    return losses


def voxelbase_batches(project, spec, setup, count: int) -> tuple[np.ndarray, np.ndarray]:
    from voxelbase.training.loader import PatchStream

    stream = PatchStream(
        project, spec.dataset, stage=setup.stage, cases=setup.train_cases, settings=setup.train_settings, workers=1
    )
    images, labels = [], []
    for batch in stream.iterate(0, count):
        images.append(batch.image.numpy())
        labels.append(batch.label.numpy())
    return np.stack(images), np.stack(labels)


def _short_training(setup, spec, seed: int, batches) -> object:
    """Voxelbase's training step over `batches` (image, label) at the spec's budget, from seed's initial weights."""
    import torch

    from voxelbase.networks.trained import network_for_plan
    from voxelbase.training.loss import training_loss
    from voxelbase.training.optim import build_optimizer, poly_lr, set_lr

    cfg, plan = spec.train, setup.plan
    torch.manual_seed(seed)
    network = network_for_plan(plan, deep_supervision=cfg.deep_supervision)
    loss_fn = training_loss(cfg, plan)
    optimizer = build_optimizer(
        network, lr=cfg.initial_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    network.train()
    for step, (image, label) in enumerate(batches):
        set_lr(optimizer, poly_lr(step // cfg.iterations_per_epoch, cfg.epochs, cfg.initial_lr, cfg.poly_exponent))
        optimizer.zero_grad(set_to_none=True)
        loss_fn(network(image), label).backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), cfg.grad_clip)
        optimizer.step()
    return network.eval()


def _organ_dice(network, setup, validation) -> float:
    import torch

    from voxelbase.inference.sliding_window import predict_logits

    scores = []
    with torch.no_grad():
        for image, label in validation:
            predicted = predict_logits(network, image, patch_size=setup.plan.patch_size, mirror_axes=None).argmax(0)
            predicted = predicted.numpy() == 1
            scores.append(2 * (predicted & (label == 1)).sum() / (predicted.sum() + (label == 1).sum()))
    return float(np.mean(scores))


def swap_trainings(project, spec, setup, nnunet: dict, trainings: int) -> list[dict]:
    """Pairs of short trainings from the same initial weights: Voxelbase's batches vs nnU-Net's."""
    import torch

    from voxelbase.training.loader import PatchStream
    from voxelbase.training.patches import CaseArrays

    arrays = CaseArrays(project, spec.dataset, setup.stage)
    validation = []
    for case in setup.val_cases:
        image, label = arrays.get(case.case_id)
        label = np.asarray(label[...])
        validation.append((torch.from_numpy(np.asarray(image[...])).float(), label.reshape(label.shape[-3:])))
    budget = spec.train.epochs * spec.train.iterations_per_epoch
    rows = []
    for k in range(trainings):
        seed = spec.train.seed + k
        settings = dataclasses.replace(setup.train_settings, seed=seed)
        stream = PatchStream(
            project, spec.dataset, stage=setup.stage, cases=setup.train_cases, settings=settings, workers=1
        )
        ours = ((batch.image, batch.label.long()) for batch in stream.iterate(0, budget))
        theirs = (
            (torch.from_numpy(nnunet["images"][i]), torch.from_numpy(nnunet["labels"][i].astype(np.int64)))
            for i in range(k * budget, (k + 1) * budget)
        )
        dice_ours = _organ_dice(_short_training(setup, spec, seed, ours), setup, validation)
        dice_theirs = _organ_dice(_short_training(setup, spec, seed, theirs), setup, validation)
        rows.append(
            {
                "seed": seed,
                "organ Dice, Voxelbase batches": round(dice_ours, 3),
                "organ Dice, nnU-Net batches": round(dice_theirs, 3),
                "difference": round(dice_ours - dice_theirs, 3),
            }
        )
        print_table(f"swap trainings (Voxelbase's step, same initial weights), {k + 1} of {trainings}", rows)
    differences = np.array([row["difference"] for row in rows])
    if len(differences) > 1:
        half = 1.96 * differences.std(ddof=1) / np.sqrt(len(differences))
        print(f"mean difference {differences.mean():+.3f} (±{half:.3f}, normal 95%) over {len(differences)} pairs")
    return rows


def compare_statistics(ours: np.ndarray, theirs: np.ndarray) -> list[dict]:
    rows = []
    for column, name in enumerate(STATISTICS):
        a, b = ours[:, column], theirs[:, column]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        se_a, se_b = a.std() / np.sqrt(len(a)), b.std() / np.sqrt(len(b))
        z = (a.mean() - b.mean()) / np.hypot(se_a, se_b)
        rows.append(
            {
                "per sample": name,
                "voxelbase": f"{a.mean():.4f} ± {se_a:.4f}",
                "nnunet": f"{b.mean():.4f} ± {se_b:.4f}",
                "z": round(float(z), 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a benchmarks.learning work folder")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--trainings", type=int, default=0, help="swap trainings (each: two runs of the budget)")
    parser.add_argument("--output", default="training_parity")
    args = parser.parse_args()
    if not have_nnunet():
        raise SystemExit(f"nnU-Net not found in {NNUNET_VENV}: this benchmark compares against it")
    if not (args.work / SPEC).exists():
        raise SystemExit(f"{args.work} holds no {SPEC}: run benchmarks.learning with --work {args.work} first")

    from voxelbase.project import Project
    from voxelbase.spec.load import load_spec
    from voxelbase.training.setup import prepare_fold

    project = Project.resolve(str(args.work / "voxelbase"))
    spec = load_spec(args.work / SPEC)
    setup = prepare_fold(project, spec, configuration=args.configuration, fold=str(args.fold))

    budget = spec.train.epochs * spec.train.iterations_per_epoch
    count = max(args.batches, args.trainings * budget)
    nnunet = run_nnunet_side(args.work, args.configuration, args.fold, args.steps, count)
    ours = voxelbase_steps(setup, spec, nnunet)
    step_rows = [
        {
            "step": i + 1,
            "loss, voxelbase": round(a, 6),
            "loss, nnunet": round(b, 6),
            "grad norm, voxelbase": round(ga, 5),
            "grad norm, nnunet": round(gb, 5),
        }
        for i, ((a, ga), (b, gb)) in enumerate(zip(ours, nnunet["losses"], strict=True))
    ]
    print_table(f"{args.configuration} fold {args.fold}: the same initial weights and batches", step_rows)
    worst = max(abs(a - b) for (a, _), (b, _) in zip(ours, nnunet["losses"], strict=True))
    print(f"largest loss difference over {args.steps} steps: {worst:.2e}")

    images, labels = voxelbase_batches(project, spec, setup, args.batches)
    batch_rows = compare_statistics(
        sample_statistics(images.reshape(-1, *images.shape[2:]), labels.reshape(-1, *labels.shape[2:])),
        sample_statistics(
            nnunet["images"][: args.batches].reshape(-1, *nnunet["images"].shape[2:]),
            nnunet["labels"][: args.batches].reshape(-1, *nnunet["labels"].shape[2:]),
        ),
    )
    print_table(f"{args.batches} training batches from each system's sampler and augmentation", batch_rows)
    swap_rows = swap_trainings(project, spec, setup, nnunet, args.trainings) if args.trainings else []
    write_results(
        args.output,
        {
            "work": "a benchmarks.learning work folder",
            "configuration": args.configuration,
            "fold": args.fold,
            "plan": {"patch_size": list(setup.plan.patch_size), "batch_size": setup.plan.batch_size},
            "steps": step_rows,
            "largest_loss_difference": worst,
            "batches": args.batches,
            "batch_statistics": batch_rows,
            "swap_trainings": swap_rows,
        },
    )


if __name__ == "__main__":
    main()
