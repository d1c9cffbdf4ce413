"""Build a labelled text-classification data set from the Debian `fortunes` package (apt-get install fortunes).

Each topic file holds quotes separated by a line `%`; the topic is the label. Quotes filed under two topics are
dropped (their label is ambiguous). The split into train.csv / test.csv is stratified and seeded, so every run and
the benchmark see the same texts.

    python examples/fortunes/build.py                    # the 10-way task of fortunes.yaml, into examples/fortunes/data
    python examples/fortunes/build.py --topics love,food --out /tmp/two-way
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
from collections import Counter
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
TOPICS = "computers,science,politics,food,sports,love,law,medicine,education,pets"


def read_topic(topic: str) -> list[str]:
    path = FORTUNES / topic
    if not path.is_file():
        known = sorted(p.name for p in FORTUNES.iterdir() if not p.suffix) if FORTUNES.is_dir() else []
        sys.exit(f"error: {path} not found (apt-get install fortunes); topics: {', '.join(known) or 'none'}")
    quotes = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    return [q for q in (re.sub(r"\s+", " ", q.replace("%", "")).strip() for q in quotes) if q]


def build(topics: list[str], out: Path, test_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Write out/train.csv and out/test.csv (columns text,label); return the number of texts per topic."""
    by_topic = {t: read_topic(t) for t in topics}
    seen = Counter(q for quotes in by_topic.values() for q in set(quotes))
    rng = random.Random(seed)
    rows: dict[str, list] = {"train": [], "test": []}
    for topic, quotes in by_topic.items():
        quotes = sorted({q for q in quotes if seen[q] == 1})
        rng.shuffle(quotes)
        n_test = round(len(quotes) * test_fraction)
        rows["test"] += [(q, topic) for q in quotes[:n_test]]
        rows["train"] += [(q, topic) for q in quotes[n_test:]]
    out.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        rng.shuffle(items)
        tmp = out / f".{split}.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(items)
        tmp.replace(out / f"{split}.csv")
    return dict(Counter(label for items in rows.values() for _, label in items))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", default=TOPICS, help="comma-separated fortune files, one class each")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = build(args.topics.split(","), args.out, args.test_fraction, args.seed)
    print(f"{sum(counts.values())} texts in {len(counts)} classes -> {args.out}/train.csv, test.csv: {counts}")
