"""Exporting a LoRA model: merged in place for the save (a plain folder transformers alone loads, with the adapted
logits), then unmerged, so the run's model keeps its adapters unchanged."""

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from sft.models.lora import add_lora
from sft.recipe import Lora
from sft.tasks.causal_lm.export import _save_merged


def test_merged_save_is_plain_and_leaves_the_adapters(tmp_path):
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    lm = add_lora(LlamaForCausalLM(config), Lora(lora_rank=4)).eval()
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        adapted = lm(ids).logits
    _save_merged(lm, str(tmp_path))
    assert not [k for k in load_file(tmp_path / "model.safetensors") if "lora" in k or "base_layer" in k]
    with torch.no_grad():
        assert torch.allclose(LlamaForCausalLM.from_pretrained(tmp_path)(ids).logits, adapted, atol=1e-5)
        assert torch.allclose(lm(ids).logits, adapted, atol=1e-5)
    assert all(torch.allclose(before[k], v, atol=1e-6) for k, v in lm.state_dict().items())
    assert not any(getattr(m, "merged", False) for m in lm.modules())
