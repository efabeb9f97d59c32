"""Tests of rigl.sparse_utils: mask counts, sparsity distributions, validation."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import sparse_utils

Mask = collections.namedtuple('Mask', ['name', 'shape'])


@pytest.mark.parametrize('shape,sparsity', [((30, 40), .5), ((1, 2, 1, 4), .8), ((3,), .1)])
def test_random_masks_of_same_shape_have_same_count(shape, sparsity):
  var = tf.Variable(tf.zeros(shape), name='layer/mask')
  first = sparse_utils.get_mask_random(var, sparsity, tf.float32)
  second = sparse_utils.get_mask_random(var, sparsity, tf.float32)
  assert float(tf.reduce_sum(first)) == float(tf.reduce_sum(second))


@pytest.mark.parametrize('shape,sparsity,ones', [((30, 4), .5, 60), ((1, 2, 1, 4), .8, 2),
                                                 ((30,), .1, 27)])
def test_random_mask_has_exact_number_of_ones(shape, sparsity, ones):
  mask = sparse_utils.get_mask_random(Mask('l/mask:0', shape), sparsity, tf.float32)
  assert int(tf.reduce_sum(mask)) == ones
  assert set(np.unique(mask.numpy())) <= {0.0, 1.0}


@pytest.mark.parametrize('dtype', [tf.int32, tf.float32, tf.int64, tf.float64])
def test_random_mask_dtype(dtype):
  assert sparse_utils.get_mask_random(Mask('l/mask:0', (3, 4)), .5, dtype).dtype == dtype


def test_get_n_zeros_is_floor():
  assert sparse_utils.get_n_zeros(10, 0.55) == 5
  assert sparse_utils.get_n_zeros(30, 0.1) == 3


def test_calculate_sparsity_over_all_masks():
  masks = [tf.constant([[1., 0.], [0., 0.]]), tf.constant([1., 1., 0., 0.])]
  assert float(sparse_utils.calculate_sparsity(masks)) == pytest.approx(5 / 8)


def test_mask_extract_name_fn():
  assert sparse_utils.mask_extract_name_fn(
      'resnet_model/initial_conv/mask:0') == 'resnet_model/initial_conv'
  assert sparse_utils.mask_extract_name_fn('dense/mask') == 'dense'
  with pytest.raises(ValueError, match='kernel:0'):
    sparse_utils.mask_extract_name_fn('dense/kernel:0')


def _three_masks():
  return [Mask('var1/mask:0', (2, 3)), Mask('var2/mask:0', (2, 3)), Mask('var3/mask:0', (1, 1, 3))]


@pytest.mark.parametrize('sparsity', [0., .4, .9])
def test_uniform_with_custom_layer(sparsity):
  result = sparse_utils.get_sparsities(_three_masks(), 'random', sparsity, {'var1': .8})
  assert result == {'var1/mask:0': .8, 'var2/mask:0': sparsity, 'var3/mask:0': sparsity}


@pytest.mark.parametrize('sparsity', [.1, .4, .9])
@pytest.mark.parametrize('method', ['erdos_renyi', 'erdos_renyi_kernel'])
def test_erdos_renyi_keeps_custom_layer(sparsity, method):
  masks = [Mask('var1/mask:0', (2, 4)), Mask('var2/mask:0', (2, 3)), Mask('var3/mask:0', (1, 1, 3))]
  result = sparse_utils.get_sparsities(masks, method, sparsity, {'var3': .8})
  assert result['var3/mask:0'] == .8


@pytest.mark.parametrize('shape1,shape2,sparsity', [
    ((2, 3), (2, 3), .5), ((1, 1, 2, 3), (1, 1, 2, 3), .3), ((8, 6), (4, 3), .7),
    ((80, 4), (20, 20), .8), ((2, 6), (2, 3), .8)])
def test_erdos_renyi_budget_and_proportionality(shape1, shape2, sparsity):
  masks = [Mask('var1/mask:0', shape1), Mask('var2/mask:0', shape2)]
  result = sparse_utils.get_sparsities(masks, 'erdos_renyi', sparsity, {})
  s1, s2 = result['var1/mask:0'], result['var2/mask:0']
  n1, n2 = np.prod(shape1), np.prod(shape2)
  zeros = sparse_utils.get_n_zeros(n1, s1) + sparse_utils.get_n_zeros(n2, s2)
  uniform_zeros = sparse_utils.get_n_zeros(n1, sparsity) + sparse_utils.get_n_zeros(n2, sparsity)
  assert abs(zeros - uniform_zeros) <= 2
  f1 = sum(shape1[-2:]) / np.prod(shape1[-2:])
  f2 = sum(shape2[-2:]) / np.prod(shape2[-2:])
  assert (1 - s1) / f1 == pytest.approx((1 - s2) / f2)


def test_erk_makes_small_layers_dense_and_keeps_budget():
  masks = [Mask('first/mask:0', (1, 1, 4, 4)), Mask('mid/mask:0', (3, 3, 64, 64)),
           Mask('last/mask:0', (256, 10))]
  result = sparse_utils.get_sparsities(masks, 'erdos_renyi_kernel', 0.95, {})
  assert result['first/mask:0'] == 0.0
  sizes = {m.name: np.prod(m.shape) for m in masks}
  kept = sum(sizes[n] * (1 - s) for n, s in result.items())
  uniform_kept = sum(n - sparse_utils.get_n_zeros(n, 0.95) for n in sizes.values())
  assert kept == pytest.approx(uniform_kept, abs=2)
  assert all(0 <= s < 1 for s in result.values())
  # ERK densities are proportional to sum(shape) / prod(shape) among non-dense layers.
  raw = {m.name: sum(m.shape) / np.prod(m.shape) for m in masks[1:]}
  ratios = [(1 - result[n]) / r for n, r in raw.items()]
  assert ratios[0] == pytest.approx(ratios[1])


def test_erk_power_scale_zero_is_uniform():
  masks = [Mask('a/mask:0', (3, 3, 8, 16)), Mask('b/mask:0', (100, 10))]
  result = sparse_utils.get_sparsities(masks, 'erdos_renyi_kernel', 0.7, {}, erk_power_scale=0)
  assert result['a/mask:0'] == pytest.approx(0.7, abs=1e-3)
  assert result['b/mask:0'] == pytest.approx(0.7, abs=1e-3)


def test_names_of_keras_variables_tf_variables_and_records():
  layer = keras.layers.Dense(3, name='dense_for_names')
  layer.build((None, 4))
  keras_var = layer.kernel
  tf_var = tf.Variable(tf.zeros((4, 3)), name='layer1/mask')
  record = Mask('layer2/mask:0', [4, 3])
  shaped = Mask('layer3/mask:0', tf.TensorShape([4, 3]))
  assert sparse_utils.mask_name(keras_var) == 'dense_for_names/kernel'
  result = sparse_utils.get_sparsities([tf_var, record, shaped], 'random', 0.5, {'layer2': .1})
  assert result == {'layer1/mask:0': .5, 'layer2/mask:0': .1, 'layer3/mask:0': .5}


def test_str_method_uses_table():
  masks = [Mask('resnet_model/initial_conv/mask:0', (7, 7, 3, 64)),
           Mask('resnet_model/final_dense/mask:0', (2048, 1000))]
  result = sparse_utils.get_sparsities(masks, 'str', 0.9023, {})
  assert set(result) == {m.name for m in masks}
  assert all(0 <= s < 1 for s in result.values())
  with pytest.raises(ValueError, match='0.5'):
    sparse_utils.get_sparsities(masks, 'str', 0.5, {})


@pytest.mark.parametrize('sparsity', [1.0, 1.5, -0.1, 'high', None])
def test_bad_default_sparsity(sparsity):
  with pytest.raises(ValueError, match='default_sparsity'):
    sparse_utils.get_sparsities(_three_masks(), 'random', sparsity, {})


def test_bad_custom_sparsity_value():
  with pytest.raises(ValueError, match=r"custom_sparsity_map\['var1'\].*1.2"):
    sparse_utils.get_sparsities(_three_masks(), 'random', .5, {'var1': 1.2})


def test_unknown_method():
  with pytest.raises(ValueError, match="'uniform'.*erdos_renyi_kernel"):
    sparse_utils.get_sparsities(_three_masks(), 'uniform', .5, {})


def test_custom_key_matching_no_layer():
  with pytest.raises(ValueError, match="No masks are found for the following names: \\['var9'\\]"):
    sparse_utils.get_sparsities(_three_masks(), 'random', .5, {'var9': .5})


def test_mask_init_fn_assigns_every_mask():
  masks = [tf.Variable(tf.ones((10, 10)), name='a/mask'),
           tf.Variable(tf.ones((3, 3, 4, 8)), name='b/mask')]
  init = sparse_utils.get_mask_init_fn(masks, 'random', 0.75, {'b': 0.5},
                                       mask_fn=sparse_utils.seeded_mask_random(3))
  init()
  summary = {k: float(v) for k, v in sparse_utils.sparsity_summary(masks).items()}
  assert summary == {'global': pytest.approx((75 + 144) / (100 + 288)), 'a': 0.75, 'b': 0.5}


def test_masks_of_one_layer_name_are_refused():
  masks = [tf.Variable(tf.ones((4, 4)), name='first/dense/mask'),
           tf.Variable(tf.ones((4, 4)), name='second/dense/mask')]
  with pytest.raises(ValueError, match=r"\['dense'\] name several masks"):
    sparse_utils.get_sparsities(masks, 'erdos_renyi_kernel', 0.5,
                                extract_name_fn=sparse_utils.layer_name_of_mask)
  # Keyed by their full scope (the TF1 default), the same masks are distinct.
  sparsities = sparse_utils.get_sparsities(masks, 'erdos_renyi_kernel', 0.5)
  assert sorted(sparsities.values()) == [0.5, 0.5]


@pytest.mark.parametrize('scale', [float('nan'), float('inf'), -0.5, '1'])
def test_erk_power_scale_must_be_a_finite_non_negative_number(scale):
  with pytest.raises(ValueError, match='erk_power_scale'):
    sparse_utils.get_sparsities(_three_masks(), 'erdos_renyi_kernel', .5,
                                erk_power_scale=scale)


def test_seeded_masks_are_reproducible():
  var = tf.Variable(tf.ones((20, 20)), name='a/mask')
  first = sparse_utils.seeded_mask_random(7)(var, 0.9, tf.float32)
  second = sparse_utils.seeded_mask_random(7)(var, 0.9, tf.float32)
  np.testing.assert_array_equal(first, second)
