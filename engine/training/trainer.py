"""Training one fold, top to bottom: build, (resume,) loop over epochs, checkpoint, record.

Every epoch is a row in `epochs`; the run is a row in `runs` whose status says how it ended. Batches are a
pure function of (seed, batch index), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from voxelbase.device import autocast_dtype, resolve_device
from voxelbase.networks import load_checkpoint, network_for_plan, save_checkpoint
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec
from voxelbase.store.location import settled
from voxelbase.training import records
from voxelbase.training.distributed import (
    SINGLE,
    RankLost,
    Ranks,
    all_reduce_sum,
    batch_share,
    process_group,
    rank_device,
    ranks_from_environment,
    share_from_main,
)
from voxelbase.training.loader import PatchStream, StreamSettings, augment_batch
from voxelbase.training.loss import DiceCELoss, region_targets, training_loss
from voxelbase.training.optim import build_optimizer, poly_lr, set_lr
from voxelbase.training.plot import plot_progress
from voxelbase.training.setup import FoldSetup, TrainingError, default_workers, prepare_fold, training_hash


@dataclass(frozen=True)
class FoldResult:
    run_id: int
    run_dir: Path
    status: str  # 'finished' or 'skipped' (already trained to these epochs)
    epochs: int
    best_ema_dice: float | None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _pseudo_dice_counts(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    *,
    regions: list[tuple[int, ...]] | None = None,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """(3, K) true positives, false positives, false negatives per foreground class (nnU-Net's online Dice): of the
    argmax per class 1 .. K-1, or for regions of sigmoid > 0.5 per region; ignored voxels are left out.

    Counted on the logits' device and copied to the host once (one sync per batch, not three per class).
    """
    target = target[:, 0].long()
    if regions:
        p = (logits > 0).transpose(0, 1)  # sigmoid > 0.5, (R, B, *spatial)
        t = region_targets(target[:, None], regions).transpose(0, 1)
    else:
        predicted = logits.argmax(1)
        classes = torch.arange(1, num_classes, device=logits.device).view(-1, *[1] * predicted.ndim)
        p, t = predicted[None] == classes, target[None] == classes  # (K-1, B, *spatial)
    if ignore_label is not None:
        valid = (target != ignore_label)[None]
        p, t = p & valid, t & valid
    dims = tuple(range(1, p.ndim))
    tp = (p & t).sum(dims)
    counts = torch.stack([tp, p.sum(dims) - tp, t.sum(dims) - tp])
    return counts.to("cpu", torch.float64)


def training_step(
    model: torch.nn.Module,
    loss_fn: DiceCELoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    image: torch.Tensor,
    label: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None,
    grad_clip: float,
) -> torch.Tensor:
    """One optimizer step on one batch (nnU-Net's train_step): forward under autocast, backward through the
    gradient scaler, gradients clipped to norm `grad_clip`. `model` may be wrapped in DDP; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(image.device, amp_dtype):
        loss = loss_fn(model(image), label)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _start_or_resume(
    project: Project,
    spec: ExperimentSpec,
    setup: FoldSetup,
    *,
    configuration: str,
    fold: str,
    run_dir: Path,
    device: torch.device,
    resume: bool,
    world_size: int = 1,
) -> tuple[int, Path | None, bool]:
    """(run_id, checkpoint to continue from or None, already_done) by the rules of resume and extend."""
    previous = records.latest_run(project, experiment=spec.name, configuration=configuration, fold=fold)
    if previous is not None and previous.status == "running":
        raise TrainingError(
            f"{spec.name}/{configuration}/fold_{fold} is being trained right now (run {previous.run_id}, "
            f"pid {previous.pid} on {previous.host}); wait for it or stop it first"
        )
    epochs, key = spec.train.epochs, training_hash(spec, setup)
    same_training = previous is not None and previous.spec_hash == key
    if previous is not None and previous.status == "finished" and same_training and not resume:
        final = run_dir / "checkpoint_final.pt"
        if epochs == previous.epochs and final.exists():
            return previous.run_id, None, True
        if epochs > previous.epochs and final.exists():  # extend: continue from the final checkpoint
            records.reopen_run(
                project, previous.run_id, epochs=epochs, spec_hash=key, device=str(device), world_size=world_size
            )
            return previous.run_id, final, False
    if resume:
        latest = run_dir / "checkpoint_latest.pt"
        if previous is None:
            raise TrainingError(f"nothing to resume for {spec.name}/{configuration}/fold_{fold}: it never ran")
        if previous.status == "finished" or not latest.exists():
            raise TrainingError(
                f"nothing to resume for {spec.name}/{configuration}/fold_{fold}: its last run is {previous.status}"
                f" and has no {latest.name}"
            )
        if not same_training:
            raise TrainingError(
                f"cannot resume {spec.name}/{configuration}/fold_{fold}: the training settings changed since it started; "
                "train without --resume to start over"
            )
        records.reopen_run(
            project, previous.run_id, epochs=epochs, spec_hash=key, device=str(device), world_size=world_size
        )
        return previous.run_id, latest, False
    for stale in run_dir.glob("checkpoint_*.pt"):
        stale.unlink()
    run_id = records.start_run(
        project,
        experiment=spec.name,
        configuration=configuration,
        fold=fold,
        plan=setup.plan_name,
        spec_hash=key,
        epochs=epochs,
        device=str(device),
        run_dir=str(run_dir),
        world_size=world_size,
    )
    return run_id, None, False


def train_fold(
    project: Project,
    spec: ExperimentSpec,
    *,
    configuration: str,
    fold: str,
    device: str | None = None,
    resume: bool = False,
) -> FoldResult:
    """Train (or resume, or extend) one fold of one configuration. End-of-fold validation is evaluation's
    (`voxelbase.evaluation.validation.validate_fold`); `voxelbase.workflow.train` runs one after the other.

    Under a distributed launch (torchrun's RANK / WORLD_SIZE) this process is one rank of a DDP run: rank 0 reads
    the catalog, records the run and its epochs and writes the checkpoints; every rank trains its share of each
    batch (`voxelbase.training.distributed`)."""
    ranks = ranks_from_environment()
    dev = rank_device(ranks, resolve_device(device or spec.train.device))
    with process_group(ranks, dev):
        begun = share_from_main(
            ranks,
            lambda: _begin(project, spec, configuration, fold, device=dev, resume=resume, world_size=ranks.world_size),
        )
        spec, setup, project, run_id, run_dir, checkpoint, done = begun
        if done:
            return FoldResult(run_id, run_dir, "skipped", spec.train.epochs, None)
        try:
            result = _train(
                project, spec, setup, run_id=run_id, run_dir=run_dir, device=dev, checkpoint=checkpoint, ranks=ranks
            )
        except KeyboardInterrupt:
            if ranks.main:
                records.finish_run(project, run_id, status="interrupted", error="interrupted by the user")
            raise
        except BaseException as error:
            lost = ranks.distributed and _is_lost_rank(error)
            if ranks.main:
                status, message = ("interrupted", f"a rank stopped: {error}") if lost else ("failed", None)
                records.finish_run(project, run_id, status=status, error=message or f"{type(error).__name__}: {error}")
            if lost and not isinstance(error, RankLost):
                raise RankLost(f"rank {ranks.rank}: another rank of the run stopped ({error})") from error
            raise
        if ranks.main:
            records.finish_run(project, run_id, status="finished")
        return result


def _is_lost_rank(error: BaseException) -> bool:
    """Whether an error comes from the process group (a peer rank gone), not from this rank's own work."""
    return isinstance(error, (RankLost, torch.distributed.DistError)) or (
        isinstance(error, RuntimeError) and any(word in str(error) for word in ("Connection closed", "Gloo", "NCCL"))
    )


def _begin(
    project: Project,
    spec: ExperimentSpec,
    configuration: str,
    fold: str,
    *,
    device: torch.device,
    resume: bool,
    world_size: int,
) -> tuple:
    """Everything rank 0 reads and records before training: (spec, setup, project, run id, run folder, checkpoint,
    done)."""
    setup = prepare_fold(project, spec, configuration=configuration, fold=fold)
    # the plan it trains on, named: the same fold trained through `train` or `run` has the same key
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, plan=setup.plan_name))
    run_dir = project.run_dir(spec.name, configuration, fold)
    run_dir.mkdir(parents=True, exist_ok=True)
    records.record_experiment(project, name=spec.name, dataset=spec.dataset, spec=spec.to_dict(), spec_hash=spec.hash())
    run_id, checkpoint, done = _start_or_resume(
        project,
        spec,
        setup,
        configuration=configuration,
        fold=fold,
        run_dir=run_dir,
        device=device,
        resume=resume,
        world_size=world_size,
    )
    # the other ranks find the store from the project they are handed, never from the catalog rank 0 writes
    return spec, setup, settled(project), run_id, run_dir, checkpoint, done


