"""Tests of rigl.sparse_utils.get_stats: the figures of the original colabs."""

import keras
import numpy as np
import pytest

from rigl import sparse_utils
from rigl.imagenet_resnet import resnet_model

COUNTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


@pytest.fixture(scope='module')
def mobilenet_layers():
  model = keras.applications.MobileNet(input_shape=(224, 224, 3), weights=None)
  return [layer for layer in model.layers if isinstance(layer, COUNTED)]


def _colab_custom_map(layers, method):
  """The colab kept every depthwise kernel dense, and also conv1 for uniform sparsity."""
  custom = {f'{layer.name}/depthwise_kernel:0': 0.
            for layer in layers if isinstance(layer, keras.layers.DepthwiseConv2D)}
  if method == 'random':
    custom['conv1/kernel:0'] = 0.
  return custom


def _mobilenet_stats(layers, sparsity, method, custom, **kwargs):
  flops, bits, real_sparsity = sparse_utils.get_stats(
      layers, sparsity, method, custom, first_layer_name='conv1',
      last_layer_name='conv_preds', param_size=32, **kwargs)
  return f'{flops / 1e6:.3f}', f'{bits / 8e6:.3f}', f'{real_sparsity:.3f}'


# (method, sparsity) -> (MFLOPs, MB, real sparsity), printed by the original MobileNet colab.
PUBLISHED_MOBILENET = [
    ('erdos_renyi_kernel', 0.75, ('599.144', '4.888', '0.742')),
    ('random', 0.75, ('330.769', '4.894', '0.742')),
    ('erdos_renyi_kernel', 0.85, ('439.152', '3.224', '0.841')),
    ('random', 0.85, ('222.666', '3.229', '0.841')),
    ('erdos_renyi_kernel', 0.9, ('334.134', '2.392', '0.890')),
    ('random', 0.9, ('168.614', '2.396', '0.890')),
    ('erdos_renyi_kernel', 0.95, ('205.281', '1.560', '0.940')),
    ('random', 0.95, ('114.563', '1.563', '0.940')),
]


@pytest.mark.parametrize('method,sparsity,published', PUBLISHED_MOBILENET)
def test_published_mobilenet_figures(mobilenet_layers, method, sparsity, published):
  custom = _colab_custom_map(mobilenet_layers, method)
  assert _mobilenet_stats(mobilenet_layers, sparsity, method, custom) == published


def test_published_dense_mobilenet(mobilenet_layers):
  assert _mobilenet_stats(mobilenet_layers, 0., 'random', None) == (
      '1141.544', '16.864', '0.000')


def test_exact_convention_counts_each_depthwise_channel(mobilenet_layers):
  rigl_2020 = sparse_utils.get_stats(mobilenet_layers, 0., 'random')
  exact = sparse_utils.get_stats(mobilenet_layers, 0., 'random', convention='exact')
  # One bias per depthwise channel instead of one per layer: 13 layers, 4,960 channels.
  assert exact[1] - rigl_2020[1] == 32 * (4960 - 13)
  assert exact[0] != rigl_2020[0]


def _kernel_weights(layers):
  return sum(int(np.prod(layer.weights[0].shape)) for layer in layers)


def _dense_instead_of_90_percent_bits(n):
  """Bits of n weights kept dense, less their bits at 90% (32 per kept weight, 1 per mask)."""
  return 32 * n - (32 * n * (1 - 0.9) + n)


@pytest.mark.parametrize('key', ['conv_pw_3', 'conv_pw_3/kernel', 'conv_pw_3/kernel:0'])
def test_custom_map_takes_layer_and_variable_names(mobilenet_layers, key):
  flops, bits, real_sparsity = sparse_utils.get_stats(mobilenet_layers, 0.9, 'random')
  dense_flops, dense_bits, dense_real_sparsity = sparse_utils.get_stats(
      mobilenet_layers, 0.9, 'random', {key: 0.})
  # Only conv_pw_3 changes (uniform sparsity: the others stay 90%): a 1x1 convolution of
  # 128 to 128 channels at 56x56. Per output value it multiplies and adds 128 + 127
  # times instead of 12.8 + 11.8.
  n, outputs = 128 * 128, 56 * 56 * 128
  assert dense_bits - bits == pytest.approx(_dense_instead_of_90_percent_bits(n))
  assert dense_flops - flops == pytest.approx((128 + 127 - 12.8 - 11.8) * outputs)
  assert real_sparsity - dense_real_sparsity == pytest.approx(
      np.floor(0.9 * n) / _kernel_weights(mobilenet_layers))


