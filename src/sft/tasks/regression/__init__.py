"""Regression of images and texts: one number or several per sample, a new linear head on a pretrained backbone's
pooled vector, with split-conformal prediction intervals."""
