"""`strategy: auto`: linear probe, two-stage or full fine-tuning, chosen from the data size and, when known, how well
the backbone's frozen features already suit the data (its LogME, from `sft rank`).

The rule, in order (n = training samples per class):

1. n >= 1000: full. With that much data every layer can be updated without overfitting, and it beats a frozen
   backbone whenever the pretraining domain differs (Kornblith et al. 2019, "Do Better ImageNet Models Transfer
   Better?": fine-tuning wins over the linear probe on every dataset of that size).
2. LogME >= 0.5 and n < 300: linear probe. The frozen features already separate the classes; with little data,
   updating the backbone mostly adds variance (and the probe trains on cached features, in seconds).
3. LogME < 0.1 and n >= 300: full. The features transfer poorly (a random backbone scores about 0 on
   Fashion-MNIST, ImageNet ones 0.2-0.25 at 64 px), and there is data enough to relearn them.
4. n < 50: linear probe. Too few samples per class to move millions of weights safely.
5. Otherwise: two-stage. Head first on cached features, then everything with discriminative learning rates
   (fastai's `fine_tune` default): the safe middle ground.

LogME here is `sft.transfer.logme` (mean per-sample evidence over the one-hot classes, nats), as `sft rank`
reports it; its scale depends a little on the sample size, so the thresholds are coarse on purpose.
"""

from __future__ import annotations

MANY_PER_CLASS = 1000
FEW_PER_CLASS = 50
PROBE_MAX_PER_CLASS = 300
HIGH_LOGME = 0.5
LOW_LOGME = 0.1


def choose_strategy(n_train: int, n_classes: int, scores: dict | None = None) -> tuple[str, str]:
    """(strategy name, one-sentence reason) by the rule in this module's docstring."""
    if n_train < 1 or n_classes < 1:
        raise ValueError(f"choose_strategy: need training samples and classes, got {n_train} and {n_classes}")
    per_class = n_train / n_classes
    n = f"{per_class:.0f} training samples per class"
    logme = (scores or {}).get("logme")
    if per_class >= MANY_PER_CLASS:
        return "full", f"{n} (>= {MANY_PER_CLASS}) is enough data to fine-tune every layer"
    if logme is not None:
        if logme >= HIGH_LOGME and per_class < PROBE_MAX_PER_CLASS:
            return "linear-probe", (f"the backbone's features already fit the data (LogME {logme:.3f} >= "
                                    f"{HIGH_LOGME}) and {n} (< {PROBE_MAX_PER_CLASS}) is too little to gain from "
                                    f"updating it")
        if logme < LOW_LOGME and per_class >= PROBE_MAX_PER_CLASS:
            return "full", (f"the backbone's features transfer poorly (LogME {logme:.3f} < {LOW_LOGME}) and {n} "
                            f"(>= {PROBE_MAX_PER_CLASS}) is enough to relearn them")
    known = f" and LogME {logme:.3f}" if logme is not None else ""
    if per_class < FEW_PER_CLASS:
        return "linear-probe", (f"{n} (< {FEW_PER_CLASS}){known} is too few to update the backbone without "
                                f"overfitting")
    return "two-stage", (f"{n}{known}: between a linear probe and full fine-tuning, so the head trains first, "
                         f"then every layer with discriminative learning rates")
