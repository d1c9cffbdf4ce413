import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from sft import fine_tune
from tests.conftest import tiny_recipe
from tests.training.test_fit import Crash


class Weights(Callback):
    """The backbone's tensors when training ends (raw: before the average replaces them) and when fit ends."""

    def on_train_end(self, trainer, module):
        self.raw = {k: v.clone() for k, v in module.backbone.state_dict().items()}

    def on_fit_end(self, trainer, module):
        self.final = {k: v.clone() for k, v in module.backbone.state_dict().items()}


def test_the_model_is_the_average_validation_scored(tmp_path, fashion_slice):
    weights = Weights()
    run = fine_tune(tiny_recipe(tmp_path, fashion_slice, "strategy.name=full", "trainer.epochs=1",
                                "trainer.ema=0.9"), callbacks=[weights])
    saved = load_file(run.dir / "model.safetensors")
    backbone = {k.removeprefix("backbone."): v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone, sorted(saved)[:5]
    moved = [k for k, v in backbone.items() if v.is_floating_point() and not torch.equal(v, weights.raw[k])]
    assert moved, "the saved model holds the raw weights, not the average"
    for key, value in backbone.items():  # one epoch: best.ckpt is the final average
        assert torch.equal(value, weights.final[key]), key


@pytest.mark.parametrize("args", [("strategy.name=gradual", "trainer.epochs=3", "trainer.ema=0.8")])
def test_a_resumed_run_continues_the_average_exactly(tmp_path, fashion_slice, args):
    full = fine_tune(tiny_recipe(tmp_path / "a", fashion_slice, *args))
    with pytest.raises(RuntimeError, match="power cut"):
        fine_tune(tiny_recipe(tmp_path / "b", fashion_slice, *args), callbacks=[Crash(2)])
    resumed = fine_tune(tiny_recipe(tmp_path / "b", fashion_slice, *args), resume=True)
    a, b = load_file(full.dir / "model.safetensors"), load_file(resumed.dir / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["val_acc"] == full.metrics["val_acc"]
