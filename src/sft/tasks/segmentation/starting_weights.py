"""A whole segmentation model as the starting point (`model.checkpoint: FILE`): a finished sft segmentation run's
model.safetensors, or a segmentation_models_pytorch model's state dict with the same encoder and decoder.

Names: an sft run's file holds `backbone.*` (the encoder under the backbone's own names), `head.decoder.*` and
`head.head.*` (the classifier); an smp model holds `encoder.*`, `decoder.*`, `segmentation_head.*` (and, if built
with aux_params, a `classification_head.*` that sft has no use for: skipped, and said). smp's encoders keep the
underlying model's names (torchvision MobileNetV2's `features.*`) where sft's backbone keeps them under `model.`,
and sft's decoders are smp's own classes, so the names map on by prefix. The encoder and the decoder must fit whole
(`sft.models.starting_weights.fit_whole`, shared with detection); the classifier loads when the class count is
the same, else it stays as initialised.

What fits, e.g.: `smp.Unet("mobilenet_v2")` with `model.backbone: torchvision/mobilenet_v2`, `model.decoder: unet`,
`model.decoder_channels: 256` (smp's 256, 128, 64, 32, 16), and sft's MobileNetV2 maps are the stages smp's encoder
returns, so the model computes the same logits. smp's `tu-` (timm features_only) encoders lack the final
convolution sft's timm backbones keep, so they are refused as not fitting whole.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sft.errors import UserError
from sft.models.starting_weights import fit_whole, read_state_dict

HINT = ("model.checkpoint takes a finished sft segmentation run's model.safetensors or a segmentation_models_pytorch "
        "model's state dict (.pth/.pt/.safetensors; a training checkpoint {\"model\": state} works too)")
# (encoder, decoder, classifier) name prefixes of each format
FORMATS = {"sft": ("backbone.", "head.decoder.", "head.head."), "smp": ("encoder.", "decoder.", "segmentation_head.")}


def load_segmentation_start(backbone: nn.Module, head: nn.Module, source: str,
                                 backbone_name: str = "the backbone") -> dict:
    """Load FILE into sft's segmentation model (backbone: the backbone's module; head: the DecoderHead); returns
    what loaded and what did not. UserError when it does not fit (see the module docstring)."""
    file = Path(source).expanduser()
    state, shown = read_state_dict(file, HINT), str(file)
    kind = next((k for k, (encoder, _, _) in FORMATS.items() if any(n.startswith(encoder) for n in state)), None)
    if kind is None:
        raise UserError(f"model.checkpoint: {shown} is neither an sft segmentation model (backbone.*, head.*) nor an "
                        f"smp model (encoder.*, decoder.*); its names begin {sorted({n.split('.')[0] for n in state})[:6]}"
                        f"; {HINT}")
    prefixes = FORMATS[kind]
    parts = [{n[len(p):]: v for n, v in state.items() if n.startswith(p)} for p in prefixes]
    skipped = sorted(n for n in state if not n.startswith(prefixes))
    encoder = fit_whole(backbone.state_dict(), parts[0], shown=shown, what=f"encoder does not fit model.backbone "
                        f"{backbone_name}", fix="set model.backbone to the encoder the file was trained with",
                        prefixes=("", "model."), file_prefix=prefixes[0])
    if not parts[1]:
        raise UserError(f"model.checkpoint: {shown} holds no decoder ({prefixes[1]}*); {HINT}")
    decoder = fit_whole(head.decoder.state_dict(), parts[1], shown=shown, what="decoder does not fit model.decoder "
                        "and model.decoder_channels", fix="set them to those the file was trained with (smp's "
                        "default width is 256)", file_prefix=prefixes[1])
    own = head.head.state_dict()
    same_classes = set(parts[2]) == set(own) and all(own[n].shape == v.shape for n, v in parts[2].items())
    backbone.load_state_dict(encoder, strict=False)  # strict: fit_whole checked all but BatchNorm's counters
    head.decoder.load_state_dict(decoder, strict=False)
    if same_classes:
        head.head.load_state_dict(parts[2])
    return {"source": shown, "format": kind, "encoder": len(encoder), "decoder": len(decoder),
            "classifier": same_classes, "skipped": skipped}
