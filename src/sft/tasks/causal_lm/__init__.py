"""Instruction tuning of causal language models: chat data, loss on the answers only, packing, LoRA, generation."""
