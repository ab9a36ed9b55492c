"""Losses: the cluster-centroid embedding loss for rare events and its baselines.

The method (issue 3): every class is split into about equally sized clusters, the loss keeps a
running centroid per cluster and compares each embedding with those K centroids only -- never
with the other N embeddings -- so its cost and memory do not grow with the dataset. Baselines
share one interface: ``loss(logits (N, C), targets (N,)) -> scalar``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edge_detect.errors import TrainingError

__all__ = [
    "BASELINE_METHODS",
    "ClusterCentroidLoss",
    "FocalLoss",
    "HardNegatives",
    "PooledEvents",
    "LogitAdjustedLoss",
    "check_finite",
    "class_balanced_weights",
    "classification_loss",
    "clusters_per_class",
    "inverse_frequency_weights",
    "kmeans",
]

MIN_EXAMPLES_PER_CLASS = 2
"""A class needs at least this many training examples: one example has no spread, so neither a
centroid nor a validation split of it means anything."""

BASELINE_METHODS = ("weighted_ce", "ce", "logit_adjusted", "focal")


def check_finite(tensor: torch.Tensor, what: str, *, step: int, batch: object) -> None:
    """Stop training when ``tensor`` holds NaN or inf, naming the step and batch that did it."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise TrainingError(
            f"{what} became NaN/inf ({bad} values) at step {step}, batch {batch}; training "
            "stopped. Lower the learning rate, check that batch's audio, or resume from the "
            "last checkpoint"
        )


def _check_counts(class_counts: Sequence[int], labels: Sequence[str] | None) -> list[int]:
    counts = [int(n) for n in class_counts]
    if not counts:
        raise TrainingError("no classes given: class_counts is empty")
    for index, n in enumerate(counts):
        name = repr(labels[index]) if labels else f"index {index}"
        if n < MIN_EXAMPLES_PER_CLASS:
            raise TrainingError(
                f"class {name} has {n} training example(s); at least "
                f"{MIN_EXAMPLES_PER_CLASS} are needed. Add examples of it or drop it from "
                "the label map"
            )
    return counts


def clusters_per_class(
    class_counts: Sequence[int], labels: Sequence[str] | None = None
) -> list[int]:
    """K_c = max(1, round(n_c / n_min)): clusters of about the smallest class's size.

    Raises TrainingError for a class with fewer than 2 examples.
    """
    counts = _check_counts(class_counts, labels)
    n_min = min(counts)
    return [max(1, math.floor(n / n_min + 0.5)) for n in counts]


def inverse_frequency_weights(class_counts: Sequence[int], power: float = 1.0) -> torch.Tensor:
    """w_c = N / (C * n_c): the published baseline's class weights (mean weight per example 1).

    ``power`` < 1 tempers them, w_c proportional to n_c^-power, scaled so that the mean weight
    per example stays 1 (0: no weighting). A detector judged by its false alarms needs this:
    full inverse-frequency weights trade hundreds of background frames for one gunshot frame.
    """
    counts = torch.tensor(_check_counts(class_counts, None), dtype=torch.float32)
    if power == 1.0:
        return counts.sum() / (len(counts) * counts)
    weights = counts ** (-power)
    return weights * counts.sum() / (counts * weights).sum()


