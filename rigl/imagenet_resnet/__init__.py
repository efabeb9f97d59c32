"""ImageNet models (ResNet v1, MobileNet v1 and v2) and, later, their training script."""
