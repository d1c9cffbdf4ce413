"""The segmentation model's parts: the decoder widths."""

import pytest

from sft.tasks.segmentation.module import UNET_MIN_WIDTH, DecoderHead

MOBILENET_V2 = ([16, 24, 32, 96, 1280], [2, 4, 8, 16, 32])


@pytest.mark.parametrize("width", [256, 128, 64, 32])
def test_unet_halves_its_width_down_to_smps_last_width_not_below(width):
    """A 128-wide decoder used to end in 8 channels for 11 classes (a 64-wide one in 4): the classifier starved and
    the bench learned little but the background."""
    head = DecoderHead("unet", *MOBILENET_V2, num_classes=11, width=width)
    widths = [block.conv2[0].out_channels for block in head.decoder.blocks]
    assert widths[0] == width and widths[-1] == UNET_MIN_WIDTH == 16
    assert all(a >= b for a, b in zip(widths, widths[1:]))
    assert head.head[0].in_channels == UNET_MIN_WIDTH


def test_a_decoder_narrower_than_the_floor_keeps_its_width():
    head = DecoderHead("unet", *MOBILENET_V2, num_classes=3, width=8)
    assert [block.conv2[0].out_channels for block in head.decoder.blocks] == [8] * 5