def class_balanced_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-item weights (N,) that give every class present in ``targets`` the same total weight.

    A batch of 60 background, 3 crying and 5 gunshot embeddings weighs each class 1/3 in all;
    the weights average 1 over the batch (so the loss keeps its scale). This balances the
    centroid loss per *class*, as inverse-frequency weights balance the baseline's: equal-sized
    clusters alone balance clusters, not classes (a class with 16 clusters would still supply 16
    times the embeddings of a class with one).
    """
    counts = torch.bincount(targets, minlength=num_classes).float()  # (C,)
    present = int((counts > 0).sum())
    if present == 0:
        return torch.zeros(0)
    per_class = len(targets) / (present * counts.clamp_min(1.0))
    return per_class[targets]


def kmeans(
    points: torch.Tensor,
    k: int,
    *,
    iterations: int = 25,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (or from ``init``); squared Euclidean distance.

    Parameters
    ----------
    points : tensor, float, shape (N, E), N >= k
    k : number of clusters
    init : tensor, shape (k, E), optional
        Start from these centres instead of k-means++ (a warm re-fit: the clusters stay where
        they were and follow the points, so assignments do not reshuffle).

    Returns
    -------
    tensor, shape (k, E): the cluster means. An emptied cluster is re-seeded at the point
    farthest from its centroid, so every cluster keeps at least one point.
    """
    n = points.shape[0]
    if n < k:
        raise TrainingError(f"k-means needs at least k={k} points, got {n}")
    points = points.detach().float()
    if init is not None:
        if tuple(init.shape) != (k, points.shape[1]):
            raise TrainingError(
                f"k-means init must have shape {(k, points.shape[1])}, got {tuple(init.shape)}"
            )
        centroids = init.detach().float().clone()
    else:
        first = int(torch.randint(n, (1,), generator=generator))
        centres = [points[first]]
        nearest = ((points - centres[0]) ** 2).sum(1)
        for _ in range(1, k):
            probs = nearest / nearest.sum() if nearest.sum() > 0 else torch.full((n,), 1.0 / n)
            pick = int(torch.multinomial(probs, 1, generator=generator))
            centres.append(points[pick])
            nearest = torch.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
        centroids = torch.stack(centres)
    for _ in range(iterations):
        dist = torch.cdist(points, centroids) ** 2  # (N, k)
        assign = dist.argmin(1)
        new = torch.zeros_like(centroids).index_add_(0, assign, points)
        sizes = torch.bincount(assign, minlength=k).float()
        for j in torch.nonzero(sizes == 0).flatten().tolist():
            far = int(dist.min(1).values.argmax())
            new[j], sizes[j] = points[far], 1.0
        centroids = new / sizes[:, None]
    return centroids


