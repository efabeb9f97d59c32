"""Tests of rigl.imagenet_resnet.mobilenetv2_model: masking and block structure."""

import numpy as np

from rigl import layers
from rigl.imagenet_resnet import mobilenetv2_model


def test_masked_layers_and_shapes():
  model = mobilenetv2_model.mobilenet_v2(1000, pruning_method='threshold')
  masked = {l.name for l in layers.masked_layers(model)}
  assert masked == ({f'expand_1x1_{i}' for i in range(1, 17)} |
                    {f'contraction_1x1_{i}' for i in range(17)} |
                    {'final_1x1_conv', 'final_dense'})
  assert model.get_layer('expand_1x1_1').kernel.shape == (1, 1, 16, 96)
  assert model.get_layer('contraction_1x1_16').kernel.shape == (1, 1, 960, 320)
  assert model.get_layer('final_1x1_conv').kernel.shape == (1, 1, 320, 1280)


def test_forward_pass():
  model = mobilenetv2_model.mobilenet_v2(10, width=0.5, input_shape=(32, 32, 3))
  assert not layers.masked_layers(model)
  assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 10)
