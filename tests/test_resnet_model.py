"""Tests of rigl.imagenet_resnet.resnet_model: structure and names of ResNet v1."""

import keras
import numpy as np
import pytest

from rigl import layers
from rigl.imagenet_resnet import resnet_model


@pytest.fixture(scope='module')
def resnet_50():
  return resnet_model.resnet_v1_(50, 1000, pruning_method='threshold')


def _kernel_layers(model):
  return [l for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]


def test_layer_names_and_shapes_follow_the_tf1_scopes(resnet_50):
  kernels = {l.name: tuple(l.kernel_variable.shape) for l in _kernel_layers(resnet_50)}
  assert len(kernels) == 54
  assert kernels['initial_conv'] == (7, 7, 3, 64)
  assert kernels['bottleneck_projection_block_group_projection_block_group1'] == (
      1, 1, 64, 256)
  assert kernels['bottleneck_2_block_group_projection_block_group2'] == (3, 3, 128, 128)
  assert kernels['bottleneck_1_block_group3_5_1'] == (1, 1, 1024, 256)
  assert kernels['bottleneck_3_block_group4_2_1'] == (1, 1, 512, 2048)
  assert kernels['final_dense'] == (2048, 1000)


def _batch_norm_after(model, layer_name):
  producer = model.get_layer(layer_name)
  return [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)
          and l.input._keras_history.operation is producer]  # pylint: disable=protected-access


def test_batch_norms_are_numbered_in_creation_order(resnet_50):
  norms = {l.name for l in resnet_50.layers if isinstance(l, keras.layers.BatchNormalization)}
  assert norms == {'batch_normalization'} | {f'batch_normalization_{i}' for i in range(1, 53)}
  # A projection is created before its block's bottleneck_1 (indices 1, 11, 24, 43).
  block = 'block_group_projection_block_group3'
  assert _batch_norm_after(resnet_50, 'bottleneck_projection_' + block) == [
      'batch_normalization_24']
  assert _batch_norm_after(resnet_50, 'bottleneck_1_' + block) == ['batch_normalization_25']


def test_stride_is_on_the_3x3_convolution(resnet_50):
  assert resnet_50.get_layer('bottleneck_1_block_group_projection_block_group2').strides == (
      1, 1)
  assert resnet_50.get_layer('bottleneck_2_block_group_projection_block_group2').strides == (
      2, 2)


def test_last_batch_norm_of_a_block_starts_at_zero(resnet_50):
  norm = resnet_50.get_layer(_batch_norm_after(resnet_50, 'bottleneck_3_block_group1_1_1')[0])
  assert not np.any(norm.gamma.numpy())


@pytest.mark.parametrize('prune_first,prune_last', [(True, True), (False, False)])
def test_first_and_last_layer_masking(prune_first, prune_last):
  model = resnet_model.resnet_v1_(18, 10, pruning_method='threshold',
                                  prune_first_layer=prune_first, prune_last_layer=prune_last,
                                  input_shape=(32, 32, 3))
  assert isinstance(model.get_layer('initial_conv'), layers.MaskedConv2D) == prune_first
  assert isinstance(model.get_layer('final_dense'), layers.MaskedDense) == prune_last
  assert isinstance(model.get_layer('residual_1_block_group1_1_1'), layers.MaskedConv2D)


def test_baseline_has_no_masks_and_width_scales_channels():
  model = resnet_model.resnet_v1_(18, 10, width=0.5, input_shape=(32, 32, 3))
  assert not layers.masked_layers(model)
  assert model.get_layer('residual_2_block_group4_1_1').kernel.shape == (3, 3, 256, 256)


def test_forward_pass_gives_logits():
  model = resnet_model.resnet_v1_(18, 10, pruning_method='threshold', input_shape=(64, 64, 3))
  assert model(np.zeros((2, 64, 64, 3), np.float32)).shape == (2, 10)


def test_weight_decay_is_half_the_squared_norm():
  model = resnet_model.resnet_v1_(18, 10, weight_decay=1e-4, input_shape=(32, 32, 3))
  kernel = model.get_layer('final_dense').kernel
  assert float(model.get_layer('final_dense').kernel_regularizer(kernel)) == pytest.approx(
      0.5e-4 * float(np.sum(kernel.numpy()**2)), rel=1e-5)


@pytest.mark.parametrize('bad', [dict(resnet_depth=42), dict(pruning_method='magnitude')])
def test_bad_arguments_are_value_errors(bad):
  kwargs = dict(resnet_depth=18, num_classes=10)
  kwargs.update(bad)
  with pytest.raises(ValueError, match=repr(list(bad.values())[0])):
    resnet_model.resnet_v1_(**kwargs)