class ClusterCentroidLoss(nn.Module):
    r"""Pull each embedding toward its own cluster's running centroid, push it from other classes'.

    Embeddings are L2-normalised, :math:`z = e / \|e\|` (a running variance made the loss blind to
    the embedding scale in the pilot, so the scale is fixed and a temperature sets the sharpness).
    Class :math:`c` with :math:`n_c` training examples ends with
    :math:`K_c = \max(1, \mathrm{round}(n_c / n_{\min}))` clusters (the paper's rule). Cluster
    :math:`k` keeps a sum :math:`S_k` and a count :math:`N_k` of the normalised embeddings assigned
    to it, and its centroid direction is :math:`\mu_k = S_k / \|S_k\|`. An embedding of class
    :math:`c` is assigned to the nearest *active* centroid of its own class,
    :math:`k^* = \arg\min_{k \in c} d_k`, with :math:`d_k = \|z - \mu_k\|^2 = 2 - 2 z \cdot \mu_k`.
    Its loss is

    .. math::
        \ell(z, c) = -\log \frac{\exp(-(d_{k^*} + \alpha) / T)}
            {\exp(-(d_{k^*} + \alpha) / T) + \sum_{k \notin c} \exp(-d_k / T)}

    averaged over the batch, optionally weighted (the trainer passes
    :func:`class_balanced_weights`, so every class counts equally). Gradients flow through
    :math:`z` only: the centroids are statistics, not parameters. Clusters of the same class are
    in neither numerator nor denominator, so a class may stay multi-modal.

    **Warm split.** A class is split into clusters only once the encoder separates the classes:
    the loss starts with *one* active centroid per class (the others are inactive and take no
    part), and :meth:`split` later runs k-means with :math:`K_c` clusters per class on the warmed
    encoder's embeddings (``split=False`` keeps one centroid per class for good: the ablation).
    A k-means on an untrained encoder clusters recordings and gain, not kinds of sound.

    Hyperparameters (defaults): ``temperature`` T = 0.1; ``margin`` alpha = 0.1 (in squared
    distance units, range [0, 4]); ``decay`` = 1.0. After each batch (training mode only)
    :math:`S_k \leftarrow \mathrm{decay} \cdot S_k + \sum_{i \to k} z_i` and
    :math:`N_k \leftarrow \mathrm{decay} \cdot N_k + |\{i \to k\}|`; decay 1 is the exact running
    mean of every embedding assigned since the last :meth:`fit`, decay < 1 an exponential moving
    average that forgets embeddings of an older encoder. When ``torch.distributed`` is initialised
    the batch sums and counts are all-reduced (summed) first, so every rank holds identical
    centroids. The statistics are buffers of *this* module, which is never wrapped in
    DistributedDataParallel, so DDP does not broadcast them (rank 0's would overwrite the sums).

    :meth:`fit` re-fits on a sample of embeddings per class (the trainer passes embeddings of the
    current encoder): one centroid per class is re-seeded at the class mean; after the split,
    k-means starts from the current centroids (a warm re-fit: clusters follow the points instead of
    reshuffling, so the loss does not jump). Either way each class keeps the running count it had,
    so later batches move the centroids as fast as before. Memory is O(K E), independent of the
    dataset size.
    """

    sums: torch.Tensor
    counts: torch.Tensor
    cluster_class: torch.Tensor
    active: torch.Tensor
    is_split: torch.Tensor

    def __init__(
        self,
        class_counts: Sequence[int],
        embedding_dim: int,
        *,
        temperature: float = 0.1,
        margin: float = 0.1,
        decay: float = 1.0,
        labels: Sequence[str] | None = None,
        seed: int = 0,
        split: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise TrainingError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= margin <= 4.0:
            raise TrainingError(f"margin must be in [0, 4] (squared unit distance), got {margin}")
        if not 0.0 < decay <= 1.0:
            raise TrainingError(f"decay must be in (0, 1], got {decay}")
        self.k_per_class = clusters_per_class(class_counts, labels)
        if not split:
            self.k_per_class = [1] * len(self.k_per_class)
        self.num_classes = len(self.k_per_class)
        self.temperature, self.margin, self.decay = temperature, margin, decay
        owners = [c for c, k in enumerate(self.k_per_class) for _ in range(k)]
        self.register_buffer("cluster_class", torch.tensor(owners, dtype=torch.long))
        generator = torch.Generator().manual_seed(seed)
        # random unit directions until the first fit(); count 1 so a centroid is always defined
        init = F.normalize(torch.randn(len(owners), embedding_dim, generator=generator), dim=1)
        self.register_buffer("sums", init)
        self.register_buffer("counts", torch.ones(len(owners)))
        first = torch.zeros(len(owners), dtype=torch.bool)
        for c in range(self.num_classes):
            first[int(torch.nonzero(self.cluster_class == c)[0])] = True
        # one centroid per class until split(); a class with K_c = 1 is split from the start
        self.register_buffer("active", first)
        self.register_buffer("is_split", torch.tensor(all(k == 1 for k in self.k_per_class)))
        self.seed = seed
        self.fits = 0

    @property
    def num_clusters(self) -> int:
        """Clusters in total, active or not (sum of K_c)."""
        return int(self.cluster_class.numel())

    def centroids(self) -> torch.Tensor:
        """Running centroids S_k / N_k, shape (K, E) (not normalised; inactive ones included)."""
        return self.sums / self.counts.clamp_min(1e-12)[:, None]

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit centroid directions of the active clusters (K_active, E) and their classes
        (K_active,): what a centroid classifier head starts from."""
        mu = F.normalize(self.sums[self.active], dim=1)
        return mu.clone(), self.cluster_class[self.active].clone()

    def _distances(self, z: torch.Tensor) -> torch.Tensor:
        mu = F.normalize(self.sums, dim=1)  # direction of S_k equals that of S_k / N_k
        dist = 2.0 - 2.0 * z @ mu.T  # (N, K)
        return dist.masked_fill(~self.active[None, :], math.inf)

    def assign(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Nearest active own-class cluster of every embedding, shape (N,) (cluster indices)."""
        z = F.normalize(embeddings.detach().float(), dim=1)
        dist = self._distances(z)
        own = self.cluster_class[None, :] == targets[:, None]  # (N, K)
        return dist.masked_fill(~own, math.inf).argmin(1)

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class of the nearest active centroid (a classifier-free readout), shape (N,)."""
        z = F.normalize(embeddings.detach().float(), dim=1)
        return self.cluster_class[self._distances(z).argmin(1)]

    def _set_class(
        self, c: int, rows: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
    ) -> None:
        """Replace class ``c``'s statistics, keeping its running total count (when it has one)."""
        total = float(self.counts[rows][self.active[rows]].sum())
        scale = total / float(counts.sum()) if self.fits and total > 0 else 1.0
        self.sums[rows] = sums * scale
        self.counts[rows] = counts * scale

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor, targets: torch.Tensor) -> None:
        """Re-fit the active centroids on ``embeddings`` of the current encoder.

        Before :meth:`split`: each class's one centroid becomes its class mean. After it: k-means
        on each class's normalised embeddings started from the current centroids. A class absent
        from ``embeddings`` or with fewer points than clusters keeps its centroids.
        """
        z = F.normalize(embeddings.detach().float(), dim=1)
        for c in range(self.num_classes):
            points = z[targets == c]
            rows = torch.nonzero((self.cluster_class == c) & self.active).flatten()
            if points.shape[0] < len(rows):
                continue
            if len(rows) == 1:
                sums, counts = points.sum(0, keepdim=True), torch.tensor([float(len(points))])
            else:
                start = F.normalize(self.sums[rows], dim=1)
                centres = kmeans(points, len(rows), init=start)
                sums, counts = _cluster_stats(points, centres)
            self._set_class(c, rows, sums, counts)
        self.fits += 1

    @torch.no_grad()
    def split(self, embeddings: torch.Tensor, targets: torch.Tensor) -> None:
        """Activate all K_c clusters of every class: k-means (k-means++ seeding) on each class's
        normalised ``embeddings`` of the warmed encoder. Call once; later refits are warm."""
        z = F.normalize(embeddings.detach().float(), dim=1)
        generator = torch.Generator().manual_seed(self.seed + 7919)
        for c, k in enumerate(self.k_per_class):
            rows = torch.nonzero(self.cluster_class == c).flatten()
            points = z[targets == c]
            if k == 1:  # nothing to split: re-seed the class mean, as fit() does
                if len(points):
                    self._set_class(
                        c, rows, points.sum(0, keepdim=True), torch.tensor([1.0 * len(points)])
                    )
                continue
            if points.shape[0] < k:
                raise TrainingError(
                    f"cannot split class index {c} into {k} clusters: only {points.shape[0]} "
                    "embeddings were given; pass embeddings of more clips"
                )
            centres = kmeans(points, k, generator=generator)
            sums, counts = _cluster_stats(points, centres)
            self._set_class(c, rows, sums, counts)
            self.active[rows] = True
        self.is_split.fill_(True)
        self.fits += 1

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch to the running sums and counts (all-reduced across ranks)."""
        z = F.normalize(embeddings.detach().float(), dim=1)
        assign = self.assign(z, targets)
        batch_sums = torch.zeros_like(self.sums).index_add_(0, assign, z)
        batch_counts = torch.bincount(assign, minlength=self.num_clusters).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sums)
            torch.distributed.all_reduce(batch_counts)
        self.sums.mul_(self.decay).add_(batch_sums)
        self.counts.mul_(self.decay).add_(batch_counts)

    def forward(
        self,
        embeddings: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        step: int = -1,
        batch: object = None,
    ) -> torch.Tensor:
        """Loss of a batch; in training mode also updates the centroids afterwards.

        Parameters
        ----------
        embeddings : tensor, float, shape (N, E)
        targets : tensor, long, shape (N,), class indices
        weights : tensor, float, shape (N,), optional per-embedding weights
        step, batch : named in the error if an embedding is NaN/inf
        """
        check_finite(embeddings, "an embedding", step=step, batch=batch)
        if embeddings.shape[0] == 0:
            return embeddings.sum() * 0.0
        z = F.normalize(embeddings.float(), dim=1)
        dist = self._distances(z)  # (N, K); centroids are constants here, inactive ones inf
        assign = self.assign(z, targets)
        own_class = self.cluster_class[None, :] == targets[:, None]
        d_own = dist.gather(1, assign[:, None])  # (N, 1)
        others = (-dist / self.temperature).masked_fill(own_class, -math.inf)
        positive = -(d_own + self.margin) / self.temperature
        logits = torch.cat([positive, others], dim=1)  # (N, 1 + K)
        per_item = -torch.log_softmax(logits, dim=1)[:, 0]
        if weights is None:
            loss = per_item.mean()
        else:
            loss = (per_item * weights).sum() / weights.sum().clamp_min(1e-12)
        if self.training:
            self.update(z, targets)
        return loss


def _cluster_stats(
    points: torch.Tensor, centres: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums (k, E) and counts (k,) of ``points`` assigned to their nearest of ``centres``."""
    assign = torch.cdist(points, centres).argmin(1)
    sums = torch.zeros_like(centres).index_add_(0, assign, points)
    return sums, torch.bincount(assign, minlength=len(centres)).float()


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al. 2021): CE(logits + tau * log prior, y).

    Training sees the prior added, so the raw logits used at test time are balanced.
    ``tau`` = 1.0 by default; prior p_c = n_c / N.
    """

    log_prior: torch.Tensor

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        counts = torch.tensor(_check_counts(class_counts, None), dtype=torch.float32)
        self.register_buffer("log_prior", tau * torch.log(counts / counts.sum()))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits shifted by the log class priors."""
        return F.cross_entropy(logits + self.log_prior, targets)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): mean of -(1 - p_y)^gamma log p_y; ``gamma`` = 2.0."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean focal loss of the target classes."""
        log_p = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        return (-((1.0 - log_p.exp()) ** self.gamma) * log_p).mean()


