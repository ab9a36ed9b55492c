"""The "Teach it a new sound" measurement (BENCHMARKS.md): folders a user might bring, and a
held-out test on real background that the shipped background bank never saw.

    python bench/teach_glass.py --out /tmp/teach

writes, from the corpus beside the checkout (symbolic links, nothing copied):

- ``OUT/glass40/glass_break/`` 40 glass-break clips and ``OUT/glass40/background/`` 80 background
  clips (60 Tux Paint speech, 20 Speech Commands noise): the issue's "40 glass + 80 background";
- ``OUT/glass40nobg/glass_break/`` the same 40 clips and no background (the shipped bank serves);
- ``OUT/glass_eval.csv``: 60 other glass clips, 100 UrbanSound8K background clips and the 38
  household-noise recordings of edge_sed_extra_v1 (none of them in the bank), for
  ``edge-detect eval stream``.

Then, for each folder F::

    edge-detect train --data OUT/F --out OUT/run_F --time-limit-s 240
    edge-detect eval stream --model OUT/run_F/model.onnx --manifest OUT/glass_eval.csv

The glass set's licence is not stated: it serves this local measurement only, never a model.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(name: str) -> list[dict[str, str]]:
    with open(CORPUS / name / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _link(rows: list[dict[str, str]], corpus: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    targets = []
    for row in rows:
        source = CORPUS / corpus / row["path"]
        target = folder / f"{row['group'].replace('/', '_')}_{Path(row['path']).name}"
        if not target.exists():
            os.symlink(source, target)
        targets.append(source)
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    real, extra = _rows("edge_sed_real_v1"), _rows("edge_sed_extra_v1")
    rng = random.Random(0)
    glass = [r for r in real if r["label"] == "glass_break"]
    speech = [r for r in real if r["label"] == "background" and r["license"].startswith("GPL")]
    noise = [r for r in real if r["label"] == "background" and r["license"].startswith("CC BY 4")]
    taught = rng.sample(glass, 40)
    background = rng.sample(speech, 60) + rng.sample(noise, 20)
    _link(taught, "edge_sed_real_v1", args.out / "glass40" / "glass_break")
    _link(background, "edge_sed_real_v1", args.out / "glass40" / "background")
    _link(taught, "edge_sed_real_v1", args.out / "glass40nobg" / "glass_break")
    used = {r["path"] for r in taught}
    rng = random.Random(1)
    unseen = rng.sample([r for r in glass if r["path"] not in used], 60)
    urban = [r for r in real if r["label"] == "background" and "UrbanSound8K" in r["license"]]
    household = [r for r in extra if r["source"].startswith("github:Timgrau")]
    with open(args.out / "glass_eval.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for row in unseen:
            writer.writerow([CORPUS / "edge_sed_real_v1" / row["path"], "glass_break"])
        for row in rng.sample(urban, 100):
            writer.writerow([CORPUS / "edge_sed_real_v1" / row["path"], "background"])
        for row in household:
            writer.writerow([CORPUS / "edge_sed_extra_v1" / row["path"], "background"])
    print(f"wrote {args.out}/glass40, glass40nobg and glass_eval.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
