"""Tests of rigl.layers: masked forward pass, straight-through gradient, conversion."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import layers


def _random_mask(shape, seed=0):
  return (np.random.RandomState(seed).rand(*shape) > 0.6).astype('float32')


@pytest.mark.parametrize('masked_class,plain_class,kwargs,input_shape', [
    (layers.MaskedDense, keras.layers.Dense, dict(units=5), (3, 7)),
    (layers.MaskedConv2D, keras.layers.Conv2D, dict(filters=4, kernel_size=3, padding='same'),
     (2, 6, 6, 3)),
    (layers.MaskedDepthwiseConv2D, keras.layers.DepthwiseConv2D,
     dict(kernel_size=3, depth_multiplier=2), (2, 6, 6, 3)),
])
def test_forward_uses_masked_kernel_and_gradient_is_dense(masked_class, plain_class, kwargs,
                                                          input_shape):
  masked = masked_class(**kwargs, bias_initializer='random_normal')
  plain = plain_class(**kwargs)
  x = tf.random.stateless_normal(input_shape, [1, 2])
  masked(x)
  plain(x)
  mask = _random_mask(masked.mask.shape)
  masked.mask.assign(mask)
  plain.set_weights([masked.kernel_variable.numpy() * mask, masked.bias.numpy()])
  np.testing.assert_allclose(masked(x), plain(x), rtol=1e-5, atol=1e-6)

  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(masked(x)**2)
  masked_grad = tape.gradient(loss, masked.kernel_variable)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(plain(x)**2)
  dense_grad = tape.gradient(loss, plain.trainable_variables[0])
  # The kernel receives the gradient with respect to the masked kernel: dense, with
  # non-zero values at inactive positions too.
  np.testing.assert_allclose(masked_grad, dense_grad, rtol=1e-4, atol=1e-5)
  assert np.count_nonzero(masked_grad.numpy()[mask == 0]) > 0
  assert id(masked.mask) not in {id(v) for v in masked.trainable_variables}


def test_inactive_kernel_values_do_not_change_output():
  layer = layers.MaskedConv2D(3, 3)
  x = tf.random.stateless_normal((1, 5, 5, 2), [3, 4])
  layer(x)
  mask = _random_mask(layer.mask.shape, 1)
  layer.mask.assign(mask)
  before = layer(x).numpy()
  kernel = layer.kernel_variable.numpy()
  kernel[mask == 0] = 1e3
  layer.kernel_variable.assign(kernel)
  np.testing.assert_allclose(layer(x), before, rtol=1e-6)


def test_get_mask_finds_masks_of_kernels_only():
  model = keras.Sequential([keras.Input((4,)), layers.MaskedDense(3, name='a'),
                            keras.layers.Dense(2, name='b')], name='net')
  found = {v.path: layers.get_mask(v) is not None for v in model.trainable_variables}
  assert found == {'net/a/kernel': True, 'net/a/bias': False,
                   'net/b/kernel': False, 'net/b/bias': False}
  pairs = layers.get_mask_kernel_pairs(model)
  assert [(m.path, k.path) for m, k in pairs] == [('net/a/mask', 'net/a/kernel')]


def test_unbuilt_layer_has_no_masks_yet():
  with pytest.raises(ValueError, match='not built'):
    layers.get_mask_kernel_pairs(keras.Sequential([layers.MaskedDense(3, name='lazy')]))


def test_sparsify_model_converts_chosen_layers_and_keeps_weights():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
  x = keras.layers.DepthwiseConv2D(3, name='dw')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(6, activation='relu', name='fc1')(x)
  outputs = keras.layers.Dense(2, name='fc2')(x)
  model = keras.Model(inputs, outputs)
  sparse = layers.sparsify_model(model, exclude=['conv'])
  kinds = {l.name: type(l).__name__ for l in sparse.layers if l.weights}
  assert kinds == {'conv': 'Conv2D', 'dw': 'MaskedDepthwiseConv2D', 'fc1': 'MaskedDense',
                   'fc2': 'MaskedDense'}
  x = np.random.RandomState(0).rand(2, 8, 8, 3).astype('float32')
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-5)
  only_fc = layers.sparsify_model(model, include=['fc2'])
  assert [l.name for l in layers.masked_layers(only_fc)] == ['fc2']


def test_sparsify_model_rejects_unknown_layers_and_subclassed_models():
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name='d')])
  with pytest.raises(ValueError, match=r"\['nope'\].*\['d'\]"):
    layers.sparsify_model(model, exclude=['nope'])

  class Custom(keras.Model):

    def call(self, x):
      return x

  with pytest.raises(ValueError, match='Custom'):
    layers.sparsify_model(Custom())


def test_saved_model_file_round_trip(tmp_path):
  model = keras.Sequential([keras.Input((4,)), layers.MaskedDense(3, name='a')])
  mask = _random_mask((4, 3), 2)
  model.get_layer('a').mask.assign(mask)
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded.get_layer('a'), layers.MaskedDense)
  np.testing.assert_array_equal(loaded.get_layer('a').mask.numpy(), mask)
  x = np.ones((1, 4), 'float32')
  np.testing.assert_allclose(loaded(x), model(x))


def test_sparsify_model_converts_nested_models():
  keras.utils.set_random_seed(0)
  block = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name='inner_fc')],
                           name='block')
  inputs = keras.Input((4,))
  x = keras.layers.Dense(6, activation='relu', name='outer_fc')(inputs)
  model = keras.Model(inputs, block(x))
  sparse = layers.sparsify_model(model)
  assert sorted(l.name for l in layers.masked_layers(sparse)) == ['inner_fc', 'outer_fc']
  x = np.random.RandomState(0).rand(3, 4).astype('float32')
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-6)
  kept_inner = layers.sparsify_model(model, exclude=['inner_fc'])
  assert [l.name for l in layers.masked_layers(kept_inner)] == ['outer_fc']


def test_sparsify_model_refuses_layers_it_cannot_rebuild_and_ambiguous_names():

  class Block(keras.layers.Layer):

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.fc = keras.layers.Dense(3, name='hidden_fc')

    def call(self, x):
      return self.fc(x)

  inputs = keras.Input((4,))
  model = keras.Model(inputs, Block(name='custom_block')(inputs))
  with pytest.raises(ValueError, match="'custom_block'.*Block"):
    layers.sparsify_model(model)

  def sub(name):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name='fc')], name=name)

  inputs = keras.Input((4,))
  model = keras.Model(inputs, sub('second')(sub('first')(inputs)))
  with pytest.raises(ValueError, match=r"\['fc'\] name several layers"):
    layers.sparsify_model(model, include=['fc'])


def test_a_deleted_model_frees_its_variables():
  model = keras.Sequential([keras.Input((300,)), layers.MaskedDense(200, name='a')])
  kernel = weakref.ref(model.get_layer('a').kernel_variable)
  mask = weakref.ref(model.get_layer('a').mask)
  del model
  gc.collect()
  assert kernel() is None
  assert mask() is None