class _CrossEntropy(nn.Module):
    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.weight)

    def per_frame(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of every frame, shape (N,)."""
        return F.cross_entropy(logits, targets, reduction="none")


class _OneVsRest(nn.Module):
    """Binary cross-entropy per class on one-hot frame targets (background frames: background
    on, every event off), each frame weighted by its class's weight (None: all 1)."""

    weight: torch.Tensor | None

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weight", weight)

    def per_frame(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of every frame (summed over the classes), shape (N,)."""
        onehot = F.one_hot(targets, self.num_classes).to(logits.dtype)  # (N, C)
        return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_frame = self.per_frame(logits, targets)
        if self.weight is None:
            return per_frame.mean()
        w = self.weight[targets]
        return (per_frame * w).sum() / w.sum().clamp_min(1e-12)


class HardNegatives(nn.Module):
    """A frame loss plus the mean loss of the hardest background frames of the batch.

    ``loss = base(logits, targets) + weight * mean(top-k per-frame losses of the frames whose
    target is background)``, k = ceil(``fraction`` x background frames). Inverse-frequency
    weights make every background frame count little, since background has most frames; yet a
    detector is judged by its false alarms, i.e. by the few background frames that score
    highest. This term keeps those in view (online hard-example mining).
    """

    def __init__(
        self, base: nn.Module, background_index: int, *, fraction: float, weight: float
    ) -> None:
        super().__init__()
        if not hasattr(base, "per_frame"):
            raise TrainingError(
                f"hard-negative mining needs a loss with per-frame values; "
                f"{type(base).__name__} has none (use weighted_ce or ce)"
            )
        if not 0.0 < fraction <= 1.0:
            raise TrainingError(f"hard-negative fraction must be in (0, 1], got {fraction}")
        self.base = base
        self.background_index, self.fraction, self.weight = background_index, fraction, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The base loss plus the weighted term of the hardest background frames."""
        loss = self.base(logits, targets)
        negative = targets == self.background_index
        if not negative.any():
            return loss
        per_frame = self.base.per_frame(logits[negative], targets[negative])  # type: ignore[operator]
        k = max(1, math.ceil(self.fraction * per_frame.numel()))
        return loss + self.weight * per_frame.topk(k).values.mean()


class PooledEvents(nn.Module):
    """One-vs-rest loss for weakly labelled events: an event must fire on its best frames, not
    on every frame of its clip; background must fire on none (a max-pooling, or
    multiple-instance, loss, as small keyword spotters are trained).

    Takes whole sequences: logits (B, T, C) and frame targets (B, T) (``IGNORE`` = unscored).

    - Frame term: binary cross-entropy of every scored (frame, class) pair, each frame weighted
      by its class's weight, except the pairs an event's own frames would assert: "this frame
      is class c" (for c = its event) and "this frame is not background". A clip label says
      the event is somewhere in those frames, not that each one of them is it.
    - Event term: per sequence with event c, the mean of the ``top_frames`` highest logits of
      column c over the frames labelled c must be positive (binary cross-entropy against 1);
      each class's sequences weighted alike.
    - Optionally the hardest background frames (``hard_fraction``, ``hard_weight``), as
      :class:`HardNegatives` adds them.
    """

    sequence_level = True
    weight: torch.Tensor | None

    def __init__(
        self,
        num_classes: int,
        background_index: int,
        *,
        top_frames: int,
        weight: torch.Tensor | None = None,
        hard_fraction: float = 0.05,
        hard_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if top_frames < 1:
            raise TrainingError(f"top_frames must be >= 1, got {top_frames}")
        self.num_classes, self.background_index = num_classes, background_index
        self.top_frames = top_frames
        self.hard_fraction, self.hard_weight = hard_fraction, hard_weight
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sequence loss: events on their best frames, background on every frame.

        ``logits`` are (B, T, C), ``targets`` (B, T) with -1 for unscored frames.
        """
        scored = targets >= 0  # (B, T)
        safe = targets.clamp_min(0)
        onehot = F.one_hot(safe, self.num_classes).to(logits.dtype)  # (B, T, C)
        bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        is_event = scored & (safe != self.background_index)  # (B, T)
        own = onehot.bool() & is_event[..., None]  # an event frame's own column
        own[..., self.background_index] |= is_event  # ... and "not background"
        keep = scored[..., None] & ~own
        w = self.weight[safe] if self.weight is not None else torch.ones_like(safe, dtype=bce.dtype)
        w = w * scored
        frame_term = (bce * keep * w[..., None]).sum() / w.sum().clamp_min(1e-12)
        loss = frame_term + self._events(logits, safe, is_event)
        if self.hard_weight > 0:
            negative = scored & (safe == self.background_index)
            if negative.any():
                per_frame = bce[negative].sum(1)
                k = max(1, math.ceil(self.hard_fraction * per_frame.numel()))
                loss = loss + self.hard_weight * per_frame.topk(k).values.mean()
        return loss

    def _events(
        self, logits: torch.Tensor, safe: torch.Tensor, is_event: torch.Tensor
    ) -> torch.Tensor:
        """Mean over event classes of the mean over their sequences of BCE(pooled logit, 1)."""
        terms = []
        for c in range(self.num_classes):
            if c == self.background_index:
                continue
            frames = is_event & (safe == c)  # (B, T)
            rows = frames.any(1)
            if not rows.any():
                continue
            column = logits[rows][..., c].masked_fill(~frames[rows], -math.inf)  # (b, T)
            k = min(self.top_frames, column.shape[1])
            top = column.topk(k, dim=1).values  # (b, k), -inf where an event is shorter
            finite = torch.isfinite(top)
            pooled = torch.where(finite, top, 0.0).sum(1) / finite.sum(1).clamp_min(1)
            terms.append(F.binary_cross_entropy_with_logits(pooled, torch.ones_like(pooled)))
        return torch.stack(terms).mean() if terms else logits.sum() * 0.0


def classification_loss(
    method: str,
    class_counts: Sequence[int],
    *,
    focal_gamma: float = 2.0,
    logit_tau: float = 1.0,
    output: str = "softmax",
    hard_negatives: tuple[int, float, float] | None = None,
    weight_power: float = 1.0,
) -> nn.Module:
    """The loss on logits (N, C) and targets (N,) for a baseline ``method``.

    'weighted_ce' (inverse-frequency weights, the published baseline), 'ce', 'logit_adjusted',
    'focal'. With ``output = "sigmoid"`` (one independent probability per class) 'weighted_ce'
    and 'ce' become one-vs-rest binary cross-entropy, frames weighted by inverse class frequency
    or not at all; the other two have no such form. ``hard_negatives`` = (background index,
    fraction, weight) adds the hardest background frames' loss (:class:`HardNegatives`);
    ``weight_power`` tempers 'weighted_ce''s inverse-frequency weights
    (:func:`inverse_frequency_weights`).
    """
    base = _base_loss(method, class_counts, focal_gamma, logit_tau, output, weight_power)
    if hard_negatives is None:
        return base
    background, fraction, weight = hard_negatives
    return HardNegatives(base, background, fraction=fraction, weight=weight)


def _base_loss(
    method: str,
    class_counts: Sequence[int],
    focal_gamma: float,
    logit_tau: float,
    output: str,
    weight_power: float,
) -> nn.Module:
    if output == "sigmoid":
        if method not in ("weighted_ce", "ce"):
            raise TrainingError(
                f"loss method {method!r} has no one-vs-rest (sigmoid) form; use weighted_ce or ce"
            )
        counts = _check_counts(class_counts, None)
        weight = (
            inverse_frequency_weights(counts, weight_power) if method == "weighted_ce" else None
        )
        return _OneVsRest(len(counts), weight)
    if method == "weighted_ce":
        return _CrossEntropy(inverse_frequency_weights(class_counts, weight_power))
    if method == "ce":
        _check_counts(class_counts, None)
        return _CrossEntropy()
    if method == "logit_adjusted":
        return LogitAdjustedLoss(class_counts, logit_tau)
    if method == "focal":
        _check_counts(class_counts, None)
        return FocalLoss(focal_gamma)
    raise TrainingError(
        f"unknown loss method {method!r}; expected one of {BASELINE_METHODS} or 'cluster'"
    )