@pytest.mark.parametrize('key', ['conv_dw_2', 'conv_dw_2/depthwise_kernel:0'])
def test_depthwise_variable_name(mobilenet_layers, key):
  _, bits, real_sparsity = sparse_utils.get_stats(mobilenet_layers, 0.9, 'random')
  _, dense_bits, dense_real_sparsity = sparse_utils.get_stats(
      mobilenet_layers, 0.9, 'random', {key: 0.})
  n = 3 * 3 * 64  # conv_dw_2's kernel: 3x3 over 64 channels
  assert dense_bits - bits == pytest.approx(_dense_instead_of_90_percent_bits(n))
  assert real_sparsity - dense_real_sparsity == pytest.approx(
      np.floor(0.9 * n) / _kernel_weights(mobilenet_layers))


def test_unknown_custom_key_is_a_value_error(mobilenet_layers):
  with pytest.raises(ValueError, match='No masks are found.*conv_99'):
    sparse_utils.get_stats(mobilenet_layers, 0.9, 'random', {'conv_99/kernel:0': 0.})


def _small_model(width):
  inputs = keras.Input(shape=(8, 8, 3))
  x = keras.layers.Conv2D(int(4 * width), 3, padding='same', name='conv1')(inputs)
  x = keras.layers.Conv2D(int(4 * width), 3, padding='same', name='conv2')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(10, name='conv_preds')(x)
  model = keras.Model(inputs, outputs)
  return [layer for layer in model.layers if isinstance(layer, COUNTED)]


@pytest.mark.parametrize('convention', ['rigl_2020', 'exact'])
def test_width_scales_all_but_the_network_input_and_output(convention):
  scaled = sparse_utils.get_stats(_small_model(1), 0., 'random', width=2.5,
                                  convention=convention)
  assert scaled == sparse_utils.get_stats(_small_model(2.5), 0., 'random',
                                          convention=convention)


def test_real_sparsity_counts_zeros_of_every_kernel():
  layers = _small_model(1)  # 108, 144 and 40 weights.
  _, _, real_sparsity = sparse_utils.get_stats(layers, 0.5, 'random', {'conv1': 0.})
  assert real_sparsity == (72 + 20) / (108 + 144 + 40)


def test_uncountable_layer_is_a_value_error():
  inputs = keras.Input(shape=(4,))
  norm = keras.layers.BatchNormalization(name='bn')
  keras.Model(inputs, norm(inputs))
  with pytest.raises(ValueError, match="'bn'.*BatchNormalization"):
    sparse_utils.get_stats([norm], 0.5, 'random')


def test_unknown_convention_is_a_value_error():
  with pytest.raises(ValueError, match="'micronet'"):
    sparse_utils.get_stats(_small_model(1), 0.5, 'random', convention='micronet')


def _colab_reference_resnet_50():
  """The layer geometry of the ResNet-50 the original colab counted (tensorflow/tpu's Keras
  ResNet-50): only conv1 padded explicitly, stride on the 'same'-padded 3x3 convolution."""
  conv = keras.layers.Conv2D
  inputs = keras.Input((224, 224, 3))
  x = keras.layers.ZeroPadding2D(3)(inputs)
  x = conv(64, 7, strides=2, name='conv1')(x)
  x = keras.layers.MaxPooling2D(3, 2)(keras.layers.ZeroPadding2D(1)(x))
  for stage, (filters, blocks, strides) in enumerate(
      [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=2):
    for block in range(blocks):
      name = f'res{stage}{"abcdef"[block]}_branch'
      block_strides = strides if block == 0 else 1
      y = conv(filters, 1, name=name + '2a')(x)
      y = conv(filters, 3, strides=block_strides, padding='same', name=name + '2b')(y)
      y = conv(4 * filters, 1, name=name + '2c')(y)
      shortcut = conv(4 * filters, 1, strides=block_strides, name=name + '1')(x) \
          if block == 0 else x
      x = keras.layers.Add()([y, shortcut])
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(1000, name='fc1000')(x))
  return [layer for layer in model.layers if isinstance(layer, COUNTED)]


@pytest.fixture(scope='module')
def resnet_50_layers():
  model = resnet_model.resnet_v1_(50, 1000)
  return [layer for layer in model.layers if isinstance(layer, COUNTED)]


@pytest.mark.parametrize('sparsity,method', [(0., 'random'), (0.8, 'erdos_renyi_kernel'),
                                             (0.9, 'erdos_renyi')])
def test_project_resnet_50_counts_as_the_colab_reference_model(resnet_50_layers, sparsity,
                                                               method):
  reference = _colab_reference_resnet_50()
  assert sparse_utils.get_stats(
      resnet_50_layers, sparsity, method, first_layer_name='initial_conv',
      last_layer_name='final_dense') == sparse_utils.get_stats(
          reference, sparsity, method, first_layer_name='conv1', last_layer_name='fc1000')
