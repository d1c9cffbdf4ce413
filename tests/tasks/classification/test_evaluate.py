"""Scores, the classification Scorer: metrics accumulated batch by batch (score_batches) agree with a brute-force
computation on all logits at once."""

import numpy as np
import pytest
import torch
import torchmetrics.functional as tmf
from sklearn.metrics import precision_recall_fscore_support
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from sft.errors import UserError
from sft.tasks.base import default_eval_dir, score_batches
from sft.tasks.classification.metrics import Scores, TopLosses
from sft.tasks.classification.serving import predict_top_k
from sft.tasks.classification.task import check_classes


class Lookup(nn.Module):
    """A 'model' whose logits are given: input i -> row i of a fixed table (so every metric is known exactly)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)  # a parameter: score_batches runs on its device

    def forward(self, x):
        ids = x["ids"] if isinstance(x, dict) else x
        return self.table[ids]


def evaluate(model, dataset, num_classes, *, batch_size=128, collate_fn=None, **options):
    return score_batches(model, dataset, Scores(num_classes, **options), batch_size=batch_size, collate_fn=collate_fn)


class DictDataset(Dataset):
    """Yields ({"ids": i}, label), like a tokenized-text dataset yields dicts of tensors."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"ids": torch.tensor(i)}, int(self.labels[i])


@pytest.fixture
def table():
    g = torch.Generator().manual_seed(0)
    n, c = 203, 6
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) * 3
    logits[torch.arange(n), labels] += 2.0  # better than chance, not perfect
    return logits, labels


def test_top_losses_heap_keeps_exactly_the_top_n(table):
    logits, labels = table
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    heap = TopLosses(9)
    for start in range(0, len(labels), 17):  # batches of 17, the last one shorter
        sl = slice(start, start + 17)
        heap.update(losses[sl], labels[sl], logits[sl].softmax(-1), start)
    assert len(heap.heap) == 9
    got = heap.items()
    expected = sorted(range(len(labels)), key=lambda i: (-losses[i].item(), i))[:9]
    assert [r["index"] for r in got] == expected
    probs = logits.softmax(-1)
    for row in got:
        i = row["index"]
        assert row["loss"] == pytest.approx(losses[i].item(), abs=1e-6)
        assert row["pred"] == int(probs[i].argmax()) and row["label"] == int(labels[i])
        assert row["label_prob"] == pytest.approx(probs[i, labels[i]].item(), abs=1e-6)


def test_scores_match_brute_force(table):
    logits, labels = table
    n, c = logits.shape
    result = evaluate(Lookup(logits), TensorDataset(torch.arange(n), labels), c, batch_size=32, top_losses=5,
                      temperature=2.0)
    cm = np.array(result["confusion_matrix"])
    assert cm.sum() == n == result["samples"] and cm.trace() == round(result["accuracy"] * n)
    assert result["support"] == np.bincount(labels.numpy(), minlength=c).tolist()
    p, r, f, s = precision_recall_fscore_support(labels, logits.argmax(-1), labels=range(c), zero_division=0)
    np.testing.assert_allclose(result["per_class_precision"], p, atol=1e-6)
    np.testing.assert_allclose(result["per_class_recall"], r, atol=1e-6)
    np.testing.assert_allclose(result["per_class_f1"], f, atol=1e-6)
    assert result["macro_f1"] == pytest.approx(f.mean(), abs=1e-6)
    assert result["balanced_accuracy"] == pytest.approx(r.mean(), abs=1e-6)
    top5 = (logits.topk(5, -1).indices == labels[:, None]).any(-1).float().mean().item()
    assert result["top_k"] == 5 and result["top_k_accuracy"] == pytest.approx(top5, abs=1e-6)
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), abs=1e-5)
    assert result["nll_calibrated"] == pytest.approx(
        nn.functional.cross_entropy(logits / 2, labels).item(), abs=1e-5)
    for key, t in (("ece", 1.0), ("ece_calibrated", 2.0)):
        whole = tmf.calibration_error((logits / t).softmax(-1), labels, task="multiclass", num_classes=c, n_bins=15)
        assert result[key] == pytest.approx(whole.item(), abs=1e-5)
    # the reliability bins give the same ECE as torchmetrics, and count every sample once
    assert result["reliability"]["ece"] == pytest.approx(result["ece"], abs=1e-5)
    assert sum(result["reliability_calibrated"]["count"]) == n
    losses = nn.functional.cross_entropy(logits / 2, labels, reduction="none")
    assert [r["index"] for r in result["top_losses"]] == losses.argsort(descending=True)[:5].tolist()


def test_scores_of_dict_inputs_same_as_tensors(table):
    """Batches whose inputs are dicts of tensors (tokenized texts) go through the same path."""
    logits, labels = table
    as_tensors = evaluate(Lookup(logits), TensorDataset(torch.arange(len(labels)), labels), 6, batch_size=50)
    as_dicts = evaluate(Lookup(logits), DictDataset(labels), 6, batch_size=50)
    assert as_dicts["confusion_matrix"] == as_tensors["confusion_matrix"]
    assert as_dicts["loss"] == pytest.approx(as_tensors["loss"])


def test_top_k_is_capped_by_the_number_of_classes(table):
    logits, labels = table
    keep = labels < 3
    result = evaluate(Lookup(logits[keep][:, :3]), TensorDataset(torch.arange(int(keep.sum())), labels[keep]), 3)
    assert result["top_k"] == 3 and result["top_k_accuracy"] == 1.0


def test_predict_applies_the_temperature():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    plain = predict_top_k(Lookup(logits), torch.tensor([0]), ["a", "b", "c"], 3)
    scaled = predict_top_k(Lookup(logits), torch.tensor([0]), ["a", "b", "c"], 3, temperature=4.0)
    assert [c for c, _ in plain[0]] == [c for c, _ in scaled[0]] == ["a", "b", "c"]
    assert scaled[0][0][1] == pytest.approx((logits / 4).softmax(-1)[0, 0].item())
    assert scaled[0][0][1] < plain[0][0][1]


def test_class_mismatch_names_the_difference():
    with pytest.raises(UserError, match=r"only in the data: \['Boot'\]; only in the run: \['Bag'\]"):
        check_classes(["Shirt", "Boot"], ["Shirt", "Bag"], "data.npz")
    with pytest.raises(UserError, match="another order"):
        check_classes(["b", "a"], ["a", "b"], "data.npz")


def test_default_eval_dir(tmp_path):
    assert default_eval_dir(tmp_path, None) == tmp_path / "eval"
    assert default_eval_dir(tmp_path, "/x/t10k-images-idx3-ubyte.gz") == tmp_path / "eval-t10k-images-idx3-ubyte"
