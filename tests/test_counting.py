"""Tests of rigl.counting: each MicroNet rule on small layers counted by hand."""

import keras
import pytest

from rigl import counting
from rigl import layers as masked_layers


def _connected(layer, input_shape, padding=None):
  """`layer` called on a keras.Input of `input_shape`, after an optional ZeroPadding2D."""
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.ZeroPadding2D(padding)(inputs) if padding is not None else inputs
  keras.Model(inputs, layer(x))
  return layer


def _cost(layer, sparsity, convention, is_first_layer=False):
  geometry = counting.layer_geometry(layer, convention, is_first_layer=is_first_layer)
  return geometry, counting.count_layer(geometry, sparsity, 32, convention)


@pytest.mark.parametrize('convention', counting.CONVENTIONS)
def test_conv_costs_one_multiply_and_add_per_weight_use_plus_relu_and_bias(convention):
  # 3x3x2x4 kernel, half of its 72 weights kept, 8x8 outputs of 4 channels.
  conv = _connected(keras.layers.Conv2D(4, 3, padding='same'), (8, 8, 2))
  geometry, cost = _cost(conv, 0.5, convention)
  assert geometry.output_positions == 64
  assert cost.mults == 36 * 64 + 256  # products + one ReLU per output
  assert cost.adds == 36 * 64  # (dot length - 1) per output + one bias per output
  assert cost.flops == 4864
  assert cost.param_bits == 36 * 32 + 72 + 4 * 32  # kept weights, 1-bit mask, biases


def test_dense_kernel_has_no_mask_bits():
  conv = _connected(keras.layers.Conv2D(4, 3, padding='same'), (8, 8, 2))
  _, cost = _cost(conv, 0.0, 'rigl_2020')
  assert cost.param_bits == 72 * 32 + 4 * 32


def test_masked_layers_count_like_plain_ones():
  plain = _connected(keras.layers.Conv2D(4, 3, padding='same'), (8, 8, 2))
  masked = _connected(masked_layers.MaskedConv2D(4, 3, padding='same'), (8, 8, 2))
  assert _cost(plain, 0.5, 'exact')[1] == _cost(masked, 0.5, 'exact')[1]


def test_fractional_versus_floor_weight_counts():
  # 8x5 = 40 weights at sparsity 0.33: 26.8 kept in 'rigl_2020', 40 - floor(13.2) in 'exact'.
  assert counting.n_nonzero_weights(40, 0.33, 'rigl_2020') == pytest.approx(26.8)
  assert counting.n_nonzero_weights(40, 0.33, 'exact') == 27
  dense = _connected(masked_layers.MaskedDense(5), (8,))
  _, cost = _cost(dense, 0.33, 'exact')
  assert (cost.mults, cost.adds, cost.param_bits) == (27 + 5, 27, 27 * 32 + 40 + 5 * 32)


def test_depthwise_is_a_single_output_convolution_in_rigl_2020():
  # 3x3 kernel on 4 channels, 8x8 outputs.
  depthwise = _connected(keras.layers.DepthwiseConv2D(3, padding='same'), (8, 8, 4))
  _, cost = _cost(depthwise, 0.0, 'rigl_2020')
  assert cost.mults == 36 * 64 + 64  # one output channel: 64 ReLUs
  assert cost.adds == 36 * 64
  assert cost.param_bits == 36 * 32 + 32  # a single bias
  _, cost = _cost(depthwise, 0.0, 'exact')
  assert cost.mults == 9 * 4 * 64 + 4 * 64  # 9 products per output, 256 outputs
  assert cost.adds == 8 * 4 * 64 + 4 * 64
  assert cost.param_bits == 36 * 32 + 4 * 32


def test_strided_output_size_and_first_layer_padding():
  same = dict(strides=2, padding='same')
  conv = _connected(keras.layers.Conv2D(4, 3, **same), (8, 8, 2))
  assert _cost(conv, 0., 'rigl_2020')[0].output_positions == 16  # ceil(8 / 2)^2
  # The first layer counts Keras's implicit padding (1 pixel here): ceil(9 / 2)^2.
  assert _cost(conv, 0., 'rigl_2020', is_first_layer=True)[0].output_positions == 25
  assert _cost(conv, 0., 'exact', is_first_layer=True)[0].output_positions == 16


def test_explicit_padding_counts_for_depthwise_and_first_layers_only():
  padded_depthwise = _connected(keras.layers.DepthwiseConv2D(3, strides=2), (8, 8, 4),
                                padding=((0, 1), (0, 1)))
  assert _cost(padded_depthwise, 0., 'rigl_2020')[0].output_positions == 25
  assert _cost(padded_depthwise, 0., 'exact')[0].output_positions == 16
  padded_conv = _connected(keras.layers.Conv2D(4, 3, strides=2), (8, 8, 2), padding=1)
  assert _cost(padded_conv, 0., 'rigl_2020')[0].output_positions == 16
  assert _cost(padded_conv, 0., 'rigl_2020', is_first_layer=True)[0].output_positions == 25


def test_dense_layer_on_a_sequence():
  dense = _connected(keras.layers.Dense(5), (7, 8))
  assert _cost(dense, 0., 'rigl_2020')[0].output_positions == 1
  geometry, cost = _cost(dense, 0., 'exact')
  assert geometry.output_positions == 7
  assert cost.mults == 40 * 7 + 5 * 7


def test_uncountable_layer_is_a_value_error():
  with pytest.raises(ValueError, match='BatchNormalization.*Conv2D, DepthwiseConv2D and Dense'):
    counting.layer_kind(keras.layers.BatchNormalization())


def test_unknown_convention_is_a_value_error():
  with pytest.raises(ValueError, match="'floor'.*rigl_2020"):
    counting.n_nonzero_weights(10, 0.5, 'floor')


def test_layer_outside_a_model_is_a_value_error():
  conv = keras.layers.Conv2D(4, 3)
  conv.build((None, 8, 8, 2))
  with pytest.raises(ValueError, match='not connected'):
    counting.layer_geometry(conv)
