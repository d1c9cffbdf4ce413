"""Multi-label classification of images and texts: several labels per sample (tags, attributes, topics), a new linear
head of one logit per label on a pretrained backbone's pooled vector, per-label thresholds tuned on validation and a
false-negative-rate guarantee by conformal risk control."""
