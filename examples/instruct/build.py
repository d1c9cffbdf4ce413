"""Build two real instruction-tuning sets offline, as JSONL conversations `sft train` reads (task: causal-lm).

fortunes: the 10 topics and the seeded 75/25 split of examples/fortunes (Debian `fortunes`): "Which topic is this
quote from? Answer with one word from: ..." -> the topic, for quotes of at most MAX_CHARS characters (a conversation
then fits the example's data.max_length of 256 tokens). Answers are single labels, so `sft eval` scores exact match
and the share of answers inside the label set.

chatterbot: the question -> answer conversations of the `chatterbot-corpus` package (pip install --no-deps
chatterbot-corpus; 21 English topics, YAML), multi-turn where the corpus has more than two lines; a seeded 90/10
split.

    python examples/instruct/build.py                  # both, into examples/instruct/data/{fortunes,chatterbot}
    python examples/instruct/build.py --only fortunes --out /tmp/instruct
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import sys
from pathlib import Path

from sft.core.atomic import atomic_write


def _fortunes_builder():
    """examples/fortunes/build.py, loaded under its own name (this file is also called build.py)."""
    spec = importlib.util.spec_from_file_location("fortunes_build", Path(__file__).parents[1] / "fortunes" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FORTUNES = _fortunes_builder()
TOPICS = _FORTUNES.TOPICS

QUESTION = "Which topic is this quote from? Answer with one word from: {topics}.\n\nQuote: {quote}"
MAX_CHARS = 300


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def fortunes(out: Path, topics: str = TOPICS, seed: int = 0) -> dict[str, int]:
    """out/train.jsonl, out/test.jsonl (prompt, completion) from the text-classification split."""
    _FORTUNES.build(topics.split(","), out / "csv", seed=seed)
    listed = ", ".join(topics.split(","))
    counts = {}
    for split in ("train", "test"):
        with open(out / "csv" / f"{split}.csv", newline="", encoding="utf-8") as f:
            rows = [{"prompt": QUESTION.format(topics=listed, quote=r["text"]), "completion": r["label"]}
                    for r in csv.DictReader(f) if len(r["text"]) <= MAX_CHARS]
        write_jsonl(out / f"{split}.jsonl", rows)
        counts[split] = len(rows)
    return counts


def chatterbot(out: Path, seed: int = 0, test_fraction: float = 0.1) -> dict[str, int]:
    """out/train.jsonl, out/test.jsonl (messages) from every English corpus file."""
    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None:
        sys.exit("error: chatterbot-corpus is not installed: pip install --no-deps chatterbot-corpus")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "english"
    chats = []
    for file in sorted(folder.glob("*.yml")):
        for lines in yaml.safe_load(file.read_text(encoding="utf-8")).get("conversations", []):
            lines = [str(x).strip() for x in lines if str(x).strip()]
            if len(lines) % 2:
                lines = lines[:-1]  # a conversation ends with an answer
            if lines:
                chats.append({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                                           for i, text in enumerate(lines)], "topic": file.stem})
    random.Random(seed).shuffle(chats)
    n_test = round(len(chats) * test_fraction)
    write_jsonl(out / "test.jsonl", chats[:n_test])
    write_jsonl(out / "train.jsonl", chats[n_test:])
    return {"train": len(chats) - n_test, "test": n_test}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--only", choices=["fortunes", "chatterbot"])
    args = parser.parse_args()
    for name, make in (("fortunes", fortunes), ("chatterbot", chatterbot)):
        if args.only in (None, name):
            print(f"{name}: {make(args.out / name)} conversations -> {args.out / name}")
