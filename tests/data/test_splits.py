import numpy as np
import pytest
import torch

from sft.models.backbone import Preprocess
from sft.data.images import build_transforms
from sft.data.splits import load_splits
from sft.errors import UserError
from sft.tasks.classification.recipe import ImageClassificationData as Data
from sft.data.images import read_samples

PRE = Preprocess(input_size=(40, 40), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=0.875)


def read(source, classes):
    return read_samples(source.path, labels=source.labels, format=source.format, classes=classes)


def test_validation_is_split_from_the_limited_training_set(fashion_slice):
    splits = load_splits(Data(train=fashion_slice["train"], test=fashion_slice["test"], train_limit=100,
                              val_fraction=0.2), seed=0, read=read)
    assert len(splits.train) + len(splits.val) == 100 and len(splits.val) == 20
    assert len(splits.test) == 120
    assert set(splits.train.ids).isdisjoint(splits.val.ids)
    again = load_splits(Data(train=fashion_slice["train"], train_limit=100, val_fraction=0.2), seed=0, read=read)
    assert again.val.ids == splits.val.ids


def test_classes_must_agree(fashion_slice, tmp_path):
    folder = tmp_path / "imgs"
    sample = read_samples(fashion_slice["train"]).image(0)
    for name in ("a", "b", "c"):
        (folder / name).mkdir(parents=True)
        sample.save(folder / name / "x.png")
    other = tmp_path / "other"
    for name in ("a", "z"):
        (other / name).mkdir(parents=True)
        sample.save(other / name / "x.png")
    with pytest.raises(UserError, match="'z' is not one of the classes"):
        load_splits(Data(train=folder, val=other), seed=0, read=read)


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_transforms_follow_the_backbone_convention(fashion_slice, augment):
    image = read_samples(fashion_slice["train"]).image(0)
    train_tf, eval_tf = build_transforms(PRE, None, augment)
    assert train_tf(image).shape == eval_tf(image).shape == (3, 40, 40)
    assert build_transforms(PRE, 24, augment)[1](image).shape == (3, 24, 24)
    white = eval_tf(image.point(lambda _: 255))
    assert torch.allclose(white, torch.ones_like(white), atol=1e-3)  # (1 - 0.5) / 0.5


def test_exclude_and_relabel(fashion_slice, tmp_path):
    samples = read_samples(fashion_slice["train"])
    bags = [sid for sid, label in zip(samples.ids, samples.labels) if label == 3]
    exclude = tmp_path / "exclude.csv"
    exclude.write_text("sample\n" + "\n".join(bags[:5]) + "\n")
    relabel = tmp_path / "relabel.csv"
    relabel.write_text(f"sample,label\n{bags[5]},0\n")
    splits = load_splits(Data(train=fashion_slice["train"]), seed=0, read=read, exclude=str(exclude),
                         relabel=str(relabel))
    kept = dict(zip(splits.train.ids + splits.val.ids, list(splits.train.labels) + list(splits.val.labels)))
    assert not set(bags[:5]) & set(kept) and len(kept) == len(samples) - 5
    assert kept[bags[5]] == 0
    exclude.write_text("sample\n" + "\n".join(bags) + "\n")
    with pytest.raises(UserError, match=r"no samples of class\(es\) \['3'\] remain"):
        load_splits(Data(train=fashion_slice["train"]), seed=0, read=read, exclude=str(exclude))


def test_label_sets_are_held_out_by_iterative_stratification():
    """Each label keeps about the validation share of its positives, a rare one too (first-label strata would put
    all 6 positives of label 3 on one side by chance)."""
    from sft.data.samples import Samples

    rng = np.random.default_rng(0)
    targets = (rng.random((400, 4)) < [0.5, 0.3, 0.1, 0.015]).astype(np.float32)
    targets[:6, 3] = 1
    samples = Samples(list(range(400)), None, list("abcd"), [str(i) for i in range(400)], "text", targets=targets)
    train, val = samples.holdout(0.25, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 400
    share = targets[val].sum(0) / targets.sum(0)
    assert np.all(np.abs(share - 0.25) < 0.06), share
    assert (samples.holdout(0.25, seed=0)[1] == val).all()  # seeded
