"""Train/validation/test splits from the recipe's data section: read, corrected (exclude/relabel lists), limited,
and a seeded validation share held out of train when none is given (stratified by class where samples have one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sft.core.csvfile import read_rows
from sft.data.samples import Samples, stratified_subset
from sft.errors import UserError
from sft.recipe import Data, Source


@dataclass
class Splits:
    train: Samples
    val: Samples
    test: Samples | None

    @property
    def classes(self) -> list[str]:
        return self.train.classes


Reader = Callable[[Source, "list[str] | None"], Samples]  # (source, class names or None) -> its samples


def load_splits(cfg: Data, seed: int, read: Reader, classes: list[str] | None = None, exclude: str | None = None,
                relabel: str | None = None) -> Splits:
    """Read train/val/test with `read` (given `classes`, the recipe's class names if it has them); drop the
    `exclude`d samples and apply the `relabel` map (CSV files); limit the splits; hold out a stratified validation
    share of train when no val set is given."""
    train = read(cfg.train, classes)
    classes = classes or train.classes
    val = read(cfg.val, classes) if cfg.val is not None else None
    if exclude or relabel:
        excluded, relabels = read_corrections(exclude, relabel, [train] + ([val] if val else []))
        train = curate(train, excluded, relabels, "data.train")
        val = curate(val, excluded, relabels, "data.val") if val else None
    if cfg.train_limit:  # before the split, so the held-out validation share comes out of the limited set
        train = train.subset(stratified_subset(train.strata(), cfg.train_limit, seed))
    if val is None:
        counts = np.bincount(train.strata(), minlength=len(train.classes))
        rare = [c for c, n in zip(train.classes, counts) if n == 1] if train.labels is not None else []
        if rare:
            raise UserError(f"data.train: class(es) {rare[:10]} have a single sample, too few to hold out a "
                            f"validation share; add samples, give data.val, or drop the class")
        train_idx, val_idx = train.holdout(cfg.val_fraction, seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    test = read(cfg.test, classes) if cfg.test is not None else None
    for name, split in (("val", val), ("test", test)):
        if split is not None and split.classes != train.classes:
            extra = sorted(set(split.classes) - set(train.classes))
            missing = sorted(set(train.classes) - set(split.classes))
            raise UserError(f"data.{name}: classes differ from data.train (only in {name}: {extra}; "
                            f"only in train: {missing}); set data.classes to fix the list")
    if cfg.val_limit:
        val = val.subset(stratified_subset(val.strata(), cfg.val_limit, seed))
    if test is not None and cfg.test_limit:
        test = test.subset(stratified_subset(test.strata(), cfg.test_limit, seed))
    if len(train) == 0 or len(val) == 0:
        raise UserError("data: the training or validation split is empty")
    return Splits(train, val, test)


def read_corrections(exclude: str | None, relabel: str | None,
                     sources: list[Samples]) -> tuple[set[str], dict[str, str]]:
    """data.exclude and data.relabel (e.g. from `sft audit`); every listed sample must exist in train or val."""
    excluded = set(read_sample_list(Path(exclude))) if exclude else set()
    relabels = read_relabels(Path(relabel)) if relabel else {}
    known = {sample for source in sources for sample in source.ids}
    for path, listed in ((exclude, excluded), (relabel, relabels)):
        unknown = sorted(set(listed) - known)
        if unknown:
            raise UserError(f"{path}: {len(unknown)} of {len(listed)} listed samples are not in data.train or "
                            f"data.val, e.g. {unknown[:3]}")
    classes = sources[0].classes
    wrong = sorted({label for label in relabels.values() if label not in classes})
    if wrong:
        raise UserError(f"{relabel}: labels {wrong} are not classes of the data ({classes})")
    return excluded, relabels


def curate(samples: Samples, excluded: set[str], relabels: dict[str, str], name: str) -> Samples:
    """The samples without the excluded ones and with corrected labels (the test split is never edited)."""
    if not (excluded or relabels):
        return samples
    labels = samples.labels.copy()
    for i, sample in enumerate(samples.ids):
        if sample in relabels:
            labels[i] = samples.classes.index(relabels[sample])
    keep = np.array([i for i, sample in enumerate(samples.ids) if sample not in excluded], dtype=np.int64)
    curated = Samples(samples.items, labels, samples.classes, samples.ids, samples.kind).subset(keep)
    emptied = [c for i, c in enumerate(curated.classes)
               if (samples.labels == i).any() and not (curated.labels == i).any()]
    if emptied:
        raise UserError(f"{name}: no samples of class(es) {emptied} remain after data.exclude")
    return curated


def read_sample_list(path: Path) -> list[str]:
    """The `sample` column of a (hand-edited) suspects.csv: samples to exclude, each once, in file order."""
    _, rows = read_rows(Path(path), ["sample"])
    return list(dict.fromkeys(s for _, r in rows if (s := (r["sample"] or "").strip())))


def read_relabels(path: Path) -> dict[str, str]:
    """sample -> new label from `sample` + `label` (or `suggested_label`) columns; empty labels are skipped.

    With `suggested_label` and a `kind` column (an unedited suspects.csv) only label issues count, since
    the other kinds just repeat the given label; two different labels for one sample are an error.
    """
    header, rows = read_rows(Path(path), ["sample", ("label", "suggested_label")])
    col = "label" if "label" in header else "suggested_label"
    out = {}
    for line, r in rows:
        sample, label = (r["sample"] or "").strip(), (r[col] or "").strip()
        if not sample or not label or (col == "suggested_label" and (r.get("kind") or "label_issue") != "label_issue"):
            continue
        if out.get(sample, label) != label:
            raise UserError(f"{path} line {line}: {sample!r} relabelled both {out[sample]!r} and {label!r}")
        out[sample] = label
    return out


def fill_splits(data: dict, splits_of: Callable[[str, str], list[str]]) -> dict:
    """The raw data section with each source that holds several splits (`splits_of(path, format)` names them: a
    data.yaml, a VOC root, ...) read at its key's split, and data.train's filling the absent val and test keys; a
    source with its own `split`, and a key given (even as null), are kept."""
    data = dict(data)
    for name in ("train", "val", "test"):
        source = {"path": str(data[name])} if isinstance(data.get(name), (str, Path)) else data.get(name)
        if not isinstance(source, dict) or not isinstance(source.get("path"), str) or "split" in source:
            continue
        format = source.get("format", "auto")
        splits = splits_of(source["path"], format)
        if name not in splits:
            continue
        data[name] = {**source, "split": name}
        for other in ("val", "test") if name == "train" else ():
            if other not in data and other in splits:
                data[other] = {"path": source["path"], "format": format, "split": other}
    return data
