"""Build ``train/assets/background_bank.npz``: log-mel features of licence-clean background.

    python train/assets/make_background_bank.py [--corpus ../shared/data] [--minutes 8]

Only rows of ``edge_sed_real_v1`` and ``edge_sed_extra_v1`` whose licence allows redistribution
and names no restriction are used (never ``NONE STATED``, never non-commercial): speech (GCompris
voices, Tux Paint stamps, Free Spoken Digit Dataset), music (Battle for Wesnoth) and household
noise (Speech Commands ``_background_noise_``). Produced sound effects are left out on purpose:
explosions, glass and animal calls are exactly what a user may want to teach. Whole recordings
(groups) are taken in a seeded order until each kind reaches its share of ``--minutes``; one in
five groups is marked for validation. Features are the default preset's front end, 8-bit
quantised (:func:`train.background_bank.quantise`); the file lists the source of every segment,
and ``BACKGROUND_BANK.md`` beside it the licences and attributions.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from edge_detect.features import log_mel  # noqa: E402
from train.audio_io import read_audio  # noqa: E402
from train.background_bank import BANK_PATH, quantise  # noqa: E402
from train.config import CHECKOUT, load_config  # noqa: E402

# kind -> (corpus, source prefix, licence prefixes allowed, share of the minutes)
KINDS = {
    "household noise": ("edge_sed_real_v1", "Google Speech Commands", ("CC BY 4.0",), 0.35),
    "speech, 43 languages": (
        "edge_sed_extra_v1",
        "GCompris voices",
        ("GPL", "CC BY-SA", "Public"),
        0.3,
    ),
    "speech, read words": ("edge_sed_real_v1", "Debian tuxpaint", ("GPL-2+",), 0.08),
    "speech, digits (8 kHz)": ("edge_sed_extra_v1", "Free Spoken Digit", ("CC BY-SA 4.0",), 0.07),
    "music": ("edge_sed_extra_v1", "Debian wesnoth", ("GPL-2+",), 0.2),
}
VAL_EVERY = 5
"""One group in this many goes to the validation part (the second, seventh, ... of each kind,
so that every kind has one)."""


def main() -> int:
    """Build the bank from the corpus's licence-clean background (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CHECKOUT.parent / "shared" / "data")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BANK_PATH)
    args = parser.parse_args()
    features_config = load_config(CHECKOUT / "train" / "configs" / "default.toml").features
    rng = random.Random(args.seed)
    codes, starts, is_val, sources = [], [0], [], []
    attribution: dict[str, set[str]] = defaultdict(set)
    for kind, (corpus, prefix, licences, share) in KINDS.items():
        with open(args.corpus / corpus / "manifest.csv", newline="", encoding="utf-8") as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if r["label"] == "background"
                and r["source"].startswith(prefix)
                and r["license"].startswith(licences)
            ]
        groups: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in rows:
            groups[row["group"]].append(row)
        order = sorted(groups)
        rng.shuffle(order)
        budget_s, have_s = share * args.minutes * 60.0, 0.0
        for n, group in enumerate(order):
            if have_s >= budget_s:
                break
            for row in sorted(groups[group], key=lambda r: r["path"]):
                if have_s >= budget_s:
                    break
                audio = read_audio(
                    args.corpus / corpus / row["path"], features_config.sample_rate_hz
                )
                feats = log_mel(audio, features_config)
                if len(feats) == 0:
                    continue
                codes.append(quantise(feats))
                starts.append(starts[-1] + len(feats))
                is_val.append(n % VAL_EVERY == 1)  # the second group of each kind, ...
                sources.append(f"{corpus}/{row['path']}")
                attribution[f"{kind}: {row['source']}"].add(row["license"])
                have_s += len(feats) / features_config.frames_per_second
        print(f"{kind}: {have_s / 60:.2f} min", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        features=np.concatenate(codes),
        starts=np.asarray(starts, dtype=np.int64),
        is_val=np.asarray(is_val, dtype=np.uint8),
        sources=np.asarray(sources),
        feature_config=np.asarray(json.dumps(features_config.to_dict())),
    )
    frames = starts[-1]
    print(
        f"wrote {args.out}: {len(sources)} segments, {frames / 6000:.2f} min, "
        f"{sum(is_val)} validation segments, {args.out.stat().st_size / 1e6:.2f} MB",
        file=sys.stderr,
    )
    for source, found in sorted(attribution.items()):
        print(f"{source} | {'; '.join(sorted(found))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
