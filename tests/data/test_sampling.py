"""Class weights, focal loss and the balanced sampler, including a real two-process (gloo) split of one epoch."""

import json
import socket
import time
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sft.data.sampling import BalancedSampler, class_counts
from sft.tasks.classification.losses import FocalLoss, class_weights
from sft.errors import UserError

CLASSES = ["common", "rare", "rarest", "absent"]
LABELS = np.array([0] * 90 + [1] * 9 + [2] * 1)  # 90/9/1, class 3 has no samples


def test_class_counts():
    assert class_counts(LABELS, 4).tolist() == [90, 9, 1, 0]
    assert class_counts(LABELS, 4).dtype == np.int64
    with pytest.raises(UserError, match="out of range"):
        class_counts(LABELS, 2)


@pytest.mark.parametrize("spec", ["inverse", "auto", "effective"])
def test_weights_favour_rare_classes(spec):
    w = class_weights(LABELS, CLASSES, spec)
    assert w.dtype == torch.float32 and w.shape == (4,)
    assert w[0] < w[1] < w[2] and w[3] == 0
    assert w[:3].mean().item() == pytest.approx(1.0)


def test_inverse_and_effective_values():
    inverse = class_weights(LABELS, CLASSES, "inverse").numpy()
    assert inverse[:3] == pytest.approx(np.array([1 / 90, 1 / 9, 1]) / np.mean([1 / 90, 1 / 9, 1]))
    beta = 1 - 1 / 100
    raw = np.array([(1 - beta) / (1 - beta ** c) for c in (90, 9, 1)])
    effective = class_weights(LABELS, CLASSES, "effective").numpy()
    assert effective[:3] == pytest.approx(raw / raw.mean(), rel=1e-6)
    assert effective[2] / effective[0] < inverse[2] / inverse[0]  # milder than inverse frequency


def test_weights_from_a_mapping():
    w = class_weights(LABELS, CLASSES, {"rare": 3, "rarest": 0.5})
    assert w.tolist() == [1.0, 3.0, 0.5, 1.0]
    with pytest.raises(UserError, match="'rear'") as err:
        class_weights(LABELS, CLASSES, {"rear": 3})
    assert "common" in str(err.value)  # lists the classes
    with pytest.raises(UserError, match=">= 0"):
        class_weights(LABELS, CLASSES, {"rare": -1})
    with pytest.raises(UserError, match="expected one of"):
        class_weights(LABELS, CLASSES, "balanced")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma_zero_is_cross_entropy(dtype, smoothing, weighted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g, dtype=dtype) * 3
    target = torch.randint(5, (64,), generator=g)
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5, 1.3]) if weighted else None
    focal = FocalLoss(gamma=0.0, weight=weight, label_smoothing=smoothing)(logits, target)
    ce = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(dtype), label_smoothing=smoothing)
    torch.testing.assert_close(focal, ce(logits, target), rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_focal_down_weights_easy_examples_and_has_gradients():
    target = torch.arange(4)
    logits = (torch.eye(4) * 4).requires_grad_()  # confident and correct: p_y ~ 0.95
    ce = nn.functional.cross_entropy(logits, target)
    focal = FocalLoss(gamma=2.0)(logits, target)
    assert 0 < focal < ce / 100
    focal.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    saturated = torch.tensor([[100.0, -100.0]], requires_grad=True)  # p == 1 exactly in float32
    FocalLoss(gamma=0.5)(saturated, torch.tensor([0])).backward()
    assert torch.isfinite(saturated.grad).all()
    with pytest.raises(UserError, match="gamma"):
        FocalLoss(gamma=-1)


SKEWED = np.array([0] * 7 + [2] * 3 + [1] * 2 + [0, 2])  # counts 8/2/4, interleaved


@pytest.mark.parametrize("mode, per_class", [("oversample", 8), ("undersample", 2)])
def test_one_epoch_is_exactly_balanced(mode, per_class):
    sampler = BalancedSampler(SKEWED, mode, seed=1)
    drawn = sampler.epoch_indices()
    assert Counter(SKEWED[drawn].tolist()) == {0: per_class, 1: per_class, 2: per_class}
    assert len(sampler) == 3 * per_class and list(sampler) == drawn.tolist()
    if mode == "undersample":
        assert len(set(drawn.tolist())) == drawn.size  # without replacement


def test_oversampling_keeps_every_sample():
    for epoch in range(5):
        sampler = BalancedSampler(SKEWED, "oversample", seed=0)
        sampler.set_epoch(epoch)
        assert set(sampler.epoch_indices().tolist()) == set(range(SKEWED.size))


def test_order_depends_only_on_seed_and_epoch():
    a, b = BalancedSampler(SKEWED, "undersample", seed=5), BalancedSampler(SKEWED, "undersample", seed=5)
    torch.manual_seed(123)
    first = list(a)
    torch.manual_seed(456)  # global RNG state must not matter
    np.random.seed(7)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(BalancedSampler(SKEWED, "undersample", seed=6)) != first


def test_split_across_replicas_in_process():
    epoch = BalancedSampler(SKEWED, "oversample", seed=2).epoch_indices()  # 24 indices -> padded to 25
    shares = [list(BalancedSampler(SKEWED, "oversample", num_replicas=5, rank=r, seed=2)) for r in range(5)]
    assert [len(s) for s in shares] == [5] * 5
    assert len(BalancedSampler(SKEWED, "oversample", num_replicas=5, rank=0)) == 5
    padded = np.concatenate([epoch, epoch[:1]])
    for r, share in enumerate(shares):
        assert share == padded[r::5].tolist()


def test_bad_mode_is_a_user_error():
    with pytest.raises(UserError, match="'balanced'.*oversample"):
        BalancedSampler(SKEWED, "balanced")


def _rank_main(rank: int, port: int, out: str, labels: list[int]) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(1000 + rank)  # different global RNG state on each rank: must not matter
        sampler = BalancedSampler(np.array(labels), "oversample", num_replicas=2, rank=rank, seed=3)
        sampler.set_epoch(1)
        mine = {"share": list(sampler), "len": len(sampler), "epoch": sampler.epoch_indices().tolist()}
        gathered = [None, None]
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_split_one_epoch(tmp_path):
    labels = [0] * 5 + [1] * 2 + [2] * 7  # 3 classes x 7 = 21 indices: odd, so one is padded
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "gathered.json"
    ctx = mp.spawn(_rank_main, args=(port, str(out), labels), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two processes did not finish within 120 s")
    zero, one = json.loads(out.read_text())
    assert zero["epoch"] == one["epoch"]  # both ranks drew the same epoch
    epoch = zero["epoch"]
    assert len(epoch) == 21 and zero["len"] == one["len"] == len(zero["share"]) == len(one["share"]) == 11
    padded = epoch + epoch[:1]
    assert zero["share"] == padded[0::2] and one["share"] == padded[1::2]  # disjoint by position
    assert Counter(zero["share"] + one["share"]) == Counter(padded)
