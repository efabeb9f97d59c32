"""Tests of rigl.imagenet_resnet.mobilenetv1_model: masking, names, published dense cost."""

import keras
import numpy as np

from rigl import flops
from rigl import layers
from rigl.imagenet_resnet import mobilenetv1_model


def test_only_pointwise_and_last_layers_are_masked():
  model = mobilenetv1_model.mobilenet_v1(1000, pruning_method='threshold')
  masked = [l.name for l in layers.masked_layers(model)]
  assert masked == [f'contraction_1x1_{i}' for i in range(13)] + ['final_dense']
  depthwise = [l.name for l in model.layers if isinstance(l, keras.layers.DepthwiseConv2D)]
  assert depthwise == [f'depthwise_nxn_{i}' for i in range(13)]
  norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert len(norms) == 27 and norms[-1].name == 'batch_normalization_26'


def test_make_divisible():
  assert mobilenetv1_model.make_divisible(32 * 0.75) == 24
  assert mobilenetv1_model.make_divisible(10) == 16  # Never below the divisor.
  assert mobilenetv1_model.make_divisible(int(0.5 * 64), divisor=1) == 32


def test_published_dense_cost():
  # README: the dense MobileNet-v1 costs 1.14e9 FLOPs and 16.864 MB.
  stats = flops.count_run(model_architecture='mobilenet_v1', training_method='baseline')
  assert f'{stats["dense_inference_flops"] / 1e6:.3f}' == '1141.544'
  assert f'{stats["dense_size_mb"]:.3f}' == '16.864'


def test_forward_pass_and_unmasked_last_layer():
  model = mobilenetv1_model.mobilenet_v1(10, pruning_method='threshold', width=0.25,
                                         prune_last_layer=False, input_shape=(64, 64, 3))
  assert not isinstance(model.get_layer('final_dense'), layers.MaskedDense)
  assert model(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 10)
