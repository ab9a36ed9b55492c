"""The cluster-centroid loss and the baselines (train/losses.py)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from edge_detect.errors import TrainingError  # noqa: E402
from train.losses import (  # noqa: E402
    BASELINE_METHODS,
    ClusterCentroidLoss,
    class_balanced_weights,
    classification_loss,
    clusters_per_class,
    inverse_frequency_weights,
    kmeans,
)
from train.models import CentroidHead  # noqa: E402


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
    loss.split(first, first_y)
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

    # K = 8 clusters: sums (K, E), counts, owner class and active flag (K,), the split flag
    assert size(small) == size(large) == 8 * 8 + 3 * 8 + 1
    large.train()
    for _ in range(20):  # many batches: nothing is stored per embedding
        large(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    assert size(large) == 8 * 8 + 3 * 8 + 1


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
        if step == 50:  # the split, once the encoder has warmed up on one centroid per class
            loss_fn.split(encoder(x), y)
        elif step % 50 == 0:
            loss_fn.fit(encoder(x), y)  # periodic warm re-fits
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


def test_class_balanced_weights_give_every_class_the_same_total() -> None:
    # a batch dominated by background: 60 background, 3 crying, 5 gunshot (class 0 absent)
    targets = torch.tensor([3] * 60 + [1] * 3 + [2] * 5)
    weights = class_balanced_weights(targets, 4)
    totals = [float(weights[targets == c].sum()) for c in (1, 2, 3)]
    assert totals == pytest.approx([totals[0]] * 3)
    assert float(weights.mean()) == pytest.approx(1.0)  # the loss keeps its scale
    # and in the loss: one crying embedding counts as much as all the background together
    loss = ClusterCentroidLoss([60, 3, 5, 60], 4, split=False).eval()
    z = torch.randn(len(targets), 4)
    per_class = [float(loss(z[targets == c], targets[targets == c])) for c in (1, 2, 3)]
    assert float(loss(z, targets, weights)) == pytest.approx(sum(per_class) / 3, rel=1e-5)


def test_one_centroid_per_class_until_the_split() -> None:
    x, y = _blobs([60, 10, 20])
    loss = ClusterCentroidLoss([60, 10, 20], 8)  # K = [6, 1, 2]
    assert loss.k_per_class == [6, 1, 2] and int(loss.active.sum()) == 3
    loss.fit(x, y)  # before the split: each class's one centroid is its class mean
    mu, owners = loss.directions()
    assert owners.tolist() == [0, 1, 2]
    for c in range(3):
        mean = F.normalize(F.normalize(x[y == c], dim=1).mean(0), dim=0)
        assert torch.allclose(mu[c], mean, atol=1e-5)
    # inactive clusters take no part: moving them does not change the loss
    before = float(loss.eval()(x, y))
    loss.sums[~loss.active] = torch.randn(int((~loss.active).sum()), 8)
    assert float(loss(x, y)) == pytest.approx(before)
    loss.split(x, y)
    assert bool(loss.is_split) and int(loss.active.sum()) == 9
    assert loss.directions()[1].tolist() == [0] * 6 + [1] + [2] * 2


def test_warm_refit_keeps_assignments_and_running_counts() -> None:
    # classes made of kinds of sound: background of 5 kinds, gunshot of 2, crying of 1
    x, kinds = _blobs([40] * 5 + [40] + [40] * 2, seed=3)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2])[kinds]
    loss = ClusterCentroidLoss([200, 40, 80], 8, decay=0.99)  # K = [5, 1, 2]
    loss.fit(x, y)
    loss.split(x, y)
    before = loss.assign(x, y)
    loss.train()
    gen = torch.Generator().manual_seed(4)
    for _ in range(10):  # batches move the centroids and grow the counts
        pick = torch.randint(0, len(x), (64,), generator=gen)
        loss(x[pick], y[pick])
    totals = [float(loss.counts[loss.cluster_class == c].sum()) for c in range(3)]
    # the encoder moves a little between two re-fits
    moved = x + 0.05 * torch.randn(x.shape, generator=gen)
    loss.fit(moved, y)
    after = loss.assign(moved, y)
    assert float((after == before).float().mean()) >= 0.95  # clusters follow, not reshuffle
    # each class keeps its running count, so later batches move its centroids as fast as before
    assert [float(loss.counts[loss.cluster_class == c].sum()) for c in range(3)] == pytest.approx(
        totals
    )


def test_split_needs_enough_embeddings() -> None:
    loss = ClusterCentroidLoss([60, 10], 4)  # K = [6, 1]
    with pytest.raises(TrainingError, match="cannot split class index 0 into 6 clusters"):
        loss.split(torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]))


def test_centroid_head_starts_as_the_nearest_centroid_rule() -> None:
    x, y = _blobs([60, 10, 20], seed=5)
    loss = ClusterCentroidLoss([60, 10, 20], 8, temperature=0.1)
    loss.fit(x, y)
    loss.split(x, y)
    head = CentroidHead(8, loss.k_per_class)
    head.init_from(*loss.directions(), 0.1)
    assert float(head.log_scale.detach().exp()) == pytest.approx(20.0)  # 2 / T
    assert head.bias.detach().tolist() == pytest.approx([-math.log(6), 0.0, -math.log(2)])
    probe = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        agree = (head(probe).argmax(1) == loss.predict(probe)).float().mean()
    assert float(agree) >= 0.97  # the soft maximum over a class's prototypes ~ nearest centroid
    with pytest.raises(ValueError, match="prototypes per class"):
        CentroidHead(8, [1, 1, 1]).init_from(*loss.directions(), 0.1)


def test_one_vs_rest_loss_is_weighted_binary_cross_entropy_and_learns() -> None:
    counts = [60, 10, 20]
    loss_fn = classification_loss("weighted_ce", counts, output="sigmoid")
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 0, 0])
    weight = inverse_frequency_weights(counts)[targets]
    per_frame = F.binary_cross_entropy_with_logits(
        logits, F.one_hot(targets, 3).float(), reduction="none"
    ).sum(1)
    expected = (per_frame * weight).sum() / weight.sum()
    assert float(loss_fn(logits, targets)) == pytest.approx(float(expected), rel=1e-6)
    torch.manual_seed(0)
    x, y = _blobs(counts)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        assert (torch.sigmoid(net(x)).argmax(1) == y).float().mean() == 1.0
    with pytest.raises(TrainingError, match="no one-vs-rest"):
        classification_loss("focal", counts, output="sigmoid")


def test_tempered_class_weights_keep_the_mean_weight_and_order() -> None:
    counts = [100, 400, 25]
    full = inverse_frequency_weights(counts)
    root = inverse_frequency_weights(counts, 0.5)
    none = inverse_frequency_weights(counts, 0.0)
    n = torch.tensor(counts, dtype=torch.float32)
    for w in (full, root, none):
        assert float((w * n).sum() / n.sum()) == pytest.approx(1.0)  # mean weight per example
    assert torch.allclose(none, torch.ones(3))
    # the rarest class still weighs most, but 4x rather than 16x the most common one
    assert float(root[2] / root[1]) == pytest.approx(4.0) and float(full[2] / full[1]) == 16.0


def test_pooled_events_ask_an_event_to_fire_on_its_best_frames_only() -> None:
    from train.losses import PooledEvents

    # one dog sequence (frames 2-9 labelled dog, 10-11 unscored), one background sequence
    targets = torch.tensor([[3, 3] + [0] * 8 + [-100, -100], [3] * 12])
    logits = torch.full((2, 12, 4), -4.0)
    logits[..., 3] = 4.0  # background everywhere...
    logits[0, 4:7, 0] = 5.0  # ...and the bark fires on three of its frames
    loss3 = PooledEvents(4, 3, top_frames=3)
    loss8 = PooledEvents(4, 3, top_frames=8)
    assert float(loss3(logits, targets)) < 0.1  # three confident frames are enough
    assert float(loss8(logits, targets)) > 0.5  # asking all eight is not what a clip says
    # the quiet dog frames are not told to be dog, nor to be "not background"
    quiet = logits.clone()
    quiet[0, 2:4, 0] = -9.0
    quiet[0, 2:4, 3] = 9.0
    assert float(loss3(quiet, targets)) == pytest.approx(float(loss3(logits, targets)), abs=1e-6)
    # but background frames that fire are (and the hardest of them count extra)
    noisy = logits.clone()
    noisy[1, 5, 0] = 6.0
    hard = PooledEvents(4, 3, top_frames=3, hard_weight=1.0, hard_fraction=0.05)
    assert float(loss3(noisy, targets)) > float(loss3(logits, targets)) + 0.2
    assert float(hard(noisy, targets)) > float(loss3(noisy, targets)) + 1.0
