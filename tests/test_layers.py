"""Tests of rigl.layers: the original's masked layers, which carry their kernel's mask."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import layers
from rigl import masking
from rigl import sparse_optimizers as so


def _random_mask(shape, seed=0):
  return (np.random.RandomState(seed).rand(*shape) > 0.6).astype('float32')


@pytest.mark.parametrize('masked_class,plain_class,kwargs,input_shape', [
    (layers.MaskedDense, keras.layers.Dense, dict(units=5), (3, 7)),
    (layers.MaskedConv2D, keras.layers.Conv2D, dict(filters=4, kernel_size=3, padding='same'),
     (2, 6, 6, 3)),
    (layers.MaskedDepthwiseConv2D, keras.layers.DepthwiseConv2D,
     dict(kernel_size=3, depth_multiplier=2), (2, 6, 6, 3)),
])
def test_masked_layer_computes_its_parent_on_the_kernel_its_optimizer_keeps_sparse(
    masked_class, plain_class, kwargs, input_shape):
  masked = masked_class(**kwargs, bias_initializer='random_normal')
  plain = plain_class(**kwargs)
  x = tf.random.stateless_normal(input_shape, [1, 2])
  masked(x)
  plain(x)
  mask = _random_mask(masked.mask.shape)
  masked.mask.assign(mask)
  kernel = masked.kernel_variable.numpy()
  assert id(masked.mask) not in {id(v) for v in masked.trainable_variables}
  assert masking.get_mask(masked.kernel_variable) is masked.mask
  so.SparseStaticOptimizer(keras.optimizers.SGD(0.1)).build(masked.trainable_variables)
  # Building the optimizer zeroed the inactive weights.
  np.testing.assert_array_equal(masked.kernel_variable.numpy(), kernel * mask)
  plain.set_weights([kernel * mask, masked.bias.numpy()])
  np.testing.assert_allclose(masked(x), plain(x), rtol=1e-5, atol=1e-6)

  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(masked(x)**2)
  sparse_point_grad = tape.gradient(loss, masked.kernel_variable)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(plain(x)**2)
  dense_grad = tape.gradient(loss, plain.trainable_variables[0])
  # At the sparse point the kernel's gradient is the dense gradient with respect to the
  # masked kernel, non-zero at inactive positions too: RigL's grow score.
  np.testing.assert_allclose(sparse_point_grad, dense_grad, rtol=1e-4, atol=1e-5)
  assert np.count_nonzero(sparse_point_grad.numpy()[mask == 0]) > 0


def test_set_mask_zeroes_the_inactive_weights():
  layer = layers.MaskedConv2D(3, 3)
  layer.build((None, 5, 5, 2))
  kernel = layer.kernel_variable.numpy()
  mask = _random_mask(layer.mask.shape, 1)
  masking.set_mask(layer.kernel_variable, mask)
  np.testing.assert_array_equal(layer.mask.numpy(), mask)
  np.testing.assert_array_equal(layer.kernel_variable.numpy(), kernel * mask)


def test_get_mask_finds_masks_of_kernels_only():
  model = keras.Sequential([keras.Input((4,)), layers.MaskedDense(3, name='a'),
                            keras.layers.Dense(2, name='b')], name='net')
  found = {v.path: layers.get_mask(v) is not None for v in model.trainable_variables}
  assert found == {'net/a/kernel': True, 'net/a/bias': False,
                   'net/b/kernel': False, 'net/b/bias': False}
  pairs = layers.get_mask_kernel_pairs(model)
  assert [(m.path, k.path) for m, k in pairs] == [('net/a/mask', 'net/a/kernel')]
  assert masking.kernel_spec(model.get_layer('a').kernel_variable).key == 'a'


def test_unbuilt_layer_has_no_masks_yet():
  with pytest.raises(ValueError, match='not built'):
    layers.get_mask_kernel_pairs(keras.Sequential([layers.MaskedDense(3, name='lazy')]))


def test_saved_model_file_round_trip(tmp_path):
  model = keras.Sequential([keras.Input((4,)), layers.MaskedDense(3, name='a')])
  mask = _random_mask((4, 3), 2)
  masking.set_mask(model.get_layer('a').kernel_variable, mask)
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded.get_layer('a'), layers.MaskedDense)
  np.testing.assert_array_equal(loaded.get_layer('a').mask.numpy(), mask)
  assert masking.get_mask(loaded.get_layer('a').kernel_variable) is loaded.get_layer('a').mask
  x = np.ones((1, 4), 'float32')
  np.testing.assert_allclose(loaded(x), model(x))


def test_plain_equivalent_folds_the_mask():
  layer = layers.MaskedDense(3, name='a')
  layer.build((None, 4))
  mask = _random_mask((4, 3), 3)
  layer.mask.assign(mask)
  plain_class, config, weights = layer.plain_equivalent()
  assert plain_class is keras.layers.Dense and config['units'] == 3
  np.testing.assert_array_equal(weights[0], layer.kernel_variable.numpy() * mask)
  assert len(weights) == 2


def test_a_deleted_model_frees_its_variables():
  model = keras.Sequential([keras.Input((300,)), layers.MaskedDense(200, name='a')])
  kernel = weakref.ref(model.get_layer('a').kernel_variable)
  mask = weakref.ref(model.get_layer('a').mask)
  del model
  gc.collect()
  assert kernel() is None
  assert mask() is None
