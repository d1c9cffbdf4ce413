"""Object detection: boxes and classes from an ImageNet backbone in feature-map mode with an FPN and a torchvision
detector (FCOS, RetinaNet, Faster R-CNN), scored by COCO mAP (torchmetrics with the faster_coco_eval backend)."""
