"""Semantic segmentation: a class for every pixel, from an ImageNet encoder in feature-map mode and a new decoder
(segmentation_models_pytorch), scored by mIoU from one confusion matrix over the whole split."""