def _train(
    project: Project,
    spec: ExperimentSpec,
    setup: FoldSetup,
    *,
    run_id: int,
    run_dir: Path,
    device: torch.device,
    checkpoint: Path | None,
    ranks: Ranks = SINGLE,
) -> FoldResult:
    cfg, plan = spec.train, setup.plan
    train_settings, val_settings = (
        _rank_settings(setup.train_settings, ranks),
        _rank_settings(setup.val_settings, ranks),
    )
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    num_classes = plan.num_classes
    regions = [members for _, members in plan.regions] or None
    n_scored = len(plan.foreground_labels)  # foreground classes, or every region
    network = network_for_plan(plan, deep_supervision=cfg.deep_supervision).to(device)
    if device.type == "cuda" and cfg.channels_last is True:
        network = network.to(
            memory_format=torch.channels_last_3d if len(train_settings.patch_size) == 3 else torch.channels_last
        )
    optimizer = build_optimizer(
        network, lr=cfg.initial_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    loss_fn = training_loss(cfg, plan, ddp=ranks.distributed)
    model = torch.compile(network) if cfg.compile else network
    if ranks.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    amp_dtype = autocast_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling

    start_epoch, history, best_ema = 0, [], -math.inf
    if checkpoint is not None:
        # read by rank 0 and handed to the others: ranks on other machines need no copy of the project's runs folder
        state = share_from_main(ranks, lambda: load_checkpoint(checkpoint, map_location="cpu"))
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        torch.random.set_rng_state(state["torch_rng"].cpu())
        start_epoch = state["epoch"] + 1
        history = state["state"]["history"][:start_epoch]
        best_ema = state["state"]["best_ema"]
        if state["state"].get("grad_scaler"):
            scaler.load_state_dict(state["state"]["grad_scaler"])
        if ranks.main:
            records.forget_epochs_after(project, run_id, state["epoch"])

    workers = cfg.num_workers or default_workers()
    if device.type == "cpu":  # ranks on one machine share its cores
        workers = max(1, workers // ranks.local_world_size)
    on_gpu = device.type == "cuda"
    augment_on_device = on_gpu and cfg.augment_device != "cpu"
    train_stream = PatchStream(
        project,
        spec.dataset,
        stage=setup.stage,
        cases=setup.train_cases,
        settings=train_settings,
        workers=workers,
        augment_in_workers=not augment_on_device,
        pin_memory=on_gpu and cfg.pin_memory,
        previous_stage=setup.previous_stage,
    )
    val_stream = PatchStream(
        project,
        spec.dataset,
        stage=setup.stage,
        cases=setup.val_cases,
        settings=val_settings,
        workers=max(1, workers // 2),
        pin_memory=on_gpu and cfg.pin_memory,
        previous_stage=setup.previous_stage,
    )
    iterations, val_iterations = cfg.iterations_per_epoch, cfg.val_iterations
    train_batches = train_stream.iterate(start_epoch * iterations, cfg.epochs * iterations)
    val_batches = val_stream.iterate(start_epoch * val_iterations, cfg.epochs * val_iterations)
    state_of = lambda: {"history": history, "best_ema": best_ema, "grad_scaler": scaler.state_dict()}  # noqa: E731

    progress = tqdm(
        range(start_epoch, cfg.epochs),
        desc=f"{spec.name} {setup.stage} fold",
        unit="epoch",
        initial=start_epoch,
        total=cfg.epochs,
        disable=None if ranks.main else True,
    )
    for epoch in progress:
        started = time.perf_counter()
        lr = poly_lr(epoch, cfg.epochs, cfg.initial_lr, cfg.poly_exponent)
        set_lr(optimizer, lr)

        model.train()
        train_losses = []
        for _ in range(iterations):
            batch = next(train_batches)
            if augment_on_device:
                batch = augment_batch(batch, train_settings, device=device)
            image = batch.image.to(device, non_blocking=True)
            label = batch.label.to(device, non_blocking=True)
            loss = training_step(
                model, loss_fn, optimizer, scaler, image, label, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip
            )
            train_losses.append(loss.item())

        model.eval()
        val_losses, counts = [], torch.zeros(3, n_scored, dtype=torch.float64)
        with torch.no_grad():
            for _ in range(val_iterations):
                batch = next(val_batches)
                image = batch.image.to(device, non_blocking=True)
                label = batch.label.to(device, non_blocking=True)
                with _autocast(device, amp_dtype):
                    outputs = model(image)
                    val_losses.append(loss_fn(outputs, label).item())
                highest = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
                counts += _pseudo_dice_counts(
                    highest.float(), label, num_classes, regions=regions, ignore_label=plan.ignore_label
                )
        if ranks.distributed:  # every rank records and decides on the same, global figures
            counts = all_reduce_sum(counts.to(device)).cpu()
            train_losses, val_losses = _mean_over_ranks(train_losses, device), _mean_over_ranks(val_losses, device)
        tp, fp, fn = counts
        dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
        mean_dice = float(np.nanmean(dice)) if not all(math.isnan(d) for d in dice) else 0.0
        ema = (
            mean_dice
            if not history
            else history[-1]["ema_dice"] * cfg.ema_pseudo_dice + (1 - cfg.ema_pseudo_dice) * mean_dice
        )
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(train_losses)),
            "lr": lr,
            "val_loss": float(np.mean(val_losses)) if val_losses else None,
            "val_dice": [None if math.isnan(d) else d for d in dice],
            "seconds": time.perf_counter() - started,
        }
        if ranks.main:
            records.record_epoch(project, run_id, row)
        history.append({**row, "mean_dice": mean_dice, "ema_dice": ema})
        progress.set_postfix(loss=f"{row['train_loss']:.3f}", dice=f"{mean_dice:.3f}", ema=f"{ema:.3f}")

        save = {
            "network": network,
            "optimizer": optimizer,
            "epoch": epoch,
            "spec": spec.to_dict(),
            "plan": plan.to_dict(),
        }
        if ema > best_ema:
            best_ema = ema
            if ranks.main:
                save_checkpoint(run_dir / "checkpoint_best.pt", state=state_of(), **save)
        if ranks.main and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
            save_checkpoint(run_dir / "checkpoint_latest.pt", state=state_of(), **save)
            plot_progress(run_dir / "progress.png", history)
    progress.close()
    result = FoldResult(run_id, run_dir, "finished", cfg.epochs, best_ema if history else None)
    if not ranks.main:
        return result
    final_epoch = cfg.epochs - 1
    save_checkpoint(
        run_dir / "checkpoint_final.pt",
        network=network,
        optimizer=optimizer,
        epoch=final_epoch,
        spec=spec.to_dict(),
        plan=plan.to_dict(),
        state=state_of(),
    )
    (run_dir / "checkpoint_latest.pt").unlink(missing_ok=True)  # a finished run resumes from final, as nnU-Net does
    plot_progress(run_dir / "progress.png", history)
    return result


def _rank_settings(settings: StreamSettings, ranks: Ranks) -> StreamSettings:
    """A rank's stream: its share of the global batch and of the foreground oversampling, its own random draws."""
    if not ranks.distributed:
        return settings
    batch_size, oversample = batch_share(settings.batch_size, settings.oversample_foreground, ranks)
    return dataclasses.replace(settings, batch_size=batch_size, oversample_foreground=oversample, rank=ranks.rank)


def _mean_over_ranks(losses: list[float], device: torch.device) -> list[float]:
    """The ranks' losses of an epoch as one mean over all of them (a one-element list, or empty when none)."""
    totals = all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)).cpu()
    return [float(totals[0] / totals[1])] if totals[1] > 0 else []
