import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from sft.training.features import cache_key, cached_features, weights_digest


class CountingData(Dataset):
    """Counts reads, so a test can tell computed features from cached ones."""

    def __init__(self, n):
        self.x, self.reads = torch.randn(n, 4), 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], 0


def compute(model, data, tmp_path, key, mode="disk"):
    return cached_features(key, model, data, mode=mode, cache_dir=tmp_path, batch_size=8, precision="32-true",
                           channels_last=False)


def test_disk_cache_computes_once_and_any_change_changes_the_key(tmp_path):
    model, data = nn.Linear(4, 3), CountingData(20)
    key = cache_key("m", weights_digest(model), "transform", "data")
    first = compute(model, data, tmp_path, key)
    assert first.shape == (20, 3) and data.reads == 20
    assert torch.allclose(first, model(data.x), atol=1e-6)
    assert torch.equal(compute(model, data, tmp_path, key), first) and data.reads == 20
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))
    before = weights_digest(model)
    with torch.no_grad():
        model.weight[0, 0] += 1
    assert weights_digest(model) != before
    assert cache_key("m", before, "transform", "data") != cache_key("m", before, "other transform", "data")


def test_memory_and_none_modes(tmp_path):
    model, data = nn.Linear(4, 3), CountingData(10)
    compute(model, data, tmp_path, "k1", mode="memory")
    compute(model, data, tmp_path, "k1", mode="memory")
    assert data.reads == 10 and not list(tmp_path.glob("*.pt"))
    compute(model, data, tmp_path, "k2", mode="none")
    compute(model, data, tmp_path, "k2", mode="none")
    assert data.reads == 30


def test_features_use_eval_mode_fold_batchnorm_exactly_and_restore_the_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    stats = model[1].running_mean.clone()
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.zeros(16))
    features = cached_features("k", model, data, mode="none", cache_dir=".", batch_size=8, precision="32-true",
                               channels_last=True)
    assert torch.equal(stats, model[1].running_mean) and model.training
    model.eval()
    assert torch.allclose(features, model(data.tensors[0]), atol=1e-5)
