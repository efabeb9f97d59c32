"""Tests of rigl.sparse_layers' condensed layers: constant-fan-in models condensed, the
same outputs as the masked model in TensorFlow, .keras, SavedModel and LiteRT."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import export
from rigl import layers
from rigl import masking
from rigl import sparse_layers
from rigl import sparse_optimizers as so
from rigl import training_methods
from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-direct-tensorflow-import


def set_constant_fan_in_mask(kernel, fan_in, ablated=(), seed=0):
  """Masks `kernel` so that each output neuron (a column of its matrix view) has exactly
  `fan_in` random inputs, except those in `ablated`, which have none."""
  shape = tuple(kernel.shape)
  rows, columns = int(np.prod(shape[:-1])), shape[-1]
  rng = np.random.RandomState(seed)
  mask = np.zeros((rows, columns), np.float32)
  for column in range(columns):
    if column not in ablated:
      mask[rng.choice(rows, fan_in, replace=False), column] = 1
  masking.set_mask(kernel, mask.reshape(shape))


def _masked_mlp(sizes, activation, use_bias):
  keras.utils.set_random_seed(0)
  return keras.Sequential(
      [keras.Input((sizes[0],))] +
      [layers.MaskedDense(n, activation=activation if i < len(sizes) - 2 else None,
                          use_bias=use_bias, bias_initializer='random_normal',
                          name=f'layer{i}') for i, n in enumerate(sizes[1:])])


def _inputs(*shape):
  return np.random.RandomState(1).randn(*shape).astype(np.float32)


@pytest.mark.parametrize('activation, use_bias', [
    (None, True), ('relu', True), ('tanh', False), ('sigmoid', False)])
def test_condensed_mlp_computes_the_masked_mlp(activation, use_bias):
  model = _masked_mlp((12, 10, 8, 5), activation, use_bias)
  # Hidden layers lose their ablated neurons; the output layer keeps its width.
  for layer, fan_in, ablated in zip(model.layers, (4, 3, 2), ((1, 6), (0,), (3,))):
    set_constant_fan_in_mask(layer.kernel_variable, fan_in, ablated, seed=fan_in)
  condensed = sparse_layers.to_condensed(model, verbose=False)
  assert [type(l) for l in condensed.layers] == [sparse_layers.CondensedDense] * 3
  assert [(l.units, l.active_units, l.fan_in) for l in condensed.layers] == [
      (8, 8, 4), (7, 7, 3), (5, 4, 2)]
  # An ablated sigmoid neuron outputs 0.5 even without a bias: the next layer takes that
  # into a bias of its own.
  assert condensed.layers[1].use_bias == (use_bias or activation == 'sigmoid')
  x = _inputs(6, 12)
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-5)


def test_fan_in_beyond_the_inputs_left_after_upstream_ablation_shrinks_to_them():
  # SRigL's redistribution: layer1's k = 6 was set with all of layer0's 16 neurons
  # counted, but 12 of them are ablated, so 4 inputs remain.
  model = _masked_mlp((10, 16, 3), 'relu', True)
  set_constant_fan_in_mask(model.layers[0].kernel_variable, 2, ablated=range(4, 16))
  set_constant_fan_in_mask(model.layers[1].kernel_variable, 6, seed=1)
  condensed = sparse_layers.to_condensed(model, min_sparsity=0.5, verbose=False)
  first, second = condensed.layers
  left = masking.get_mask(model.layers[1].kernel_variable).numpy()[:4].sum(axis=0).max()
  assert (first.units, second.fan_in) == (4, left)
  x = _inputs(7, 10)
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-5)


def test_both_implementations_agree_on_any_rank():
  layer = layers.MaskedDense(6, bias_initializer='random_normal')
  model = keras.Sequential([keras.Input((3, 9)), layer])
  set_constant_fan_in_mask(layer.kernel_variable, 3, ablated=(2,))
  condensed = sparse_layers.to_condensed(model, verbose=False)
  x = _inputs(2, 3, 9)
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-6)
  with sparse_layers.condensed_implementation(condensed, 'gather'):
    assert condensed.layers[0].implementation == 'gather'
    np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-6)
  assert condensed.layers[0].implementation == 'xla_loop'


def _sparsified_functional():
  """Dense and 1x1 convolutions with ablated neurons: removed where one Dense or 1x1
  convolution reads them (also through dropout), kept where two layers read them."""
  keras.utils.set_random_seed(0)
  images = keras.Input((6, 6, 8))
  x = keras.layers.Conv2D(16, 1, strides=2, activation='relu', name='reduce',
                          bias_initializer='random_normal')(images)
  x = keras.layers.Conv2D(12, 1, name='expand', bias_initializer='random_normal')(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(10, activation='relu', name='hidden',
                         bias_initializer='random_normal')(x)
  x = keras.layers.Dropout(0.3)(x)
  shared = keras.layers.Dense(8, activation='relu', name='shared',
                              bias_initializer='random_normal')(x)
  a = keras.layers.Dense(3, name='head_a')(shared)
  b = keras.layers.Dense(3, name='head_b')(shared)
  model = keras.Model(images, keras.layers.Add()([a, b]))
  masking.sparsify_model(model, exclude=['head_a', 'head_b'], verbose=False)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5)
  optimizer.build(model.trainable_variables)
  for name, fan_in, ablated in (('reduce', 2, (0, 5)), ('expand', 4, ()),
                                ('hidden', 30, (4,)), ('shared', 3, (2, 7))):
    set_constant_fan_in_mask(model.get_layer(name).kernel, fan_in, ablated)
  return model


def test_sparsified_functional_model_with_convolutions(capsys):
  model = _sparsified_functional()
  x = _inputs(3, 6, 6, 8)
  # By default 1x1 convolutions stay as they are, with their ablated neurons.
  condensed = sparse_layers.to_condensed(model)
  assert 'not condensed: 1x1 Conv2D (pointwise_convolutions=False): reduce, expand' in (
      capsys.readouterr().out)
  assert [type(condensed.get_layer(n)) for n in ('reduce', 'expand')] == [
      keras.layers.Conv2D] * 2
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-5)

  condensed = sparse_layers.to_condensed(model, pointwise_convolutions=True, verbose=False)
  by_name = {l.name: l for l in condensed.layers}
  assert isinstance(by_name['reduce'], sparse_layers.CondensedPointwiseConv2D)
  assert by_name['reduce'].units == 14 and by_name['reduce'].strides == (2, 2)
  assert by_name['expand'].input_features == 14
  assert by_name['hidden'].units == 9
  assert (by_name['shared'].units, by_name['shared'].active_units) == (8, 6)
  assert type(by_name['head_a']) is keras.layers.Dense  # pylint: disable=unidiomatic-typecheck
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-5)


def test_refuses_a_layer_that_is_not_constant_fan_in():
  model = _masked_mlp((10, 5, 2), 'relu', True)
  set_constant_fan_in_mask(model.layers[0].kernel_variable, 2)
  mask = model.layers[0].mask.numpy()
  mask[np.flatnonzero(mask[:, 1] == 0)[0], 1] = 1  # neuron 1 gets a third input
  masking.set_mask(model.layers[0].kernel_variable, mask)
  set_constant_fan_in_mask(model.layers[1].kernel_variable, 2)
  with pytest.raises(ValueError, match=r"'layer0' is not constant fan-in: .* 2 to 3 "
                     r'inputs \(4 neurons with 2, 1 neurons with 3\)'):
    sparse_layers.to_condensed(model)


def test_an_unstructured_layer_is_named_with_its_commonest_fan_ins():
  model = _masked_mlp((60, 30, 2), 'relu', True)
  mask = np.triu(np.ones((60, 30), np.float32))  # neuron n has n + 1 inputs: 74% sparse
  masking.set_mask(model.layers[0].kernel_variable, mask)
  set_constant_fan_in_mask(model.layers[1].kernel_variable, 2)
  with pytest.raises(ValueError, match=r"'layer0' is not constant fan-in: .* 1 to 30 "
                     r'inputs \(1 neurons with 1, .*, 1 neurons with 6, and 24 other '
                     r'fan-ins\)'):
    sparse_layers.to_condensed(model)


def test_a_compiled_trained_model_condenses_to_an_uncompiled_copy():
  model = _masked_mlp((12, 10, 5), 'relu', True)
  for layer, fan_in, ablated in zip(model.layers, (4, 3), ((1,), ())):
    set_constant_fan_in_mask(layer.kernel_variable, fan_in, ablated, seed=fan_in)
  # 'scratch' keeps these masks; Keras would compile a clone with this optimizer, which
  # belongs to the masked model's variables.
  config = training_methods.MethodConfig('scratch', initialize_masks=False)
  model.compile(training_methods.make_optimizer(keras.optimizers.SGD(0.1), config), 'mse')
  model.fit(_inputs(8, 12), _inputs(8, 5), epochs=1, verbose=0)
  condensed = sparse_layers.to_condensed(model, verbose=False)
  assert model.compiled and not condensed.compiled
  x = _inputs(4, 12)
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-5)


def test_dense_layers_stay_and_nothing_to_condense_is_refused():
  model = _masked_mlp((6, 5, 2), 'relu', True)
  set_constant_fan_in_mask(model.layers[0].kernel_variable, 2)  # sparsity 0.67
  set_constant_fan_in_mask(model.layers[1].kernel_variable, 4)  # sparsity 0.2
  condensed = sparse_layers.to_condensed(model, min_sparsity=0.5, verbose=False)
  assert [type(l) for l in condensed.layers] == [sparse_layers.CondensedDense,
                                                 layers.MaskedDense]
  with pytest.raises(ValueError, match='nothing to condense.*sparsity 0.67 < min_sparsity'):
    sparse_layers.to_condensed(model, min_sparsity=0.9)
  with pytest.raises(ValueError, match=r'min_sparsity must be in \[0, 1\), got 1.5'):
    sparse_layers.to_condensed(model, min_sparsity=1.5)
  with pytest.raises(ValueError, match="implementation must be one of .* got 'fast'"):
    sparse_layers.CondensedDense(4, 2, implementation='fast')


def _builtin_operators(flatbuffer):
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
  names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith('_')}
  return ({names[code.builtinCode] for code in model.operatorCodes},
          [code.customCode for code in model.operatorCodes if code.customCode])


def test_keras_saved_model_and_tflite_files_compute_the_same(tmp_path):
  model = _sparsified_functional()
  condensed = sparse_layers.to_condensed(model, pointwise_convolutions=True, verbose=False)
  x = _inputs(3, 6, 6, 8)
  expected = model(x).numpy()

  condensed.save(str(tmp_path / 'condensed.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'condensed.keras'))
  np.testing.assert_allclose(loaded(x), expected, rtol=1e-5, atol=1e-5)
  # strip_masks keeps condensed layers: they hold no mask, and are the deployed form.
  assert sum(isinstance(l, sparse_layers.CondensedDense)
             for l in export.strip_masks(condensed).layers) == 4

  export.save_saved_model(condensed, str(tmp_path / 'saved'), outputs='raw')
  serving = tf.saved_model.load(str(tmp_path / 'saved')).signatures['serving_default']
  np.testing.assert_allclose(serving(inputs=tf.constant(x))['outputs'], expected,
                             rtol=1e-5, atol=1e-5)

  flatbuffer = export.to_tflite(condensed)
  operators, custom = _builtin_operators(flatbuffer)
  assert custom == []  # no Flex (or other custom) ops
  assert {'GATHER', 'MUL', 'SUM'} <= operators and 'WHILE' not in operators
  np.testing.assert_allclose(export.tflite_predict(flatbuffer, x), expected,
                             rtol=1e-5, atol=1e-5)
  assert condensed.layers[1].implementation == 'xla_loop'  # restored after the export


def test_a_functional_model_written_with_keras_operations_condenses():
  # `h + a` and `keras.ops.relu` are operations, not layers: nothing of theirs to condense.
  keras.utils.set_random_seed(0)
  inputs = keras.Input((20,))
  h = layers.MaskedDense(20, name='first')(inputs)
  a = layers.MaskedDense(20, name='second')(keras.ops.relu(h))
  model = keras.Model(inputs, layers.MaskedDense(3, name='out')(h + a))
  for layer, seed in zip(model.layers[1:], range(3)):
    if hasattr(layer, 'kernel_variable'):
      set_constant_fan_in_mask(layer.kernel_variable, 4, seed=seed)
  condensed = sparse_layers.to_condensed(model, verbose=False)
  assert sum(isinstance(l, sparse_layers.CondensedDense) for l in condensed.layers) == 3
  x = _inputs(5, 20)
  np.testing.assert_allclose(condensed(x), model(x), rtol=1e-5, atol=1e-5)
