"""Pretrained backbones under one contract (`backbone.Backbone`): images from timm/torchvision, texts from
transformers, LoRA from peft. Nothing here knows what a backbone will be fine-tuned for."""
