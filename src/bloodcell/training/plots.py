"""Training curves: loss and accuracy per epoch, training against validation."""

from __future__ import annotations

import io
from pathlib import Path

from bloodcell.core.files import atomic_write_bytes


def plot_curves(history: list[dict], path: str | Path, title: str = "", best_epoch: int | None = None) -> Path:
    """Write a two-panel PNG (loss; accuracy and macro-F1) of ``history`` to ``path``."""
    # deferred: matplotlib is slow to import and is set to its file-only backend (Agg) only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train accuracy")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "s-", label="validation accuracy")
    ax_acc.plot(epochs, [h["val_macro_f1"] for h in history], "^--", label="validation macro-F1", alpha=0.8)
    ax_acc.set(xlabel="epoch", ylabel="score", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch ({best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) < 15:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
