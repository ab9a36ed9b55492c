"""The cluster-centroid loss and the baselines (train/losses.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from edge_detect.errors import TrainingError  # noqa: E402
from train.losses import (  # noqa: E402
    BASELINE_METHODS,
    ClusterCentroidLoss,
    classification_loss,
    clusters_per_class,
    inverse_frequency_weights,
    kmeans,
)


def test_clusters_per_class_are_about_the_smallest_class_size() -> None:
    # ratios 6:1:2:16 and 2:2:1:26 of the benchmark, plus rounding at .5 (upwards)
    assert clusters_per_class([60, 10, 20, 160]) == [6, 1, 2, 16]
    assert clusters_per_class([20, 20, 10, 260]) == [2, 2, 1, 26]
    assert clusters_per_class([25, 10, 14, 10]) == [3, 1, 1, 1]


def test_class_with_no_or_one_example_is_refused_by_name() -> None:
    with pytest.raises(TrainingError, match="'gun_shot' has 0 training"):
        clusters_per_class([5, 0], ["dog_bark", "gun_shot"])
    with pytest.raises(TrainingError, match="'gun_shot' has 1 training"):
        ClusterCentroidLoss([5, 1], 4, labels=["dog_bark", "gun_shot"])
    with pytest.raises(TrainingError, match="has 1 training"):
        classification_loss("weighted_ce", [5, 1])


def test_inverse_frequency_weights() -> None:
    weights = inverse_frequency_weights([10, 30])
    assert torch.allclose(weights, torch.tensor([2.0, 2.0 / 3.0]))


def test_centroid_update_is_the_running_mean_of_assigned_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    loss = ClusterCentroidLoss([20, 40], 3, decay=1.0)  # K = [1, 2]
    first = torch.randn(40, 3, generator=gen)
    first_y = torch.arange(40) % 2
    loss.fit(first, first_y)
    assigned_before = loss.assign(first, first_y)
    members = {k: [F.normalize(first, dim=1)[assigned_before == k]] for k in range(3)}
    loss.train()
    for _ in range(3):
        x = torch.randn(16, 3, generator=gen)
        y = torch.randint(0, 2, (16,), generator=gen)
        assign = loss.assign(x, y)  # the assignment the update will use (centroids before it)
        loss(x, y)
        for k in range(3):
            members[k].append(F.normalize(x, dim=1)[assign == k])
    for k in range(3):
        expected = torch.cat(members[k]).mean(0)
        assert torch.allclose(loss.centroids()[k], expected, atol=1e-5)
        assert loss.counts[k] == torch.cat(members[k]).shape[0]


def test_eval_mode_does_not_move_centroids() -> None:
    loss = ClusterCentroidLoss([4, 4], 3).eval()
    before = loss.sums.clone()
    loss(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    assert torch.equal(before, loss.sums)


def test_gradient_pulls_toward_own_centroid_and_pushes_from_others() -> None:
    loss = ClusterCentroidLoss([10, 10, 10], 3, margin=0.0).eval()
    axes = torch.eye(3)
    loss.fit(axes, torch.tensor([0, 1, 2]))  # one centroid per class on each axis
    z = torch.tensor([[0.6, 0.5, 0.4]], requires_grad=True)
    loss(z, torch.tensor([0])).backward()
    assert z.grad is not None
    step = -z.grad[0]  # gradient descent direction
    assert torch.dot(step, axes[0]) > 0  # toward the own centroid
    assert torch.dot(step, axes[1]) < 0 and torch.dot(step, axes[2]) < 0  # away from others
    # and one small step really lowers the distance to the own centroid
    moved = F.normalize(z.detach() + 0.05 * step, dim=1)
    assert (moved - axes[0]).norm() < (F.normalize(z.detach(), dim=1) - axes[0]).norm()


def test_memory_does_not_grow_with_dataset_size() -> None:
    small = ClusterCentroidLoss([100, 20, 40], 8)
    large = ClusterCentroidLoss([100_000, 20_000, 40_000], 8)

    def size(module: torch.nn.Module) -> int:
        return sum(t.numel() for t in module.state_dict().values())

    assert size(small) == size(large) == 8 * 8 + 8 + 8
    large.train()
    for _ in range(20):  # many batches: nothing is stored per embedding
        large(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    assert size(large) == 8 * 8 + 8 + 8


def test_nan_embedding_stops_with_step_and_batch() -> None:
    loss = ClusterCentroidLoss([4, 4], 3)
    bad = torch.randn(4, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(TrainingError, match=r"step 17, batch 3"):
        loss(bad, torch.tensor([0, 1, 0, 1]), step=17, batch=3)


def test_kmeans_finds_separated_blobs() -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    points = torch.cat([c + 0.1 * torch.randn(30, 2, generator=gen) for c in centres])
    found = kmeans(points, 3, generator=gen)
    nearest = torch.cdist(centres, found).min(1).values
    assert (nearest < 0.2).all()


def _blobs(counts: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(len(counts), 8, generator=gen)
    x = torch.cat(
        [m + 0.7 * torch.randn(n, 8, generator=gen) for m, n in zip(means, counts, strict=True)]
    )
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return x, y


def test_tiny_imbalanced_set_learned_to_full_training_accuracy() -> None:
    torch.manual_seed(0)
    counts = [60, 10, 20]
    x, y = _blobs(counts)
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    loss_fn = ClusterCentroidLoss(counts, 8, decay=0.9)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    loss_fn.train()
    first = None
    for step in range(200):
        if step % 50 == 0:
            loss_fn.fit(encoder(x), y)  # periodic re-clustering
        loss = loss_fn(encoder(x), y, step=step)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first
    with torch.no_grad():
        assert (loss_fn.predict(encoder(x)) == y).float().mean() == 1.0


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_baselines_learn_the_tiny_set(method: str) -> None:
    torch.manual_seed(0)
    counts = [60, 10, 20]
    x, y = _blobs(counts)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    loss_fn = classification_loss(method, counts)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() == 1.0


def test_unknown_method_is_refused() -> None:
    with pytest.raises(TrainingError, match="unknown loss method 'hinge'"):
        classification_loss("hinge", [3, 3])
