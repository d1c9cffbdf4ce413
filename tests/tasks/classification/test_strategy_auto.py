import pytest

from sft.tasks.classification.tools.strategy_auto import choose_strategy


@pytest.mark.parametrize("n_train,n_classes,scores,expected", [
    (100_000, 10, None, "full"),                  # 10k per class
    (10_000, 10, {"logme": 2.0}, "full"),         # 1000 per class: full whatever the features
    (200, 10, None, "linear-probe"),              # 20 per class
    (2_000, 10, None, "two-stage"),               # 200 per class, transferability unknown
    (2_000, 10, {"logme": 0.8}, "linear-probe"),  # good features, little data
    (2_000, 10, {"logme": 0.2}, "two-stage"),
    (5_000, 10, {"logme": 0.8}, "two-stage"),     # good features but 500 per class
    (5_000, 10, {"logme": 0.0}, "full"),          # features transfer poorly, data enough to relearn them
    (400, 10, {"logme": 0.0}, "linear-probe"),    # poor features but 40 per class: still too few
    (2_000, 10, {"hscore": 9.0}, "two-stage"),    # other scores are not used
])
def test_rule(n_train, n_classes, scores, expected):
    name, reason = choose_strategy(n_train, n_classes, scores)
    assert name == expected, reason
    assert reason and "\n" not in reason and f"{n_train / n_classes:.0f}" in reason
    if scores and "logme" in scores:
        assert f"{scores['logme']:.3f}" in reason or name == "full" and n_train / n_classes >= 1000


def test_bad_sizes():
    with pytest.raises(ValueError):
        choose_strategy(0, 10, None)
