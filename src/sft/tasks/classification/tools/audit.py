"""Find what is wrong with a labelled dataset before training on it.

Bad labels, duplicates, train/test leakage and outliers silently cap accuracy or inflate test
scores; finding them takes only cached backbone features, a linear probe and cleanlab, so it is
cheap enough to run before every fine-tune. The outputs (CSV, JSON, HTML) are for a human to
review; a hand-edited suspects.csv then feeds back as an exclude list or a relabel map.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sft.core.atomic import atomic_write_json
from sft.core.html import esc
from sft.core.rundir import check_replaceable, mark
from sft.data.samples import Samples
from sft.errors import UserError
from sft.recipe import Recipe
from sft.tasks.classification.tools.rank import backbone_features, parse_candidate
from sft.tasks.label_audit import audit_features, write_suspects

KINDS = ("label_issue", "leak", "exact_duplicate", "near_duplicate", "outlier")  # ranking order


@dataclass
class Suspect:
    split: str            # "train" | "val" | "test"
    sample: str           # Samples.ids[i]
    index: int            # position in that split
    kind: str             # one of KINDS
    given_label: str
    suggested_label: str  # label issues: argmax of out-of-fold probs; else the given label
    score: float          # higher = more suspicious, comparable within a kind
    detail: str = ""


@dataclass
class AuditReport:
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> count
    imbalance_ratio: float             # train: largest class count / smallest non-zero
    suspects: list[Suspect]            # ranked: label issues first by score, then the others
    oof_accuracy: float                # out-of-fold linear probe accuracy on train: how separable the features are
    backbones: list[str] = field(default_factory=list)  # whose features were probed, when known


def audit(samples: dict[str, Samples], features: dict[str, np.ndarray], *, folds: int = 5, seed: int = 0,
          near_duplicate_cosine: float = 0.995, neighbours: int = 30,
          more_features: list[dict[str, np.ndarray]] | tuple = ()) -> AuditReport:
    """Run every check; `samples` and `features` share keys, "train" required, "val"/"test" optional.

    `neighbours`: k of the nearest-neighbour vote blended into the probe (0 = linear probe alone).
    `more_features`: features of the same samples from other backbones, same keys; each adds its own probe to
    the label-issue probabilities (averaged): backbones err differently, so the vote finds more flips with fewer
    false alarms than one backbone (README, "Imbalanced and noisy data"). Duplicates, leaks and outliers use
    `features` only.
    """
    if "train" not in samples or set(samples) != set(features):
        raise ValueError(f"audit: need matching keys with 'train'; got {list(samples)} and {list(features)}")
    for extra in more_features:
        if set(extra) != set(features) or any(len(extra[s]) != len(features[s]) for s in features):
            raise ValueError("audit: each of more_features needs the keys and row counts of features")
    order = ["train", "val", "test", *samples]  # leaks are reported on the copy in the earlier split
    splits = sorted(samples, key=order.index)
    classes = list(samples["train"].classes)
    for s in splits:
        if list(samples[s].classes) != classes:
            raise UserError(f"audit: split {s!r} has classes {samples[s].classes}, train has {classes}")
        if len(features[s]) != len(samples[s]):
            raise ValueError(f"audit: {len(features[s])} feature rows for {len(samples[s])} {s} samples")
    counts = {s: {c: int(n) for c, n in zip(classes, np.bincount(samples[s].labels, minlength=len(classes)))}
              for s in splits}
    nonzero = [n for n in counts["train"].values() if n]
    imbalance = max(nonzero) / min(nonzero) if nonzero else math.nan

    def suspect(split, i, kind, score, detail="", suggested=None):
        s = samples[split]
        given = classes[s.labels[i]]
        return Suspect(split, s.ids[i], int(i), kind, given, suggested or given, float(score), detail)

    probe = [s for s in ("train", "val") if s in samples]
    issues, oof_accuracy = _label_issues([samples[s].labels for s in probe],
                                         [[f[s] for s in probe] for f in (features, *more_features)],
                                         folds, seed, neighbours)
    where = [(s, i) for s in probe for i in range(len(samples[s]))]  # pooled row -> its own split
    label_suspects = [suspect(*where[j], "label_issue", score, "out-of-fold probe disagrees", classes[suggested])
                      for j, score, suggested in issues]
    others = _duplicates(samples, features, splits, near_duplicate_cosine, suspect)
    others += [suspect("train", i, "outlier", score, "far from its nearest neighbours in feature space")
               for i, score in _outliers(features["train"])]
    label_suspects.sort(key=lambda x: -x.score)
    others.sort(key=lambda x: (KINDS.index(x.kind), -x.score))
    return AuditReport(classes, counts, float(imbalance), label_suspects + others, oof_accuracy)


def _label_issues(labels: list[np.ndarray], views: list[list[np.ndarray]], folds: int, seed: int,
                  neighbours: int = 30):
    """[(pooled row, 1 - P(given label), suggested class)] and the train out-of-fold linear-probe accuracy.

    Per feature set (`views`, one list of per-split arrays per backbone), the out-of-fold probabilities of a
    linear probe and of a k-nearest-neighbour vote, averaged. Out-of-fold matters: a probe scored on its own
    training rows memorises the bad labels. Then cleanlab estimates how many labels are wrong (the off-diagonal
    of the confident joint, `cleanlab.count.num_label_issues`) and flags that many samples, those whose given
    label gets the lowest probability (filter_by="low_self_confidence").

    Why (bench/noisy_labels.py; docs/benchmarks.md): the estimated count ranked by self-confidence flags about as
    many samples as there are flips, where cleanlab's mask filters flag far more; the kNN vote errs differently from
    the linear probe, so an equal blend (no weight tuned) ranks the flips better.
    """
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.concatenate(labels)
    present, y = np.unique(y, return_inverse=True)  # cleanlab wants labels 0..K-1, all present
    per_class = np.bincount(y)
    if len(present) < 2 or len(y) < 4:
        return [], math.nan
    cv = StratifiedKFold(max(2, min(folds, int(per_class.min()))), shuffle=True, random_state=seed)
    probs, accuracy, n_train = np.zeros((len(y), len(present))), math.nan, len(labels[0])
    for v, feats in enumerate(views):
        x = np.concatenate(feats).astype(np.float32)
        # strongly regularised: an over-confident probe on high-dimensional features makes cleanlab flag many
        # clean samples (C=1 flagged about 3 samples per real flip; C=0.003 has the lowest out-of-fold log-loss)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.003, max_iter=1000))
        with warnings.catch_warnings():  # a class smaller than the folds is warned about, and still handled
            warnings.simplefilter("ignore")
            linear = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
        if v == 0 and n_train:
            accuracy = float((linear[:n_train].argmax(1) == y[:n_train]).mean())
        k = min(neighbours, len(y) - 1)
        probs += (linear + _knn_vote(x, y, len(present), k)) / 2 if k > 0 else linear
    probs /= len(views)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = find_label_issues(y, probs, filter_by="low_self_confidence")
    pred = probs.argmax(1)
    given = probs[np.arange(len(y)), y]
    return [(int(j), 1.0 - float(given[j]), int(present[pred[j]])) for j in np.flatnonzero(mask)], accuracy


def _knn_vote(x: np.ndarray, y: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """Leave-one-out class shares among each row's k most cosine-similar other rows, smoothed (add one half),
    in blocks of rows so memory stays O(block * N)."""
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    votes = np.zeros((len(y), num_classes))
    block = max(1, (1 << 24) // len(z))
    for a in range(0, len(z), block):
        sim = z[a:a + block] @ z.T
        sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf  # not its own neighbour
        near = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        np.add.at(votes, (np.repeat(np.arange(a, a + len(sim)), k), y[near].ravel()), 1.0)
    return (votes + 0.5) / (k + 0.5 * num_classes)


def _content_hash(s: Samples, i: int) -> str:
    if s.kind == "text":
        return hashlib.sha1(s.text(i).encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(s.items, np.ndarray):
        a = np.ascontiguousarray(s.items[i])
        return hashlib.sha1(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()
    try:
        return hashlib.sha1(Path(s.items[i]).read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"{s.items[i]}: cannot read image file ({e.strerror})") from None


def _best_match(q: np.ndarray, ref: np.ndarray, earlier_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row of q, the most cosine-similar row of ref (inputs L2-normalised), in blocks of rows
    so memory stays O(block * N) instead of O(N^2). `earlier_only`: q is ref, match only j < i."""
    best, arg = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    if not len(ref):
        return best, arg
    block = max(1, (1 << 24) // len(ref))
    for a in range(0, len(q), block):
        sim = q[a:a + block] @ ref.T
        if earlier_only:
            rows = np.arange(a, a + len(sim))[:, None]
            sim[np.arange(len(ref))[None, :] >= rows] = -np.inf
        arg[a:a + len(sim)] = sim.argmax(1)
        best[a:a + len(sim)] = sim[np.arange(len(sim)), arg[a:a + len(sim)]]
    return best, arg


def _duplicates(samples, features, splits, threshold, suspect) -> list[Suspect]:
    """Exact (same pixels, file bytes or text) and near (cosine) duplicates, one suspect per sample and kind.

    Within a split the later copy is reported (excluding it keeps one); across splits the copy in the
    earlier split (train before val before test), so excluding it leaves the evaluation sets intact.
    """
    out, exact = [], set()
    hashes = {s: [_content_hash(samples[s], i) for i in range(len(samples[s]))] for s in splits}
    first = {s: {h: i for i, h in reversed(list(enumerate(hashes[s])))} for s in splits}  # hash -> first index
    for k, s in enumerate(splits):
        for i, h in enumerate(hashes[s]):
            if first[s][h] < i:
                j = first[s][h]
                out.append(suspect(s, i, "exact_duplicate", 1.0, f"identical to {s}/{samples[s].ids[j]}"))
                exact.add((s, i, "exact_duplicate"))
            other = next((t for t in splits[k + 1:] if h in first[t]), None)
            if other:
                j = first[other][h]
                out.append(suspect(s, i, "leak", 1.0, f"identical to {other}/{samples[other].ids[j]}"))
                exact.add((s, i, "leak"))

    norm = {s: np.asarray(features[s], np.float32) for s in splits}
    norm = {s: f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for s, f in norm.items()}
    for k, s in enumerate(splits):
        best, arg = _best_match(norm[s], norm[s], earlier_only=True)
        for i in np.flatnonzero(best >= threshold):
            if (s, i, "exact_duplicate") not in exact:
                out.append(suspect(s, i, "near_duplicate", best[i],
                                   f"near duplicate of {s}/{samples[s].ids[arg[i]]} (cosine {best[i]:.5f})"))
        for t in splits[k + 1:]:
            best, arg = _best_match(norm[s], norm[t], earlier_only=False)
            for i in np.flatnonzero(best >= threshold):
                if (s, i, "leak") not in exact:
                    exact.add((s, i, "leak"))  # one leak per sample, the first later split wins
                    out.append(suspect(s, i, "leak", best[i],
                                       f"near duplicate of {t}/{samples[t].ids[arg[i]]} (cosine {best[i]:.5f})"))
    return out


def _outliers(feats: np.ndarray, fraction: float = 0.01) -> list[tuple[int, float]]:
    """The ~1 % of train least like their nearest neighbours: often junk, or from another distribution."""
    from cleanlab.outlier import OutOfDistribution

    if len(feats) < 3:
        return []
    ood = OutOfDistribution(params={"k": min(10, len(feats) - 1)})
    score = 1.0 - ood.fit_score(features=np.asarray(feats, np.float32), verbose=False)
    top = np.argsort(-score, kind="stable")[:max(1, round(fraction * len(feats)))]
    return [(int(i), float(score[i])) for i in top]


def _num(x: float):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_audit(report: AuditReport, samples: dict[str, Samples], out_dir: Path, *, thumbnails: int = 48) -> None:
    """audit.json, suspects.csv and a self-contained audit.html (thumbnails, or text snippets for text samples,
    inline, so it can be mailed)."""
    out_dir = Path(out_dir)
    rows = [asdict(s) for s in report.suspects]
    atomic_write_json(out_dir / "audit.json", {
        "classes": report.classes, "counts": report.counts, "imbalance_ratio": _num(report.imbalance_ratio),
        "oof_accuracy": _num(report.oof_accuracy), "backbones": report.backbones, "suspects": rows})
    write_suspects(out_dir, rows, samples, _heading(report), thumbnails=thumbnails)


def _heading(report: AuditReport) -> str:
    """audit.html's part above the suspects: class counts, imbalance, probe accuracy, suspects per kind."""
    e = esc
    splits = list(report.counts)
    head = "".join(f"<th>{e(s)}</th>" for s in splits)
    body = "".join(f"<tr><td>{e(c)}</td>" + "".join(f"<td>{report.counts[s][c]}</td>" for s in splits) + "</tr>"
                   for c in report.classes)
    tally = {k: sum(s.kind == k for s in report.suspects) for k in KINDS}
    probed = f" (features of {e(' + '.join(report.backbones))})" if report.backbones else ""
    fmt = lambda x: "n/a" if not math.isfinite(x) else f"{x:.3g}"  # noqa: E731
    return f"""
<h2>Class counts</h2><table><tr><th>class</th>{head}</tr>{body}</table>
<p>Train imbalance ratio (largest / smallest class): <b>{fmt(report.imbalance_ratio)}</b>.
Out-of-fold linear-probe accuracy on train: <b>{fmt(report.oof_accuracy)}</b>{probed}.</p>
<p>Suspects: {", ".join(f"{n} {e(k)}" for k, n in tally.items())}. Full list in suspects.csv.</p>"""


def audit_data(task, recipe: Recipe, out_dir: str | Path, *, overwrite: bool = False, also: list[str] | tuple = ()):
    """`sft audit`: the recipe's data seen through its backbone's (cached) features: class counts, duplicates,
    leakage, label issues and outliers, written to out_dir as audit.json, suspects.csv and audit.html. `also`:
    more backbones (`backbone` or `backbone@weights`) whose probes join the label-issue vote."""
    out = Path(out_dir)
    check_replaceable(out, "audit", overwrite=overwrite)
    samples, arrays, p = audit_features(task, recipe)
    more = []
    for text in also:
        features, _ = backbone_features(task, p.recipe, *parse_candidate(text, p.recipe), samples)
        more.append({name: x.numpy() for name, x in features.items()})
    report = audit(samples, arrays, seed=recipe.seed, more_features=more)
    report.backbones = [f"{p.recipe.model.backbone}@{p.recipe.model.weights}", *also]
    write_audit(report, samples, out)
    mark(out, "audit")
    return report
