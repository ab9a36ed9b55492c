"""Loss-cost benchmark (BENCHMARKS.md section 4): centroid loss vs exhaustive pairwise loss.

One training step of the loss (forward, backward, centroid update) on a batch of B embeddings:

- ``centroid``: :class:`train.losses.ClusterCentroidLoss` against K running centroids (K from
  the 2:2:1:26 ratio scaled to N examples: K does not grow with N).
- ``pairwise``: the exhaustive alternative, the same softmax but over every one of N embeddings
  kept in a memory bank (pull to same-class bank entries, push from the others), so each step
  costs B x N distances.

Each case runs in a fresh subprocess so that its peak resident memory is its own.

Usage::

    python bench/loss_cost.py                 # N = 1k, 10k, 100k; prints a Markdown table
    python bench/loss_cost.py --repeats 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edge_detect.provenance import provenance, relative_paths

CHECKOUT = Path(__file__).resolve().parent.parent
RATIO = (2, 2, 1, 26)
"""dog : baby : gunshot : background, the skewed ratio of the comparison."""
EMBEDDING_DIM = 32
BATCH = 256
TEMPERATURE = 0.1


def _case(method: str, n: int, repeats: int, seed: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(CHECKOUT))
    from train.losses import ClusterCentroidLoss

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    counts = [max(2, round(n * r / sum(RATIO))) for r in RATIO]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if method == "centroid":
        loss_fn = ClusterCentroidLoss(counts, EMBEDDING_DIM, temperature=TEMPERATURE).train()
        state_floats = sum(t.numel() for t in loss_fn.state_dict().values())
    else:
        bank = F.normalize(torch.randn(n, EMBEDDING_DIM, generator=gen), dim=1)
        bank_y = torch.randint(0, len(RATIO), (n,), generator=gen)
        state_floats = bank.numel() + bank_y.numel()
        cursor = 0
    times = []
    for _ in range(repeats + 1):  # the first step warms up
        emb = torch.randn(BATCH, EMBEDDING_DIM, generator=gen, requires_grad=True)
        y = torch.randint(0, len(RATIO), (BATCH,), generator=gen)
        start = time.perf_counter()
        if method == "centroid":
            loss = loss_fn(emb, y)
        else:
            z = F.normalize(emb, dim=1)
            logits = -(2.0 - 2.0 * z @ bank.T) / TEMPERATURE  # (B, N)
            same = y[:, None] == bank_y[None, :]
            pos = torch.logsumexp(logits.masked_fill(~same, -math.inf), dim=1)
            loss = (torch.logsumexp(logits, dim=1) - pos).mean()
        loss.backward()
        if method == "pairwise":  # the bank is a FIFO of recent embeddings
            with torch.no_grad():
                rows = (torch.arange(BATCH) + cursor) % n
                bank[rows] = F.normalize(emb.detach(), dim=1)
                bank_y[rows] = y
                cursor = (cursor + BATCH) % n
        times.append(time.perf_counter() - start)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024.0
    return {
        "median_ms": 1000.0 * statistics.median(times[1:]),
        "peak_rss_increase_mb": max(0.0, peak_mb),
        "state_mb": state_floats * 4 / 2**20,
        "comparisons_per_embedding": (loss_fn.num_clusters if method == "centroid" else float(n)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--case", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(_case(args.case[0], int(args.case[1]), args.repeats, args.seed)))
        return 0
    results = []
    for n in args.sizes:
        row: dict[str, object] = {"n": n}
        for method in ("centroid", "pairwise"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    method,
                    str(n),
                    "--repeats",
                    str(args.repeats),
                    "--seed",
                    str(args.seed),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            row[method] = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
    print(
        f"| N | K | centroid ms/step | pairwise ms/step | speed-up | centroid state MB | "
        f"pairwise bank MB | pairwise peak RSS increase MB |  (B={BATCH}, E={EMBEDDING_DIM})"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        c, p = row["centroid"], row["pairwise"]
        assert isinstance(c, dict) and isinstance(p, dict)
        print(
            f"| {row['n']:,} | {int(c['comparisons_per_embedding'])} | {c['median_ms']:.3f} | "
            f"{p['median_ms']:.2f} | {p['median_ms'] / c['median_ms']:.0f}x | "
            f"{c['state_mb']:.4f} | {p['state_mb']:.2f} | {p['peak_rss_increase_mb']:.0f} |"
        )
    if args.json:
        record = {"results": results, "provenance": provenance([__file__, *(argv or sys.argv[1:])])}
        args.json.write_text(json.dumps(relative_paths(record), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
