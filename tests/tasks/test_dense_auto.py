import pytest
import torch

from sft.recipe import dump_recipe
from sft.tasks import load_recipe
from sft.errors import UserError
from sft.tasks.dense_auto import file_sides, resolve_dense
from sft.training.resume import resumed_recipe


def dense(*overrides):
    return load_recipe(None, ["task=detection", "data.train=x.json", "data.val=null", "data.test=null", *overrides])


def test_a_cpu_gets_small_inputs_narrow_heads_and_no_augmentation():
    notes = {}
    r = resolve_dense(dense(), "fpn_channels", [100, 130, 128, 500], torch.device("cpu"), notes)
    assert (r.data.image_size, r.model.fpn_channels, r.data.augment) == (128, 64, "none")
    assert notes["auto"]["data.image_size"] == {"value": 128, "for": "median image side 129 px, at most 512 on a cpu"}
    assert set(notes["auto"]) == {"data.image_size", "data.augment", "model.fpn_channels"}


def test_a_gpu_gets_the_images_detail_wide_heads_and_augmentation():
    notes = {}
    r = resolve_dense(dense(), "fpn_channels", [1500, 2000], torch.device("cuda"), notes)
    assert (r.data.image_size, r.model.fpn_channels, r.data.augment) == (1024, 256, "light")
    r = resolve_dense(dense(), "fpn_channels", [300], torch.device("cuda"), {})
    assert r.data.image_size == 288  # the nearest multiple of 32


def test_explicit_settings_are_kept_and_not_reported():
    notes = {}
    r = resolve_dense(dense("data.image_size=96", "data.augment=light", "model.fpn_channels=128"), "fpn_channels",
                      [500], torch.device("cpu"), notes)
    assert (r.data.image_size, r.model.fpn_channels, r.data.augment) == (96, 128, "light") and "auto" not in notes


def test_a_resumed_run_keeps_what_auto_chose_on_another_machine(tmp_path):
    saved = tmp_path / "recipe.yaml"
    chosen = resolve_dense(dense(), "fpn_channels", [128], torch.device("cpu"), {})
    saved.write_text(dump_recipe(chosen))
    again = resumed_recipe(dense(), saved)
    assert (again.data.image_size, again.model.fpn_channels, again.data.augment) == (128, 64, "none")


def test_image_sides_come_from_the_headers_and_a_bad_file_is_named(tmp_path):
    from PIL import Image
    Image.new("RGB", (90, 50)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    assert file_sides([str(tmp_path / "a.png")], seed=0) == [90]
    with pytest.raises(UserError, match="b.png: cannot read the image"):
        file_sides([str(tmp_path / "a.png"), str(tmp_path / "b.png")], seed=0)
