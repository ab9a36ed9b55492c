"""Plots of a training run: loss curves, confusion matrices, embeddings (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["embedding_plot", "training_plots"]


def training_plots(
    run_dir: Path, history: list[dict[str, Any]], labels: Sequence[str], confusions: dict[str, Any]
) -> None:
    """loss_curves.png (loss and validation error by epoch) and confusion_<part>.png of a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax[0].set_xlabel("epoch")
    ax[0].set_title("training loss")
    ax[0].legend()
    ax[1].plot(epochs, [h["val_clip_error"] for h in history], label="val clip error")
    if all("val_frame_error" in h for h in history):  # the CNN has no frame scores
        ax[1].plot(epochs, [h["val_frame_error"] for h in history], label="val frame error")
    ax[1].set_xlabel("epoch")
    ax[1].set_title("validation mean per-class error")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=100)
    plt.close(fig)
    for name, confusion in confusions.items():
        matrix = np.asarray(confusion)
        fig, axis = plt.subplots(figsize=(5, 4.5))
        axis.imshow(
            matrix / np.maximum(matrix.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1
        )
        for i in range(len(labels)):
            for j in range(len(labels)):
                axis.text(j, i, str(matrix[i, j]), ha="center", va="center")
        axis.set_xticks(range(len(labels)), labels, rotation=30)
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{name} clips")
        fig.tight_layout()
        fig.savefig(run_dir / f"confusion_{name}.png", dpi=100)
        plt.close(fig)


def embedding_plot(
    path: Path,
    embeddings: npt.NDArray[np.float32],
    targets: Any,
    clusters: Any,
    labels: Sequence[str],
    title: str,
) -> None:
    """A 2-D PCA projection of embeddings coloured by class (and by cluster beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    z = z - z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)  # PCA
    xy = z @ vt[:2].T
    panels = 2 if clusters is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False)
    for i, label in enumerate(labels):
        sel = targets == i
        axes[0, 0].scatter(xy[sel, 0], xy[sel, 1], s=8, label=label)
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].set_title(f"{title}: by class")
    if clusters is not None:
        axes[0, 1].scatter(xy[:, 0], xy[:, 1], s=8, c=clusters, cmap="tab20")
        axes[0, 1].set_title(f"{title}: by cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
