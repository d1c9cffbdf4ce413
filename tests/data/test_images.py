"""Tests for sft.sources on small real fixtures (PNG/JPEG, CSV, IDX, npz) and the real Fashion-MNIST t10k."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft.errors import UserError
from sft.data.images import read_samples
from sft.data.samples import Samples, stratified_split, stratified_subset

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _png(path: Path, value: int = 0, mode: str = "RGB", size=(8, 6), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(path, format=fmt)
    return path


def _folder(root: Path) -> Path:
    _png(root / "cat" / "a.png", 10)
    _png(root / "cat" / "sub" / "b.JPG", 20, fmt="JPEG")
    _png(root / "dog" / "c.png", 30, mode="L")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def _idx(path: Path, x: np.ndarray, magic=2051, gz=False) -> Path:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in x.shape)
    data = head + x.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _raises(match: str, fn, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert match in msg, msg
    return msg


# ---- folder ------------------------------------------------------------------------------------

def test_folder_reads_classes_recursively(tmp_path):
    s = read_samples(_folder(tmp_path / "data"))
    assert s.classes == ["cat", "dog"]
    assert list(s.labels) == [0, 0, 1] and s.labels.dtype == np.int64
    assert len(s) == 3 and s.ids == s.items and all(os.path.isabs(p) for p in s.items)
    assert s.items[1].endswith("b.JPG")
    im = s.image(2)
    assert im.mode == "RGB" and im.size == (8, 6) and im.getpixel((0, 0)) == (30, 30, 30)


def test_folder_classes_fix_order_and_reject_unknown(tmp_path):
    root = _folder(tmp_path / "data")
    s = read_samples(root, classes=["dog", "cat", "bird"])
    assert s.classes == ["dog", "cat", "bird"] and list(s.labels) == [1, 1, 0]
    msg = _raises("'dog' is not one of the classes", read_samples, root, classes=["cat"])
    assert str(root / "dog") in msg


def test_folder_errors(tmp_path):
    _raises(str(tmp_path / "nope"), read_samples, tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "x.png")
    _raises("no class subfolders", read_samples, tmp_path / "flat")
    root = _folder(tmp_path / "data")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("x")
    _raises(f"{root / 'empty'}: class folder has no images", read_samples, root)
    (root / "empty" / "bad.png").write_bytes(b"this is not a png")
    _raises(f"{root / 'empty' / 'bad.png'}: not a readable image", read_samples, root)


def test_image_on_broken_file_names_it(tmp_path):
    s = read_samples(_folder(tmp_path / "data"))
    Path(s.items[0]).write_bytes(b"garbage")
    _raises(f"{s.items[0]}: cannot decode image", s.image, 0)


def test_fingerprint_files(tmp_path):
    s = read_samples(_folder(tmp_path / "data"))
    fp = s.fingerprint()
    assert len(fp) == 64 and fp == read_samples(tmp_path / "data").fingerprint()
    relabelled = Samples(s.items, s.labels[::-1].copy(), ["x", "y"], s.ids)
    assert relabelled.fingerprint() == fp
    _png(Path(s.items[2]), 99, mode="L", size=(9, 6))  # rewrite one file (size changes)
    assert s.fingerprint() != fp
    assert s.subset([0, 1]).fingerprint() != s.fingerprint()


# ---- csv ---------------------------------------------------------------------------------------

def _csv(tmp_path: Path, body: str, name="data.csv") -> Path:
    _png(tmp_path / "img" / "a.png", 1)
    _png(tmp_path / "img" / "b.png", 2)
    p = tmp_path / name
    p.write_text(body)
    return p


def test_csv_relative_and_absolute_paths(tmp_path):
    absb = tmp_path / "img" / "b.png"
    p = _csv(tmp_path, f"image,label,extra\nimg/a.png,zebra,1\n\n{absb},ant,2\nimg/b.png, zebra ,3\n")
    s = read_samples(p)
    assert s.classes == ["ant", "zebra"] and list(s.labels) == [1, 0, 1]
    assert s.items[0] == str(tmp_path / "img" / "a.png") and s.items[1] == str(absb)
    assert s.image(0).size == (8, 6)
    s2 = read_samples(p, classes=["zebra", "ant", "bee"])
    assert list(s2.labels) == [0, 1, 0] and s2.classes == ["zebra", "ant", "bee"]


def test_csv_errors_name_file_and_line(tmp_path):
    p = _csv(tmp_path, "filename,label\nimg/a.png,x\n")
    msg = _raises(f"{p}: missing column 'path'", read_samples, p)
    assert "['filename', 'label']" in msg
    p = _csv(tmp_path, "path,cls\nimg/a.png,x\n")
    _raises("missing column 'label'", read_samples, p)
    p = _csv(tmp_path, "path,label\nimg/a.png,x\nimg/missing.png,y\n")
    _raises(f"{p} line 3: image file not found", read_samples, p)
    p = _csv(tmp_path, "path,label\nimg/a.png,x\nimg/b.png,\n")
    _raises(f"{p} line 3: empty label", read_samples, p)
    (tmp_path / "img" / "bad.png").write_bytes(b"nope")
    p = _csv(tmp_path, "path,label\nimg/a.png,x\n\nimg/bad.png,y\n")
    _raises(f"{p} line 4: not a readable image", read_samples, p)
    p = _csv(tmp_path, "path,label\nimg/a.png,x\nimg/b.png,y\n")
    msg = _raises(f"{p} line 3: label 'y' is not one of the classes", read_samples, p, classes=["x"])
    assert "['x']" in msg
    _raises("labels= is only for idx and numpy", read_samples, p, labels="y.npy")


# ---- idx ---------------------------------------------------------------------------------------

def test_idx_raw_and_gzip(tmp_path):
    x = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    y = np.array([0, 2, 2, 1], dtype=np.uint8)
    for gz, suffix in ((False, ""), (True, ".gz")):
        img = _idx(tmp_path / f"tr-images-idx3-ubyte{suffix}", x, gz=gz)
        _idx(tmp_path / f"tr-labels-idx1-ubyte{suffix}", y, magic=2049, gz=gz)
        s = read_samples(img)
        assert s.items.shape == (4, 3, 2) and s.items.dtype == np.uint8 and np.array_equal(s.items, x)
        assert list(s.labels) == [0, 2, 2, 1] and s.classes == ["0", "1", "2"]
        assert s.ids[3] == f"{img}#3"
        assert s.image(1).mode == "RGB" and s.image(1).size == (2, 3)
    lab = _idx(tmp_path / "other.idx", y, magic=2049)
    s = read_samples(_idx(tmp_path / "x.idx", x), labels=lab, classes=["a", "b", "c"])
    assert s.classes == ["a", "b", "c"]


def test_idx_errors(tmp_path):
    x = np.zeros((3, 2, 2), np.uint8)
    img = _idx(tmp_path / "a-images-idx3-ubyte", x)
    _raises("a-labels-idx1-ubyte: IDX labels file not found", read_samples, img)
    lab = _idx(tmp_path / "a-labels-idx1-ubyte", np.array([0, 1]), magic=2049)
    _raises(f"{lab}: 2 labels but {img} has 3 images", read_samples, img)
    _raises(f"{img}: not an IDX labels file (magic number 2051, expected 2049)", read_samples, img, labels=img)
    bad = _idx(tmp_path / "b.idx", x, magic=2049)
    _raises(f"{bad}: not an IDX images file", read_samples, bad, labels=lab)
    trunc = tmp_path / "c.idx"
    trunc.write_bytes(img.read_bytes()[:-3])
    _raises(f"{trunc}: IDX images file holds 9 bytes", read_samples, trunc, labels=lab)
    _raises("cannot derive the IDX labels", read_samples, trunc)
    lab3 = _idx(tmp_path / "l3.idx", np.array([0, 1, 5]), magic=2049)
    _raises(f"{lab3}: label 5 has no name", read_samples, img, labels=lab3, classes=["a", "b"])


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_t10k():
    s = read_samples(FMNIST / "t10k-images-idx3-ubyte.gz")
    assert len(s) == 10000 and s.items.shape == (10000, 28, 28) and len(s.classes) == 10
    counts = np.bincount(s.labels, minlength=10)
    assert (np.abs(counts - 1000) <= 100).all(), counts
    assert s.image(0).size == (28, 28)


# ---- numpy -------------------------------------------------------------------------------------

def test_numpy_npz_and_npy(tmp_path):
    x = np.random.default_rng(0).random((5, 4, 4, 3))
    y = np.array([1, 0, 1, 1, 0])
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    s = read_samples(tmp_path / "d.npz", classes=["neg", "pos"])
    assert s.items.dtype == np.uint8 and s.items.shape == (5, 4, 4, 3) and s.classes == ["neg", "pos"]
    assert s.items[0, 0, 0, 0] == round(x[0, 0, 0, 0] * 255)
    assert s.image(0).mode == "RGB" and s.ids[2] == f"{tmp_path / 'd.npz'}#2"
    g = np.full((2, 3, 3, 1), 200, np.uint8)
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "gy.npy", np.array([0, 3]))
    s = read_samples(tmp_path / "g.npy", labels=tmp_path / "gy.npy")
    assert s.classes == ["0", "1", "2", "3"] and s.image(1).getpixel((0, 0)) == (200, 200, 200)


def test_numpy_errors(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, a=np.zeros((2, 3, 3)), b=np.zeros(2))
    _raises(f"{p}: expected keys 'x' and 'y'", read_samples, p)
    np.savez(p, x=np.zeros((2, 3)), y=np.zeros(2, int))
    _raises("expected (N, H, W) or (N, H, W, C)", read_samples, p)
    np.savez(p, x=np.zeros((2, 3, 3, 2)), y=np.zeros(2, int))
    _raises(f"{p}: images have shape (2, 3, 3, 2)", read_samples, p)
    np.savez(p, x=np.full((2, 3, 3), 2.0), y=np.zeros(2, int))
    _raises("float images must lie in [0, 1]", read_samples, p)
    np.savez(p, x=np.zeros((2, 3, 3)), y=np.zeros(2))
    _raises(f"{p} key 'y': labels have shape (2,) dtype float64; expected integers >= 0", read_samples, p)
    np.savez(p, x=np.zeros((2, 3, 3)), y=np.zeros(3, int))
    _raises("expected integers >= 0 of shape (2,)", read_samples, p)
    np.savez(p, x=np.zeros((2, 3, 3)), y=np.array([0, -1]))
    _raises("expected integers >= 0", read_samples, p)
    np.savez(p, x=np.full((2, 3, 3), 300), y=np.zeros(2, int))
    _raises("integer images must lie in 0..255", read_samples, p)
    np.savez(p, x=np.zeros((2, 3, 3), bool), y=np.zeros(2, int))
    _raises("expected uint8 or float in [0, 1]", read_samples, p)
    _raises("duplicates", read_samples, p, classes=["a", "a"])
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 3), np.uint8))
    _raises("pass labels=", read_samples, tmp_path / "x.npy")
    _raises(f"{tmp_path / 'nope.npy'}: cannot read numpy file", read_samples, tmp_path / "x.npy",
            labels=tmp_path / "nope.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    _raises(f"{tmp_path / 'junk.npy'}: cannot read numpy file", read_samples, tmp_path / "junk.npy", labels=p)


def test_auto_format_errors(tmp_path):
    (tmp_path / "data.parquet").write_text("x")
    _raises("supported: a folder of class subfolders, *.csv", read_samples, tmp_path / "data.parquet")
    _raises("unknown format 'hdf5'", read_samples, tmp_path / "data.parquet", format="hdf5")


def test_fingerprint_arrays():
    x = np.zeros((3, 4, 4), np.uint8)
    s = Samples(x, np.array([0, 1, 0]), ["a", "b"], ["a#0", "a#1", "a#2"])
    fp = s.fingerprint()
    assert Samples(x.copy(), np.array([1, 1, 1]), ["a", "b"], s.ids).fingerprint() == fp
    x2 = x.copy()
    x2[1, 2, 3] = 1
    assert Samples(x2, s.labels, s.classes, s.ids).fingerprint() != fp
    assert Samples(x.reshape(3, 16, 1), s.labels, s.classes, s.ids).fingerprint() != fp
    sub = s.subset(np.array([2, 0]))
    assert sub.ids == ["a#2", "a#0"] and list(sub.labels) == [0, 0] and sub.classes == ["a", "b"]


# ---- splits ------------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(4), [100, 50, 10, 1])


def test_stratified_split():
    tr, va = stratified_split(LABELS, 0.2, seed=1)
    assert tr.dtype == np.int64 and (np.diff(tr) > 0).all() and (np.diff(va) > 0).all()
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(LABELS)))
    assert list(np.bincount(LABELS[va], minlength=4)) == [20, 10, 2, 0]
    assert (np.bincount(LABELS[tr], minlength=4) >= 1).all()
    again = stratified_split(LABELS, 0.2, seed=1)
    assert np.array_equal(tr, again[0]) and np.array_equal(va, again[1])
    assert not np.array_equal(va, stratified_split(LABELS, 0.2, seed=2)[1])
    tr, va = stratified_split(np.array([0, 0, 1]), 0.9, seed=0)
    assert len(va) == 1 and len(tr) == 2 and 2 in tr  # every class keeps one in train
    with pytest.raises(UserError):
        stratified_split(LABELS, 1.0, seed=0)


def test_stratified_subset():
    idx = stratified_subset(LABELS, 32, seed=3)
    assert len(idx) == 32 and len(set(idx)) == 32 and (np.diff(idx) > 0).all()
    counts = np.bincount(LABELS[idx], minlength=4)
    assert (counts >= 1).all() and counts[0] > counts[1] > counts[2], counts
    assert np.array_equal(idx, stratified_subset(LABELS, 32, seed=3))
    assert not np.array_equal(idx, stratified_subset(LABELS, 32, seed=4))
    assert list(np.bincount(LABELS[stratified_subset(LABELS, 4, seed=0)], minlength=4)) == [1, 1, 1, 1]
    assert list(np.bincount(LABELS[stratified_subset(LABELS, 2, seed=0)], minlength=4)) == [1, 1, 0, 0]
    even = stratified_subset(np.repeat(np.arange(3), 100), 30, seed=0)
    assert list(np.bincount(np.repeat(np.arange(3), 100)[even])) == [10, 10, 10]
    assert np.array_equal(stratified_subset(LABELS, 1000, seed=0), np.arange(len(LABELS)))
    assert len(stratified_subset(LABELS, 0, seed=0)) == 0
