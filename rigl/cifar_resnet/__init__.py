"""CIFAR-10: the pre-activation WideResNet, its input pipeline and training script."""
