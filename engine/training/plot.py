"""`progress.png`: losses, pseudo Dice (and its moving average) and learning rate per epoch."""

from __future__ import annotations

from pathlib import Path


def plot_progress(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax_loss.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", label="train loss")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], color="tab:red", label="validation loss")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    ax_dice.plot(epochs, [h["mean_dice"] for h in history], color="tab:green", ls="dotted", label="pseudo Dice")
    ax_dice.plot(epochs, [h["ema_dice"] for h in history], color="tab:green", label="pseudo Dice (moving average)")
    ax_dice.set_ylabel("pseudo Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()
    more = ax_dice.get_legend_handles_labels()
    ax_loss.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    ax_lr.plot(epochs, [h["lr"] for h in history], color="black")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
