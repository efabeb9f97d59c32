"""Tests of rigl.masking: any Keras model made sparse, trained with `fit`, exported."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import callbacks
from rigl import export
from rigl import layers
from rigl import masking
from rigl import sparse_optimizers as so

SPARSITY = 0.8


def _fit(model, x, y, optimizer=None, steps=6, loss=None, **compile_kwargs):
  optimizer = optimizer or so.SparseRigLOptimizer(
      keras.optimizers.Adam(0.01), default_sparsity=SPARSITY, frequency=2,
      drop_fraction=0.5)
  model.compile(optimizer, loss or keras.losses.MeanSquaredError(), **compile_kwargs)
  optimizer.build(model.trainable_variables)
  initial = [m.numpy().copy() for m in optimizer.masks]
  batch = len(tf.nest.flatten(x)[0]) // steps
  model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
  return optimizer, initial


def _check_sparse(optimizer, initial, sparsity=SPARSITY):
  """Exact (uniform) sparsity of every mask, masks moved, inactive weights zero."""
  masks = [m.numpy() for m in optimizer.masks]
  for mask in masks:
    assert int(np.sum(mask == 0)) == int(np.floor(sparsity * mask.size))
  assert any((a != b).any() for a, b in zip(initial, masks))
  for kernel, mask in zip(optimizer.kernels, masks):
    assert np.all(kernel.numpy()[mask == 0] == 0), kernel.path


def _masked_paths(model):
  return sorted(k.path for k, _ in masking.masked_kernels(model))


# --- Which weights are masked, for every layer kind ---------------------------------

_SEQ = (5, 4)
_IMG2 = (6, 6, 2)
_IMG3 = (4, 4, 4, 2)


class _ScaledDense(keras.layers.Dense):
  """A user's subclass of Dense."""

  def call(self, inputs):
    return 2.0 * super().call(inputs)


LAYER_KINDS = {
    # name: (input shape, layer, the masked weight names under the layer)
    'dense': ((6,), lambda: keras.layers.Dense(8, name='k'), ['k/kernel']),
    'dense_subclass': ((6,), lambda: _ScaledDense(8, name='k'), ['k/kernel']),
    'einsum_dense': (_SEQ, lambda: keras.layers.EinsumDense(
        'abc,cde->abde', output_shape=(5, 2, 3), name='k'), ['k/kernel']),
    'conv1d': (_SEQ, lambda: keras.layers.Conv1D(3, 2, name='k'), ['k/kernel']),
    'conv2d': (_IMG2, lambda: keras.layers.Conv2D(3, 2, name='k'), ['k/kernel']),
    'conv3d': (_IMG3, lambda: keras.layers.Conv3D(3, 2, name='k'), ['k/kernel']),
    'conv1d_transpose': (_SEQ, lambda: keras.layers.Conv1DTranspose(3, 2, name='k'),
                         ['k/kernel']),
    'conv2d_transpose': (_IMG2, lambda: keras.layers.Conv2DTranspose(3, 2, name='k'),
                         ['k/kernel']),
    'conv3d_transpose': (_IMG3, lambda: keras.layers.Conv3DTranspose(3, 2, name='k'),
                         ['k/kernel']),
    'separable_conv1d': (_SEQ, lambda: keras.layers.SeparableConv1D(
        3, 2, depth_multiplier=2, name='k'), ['k/depthwise_kernel', 'k/pointwise_kernel']),
    'separable_conv2d': (_IMG2, lambda: keras.layers.SeparableConv2D(
        3, 2, depth_multiplier=2, name='k'), ['k/depthwise_kernel', 'k/pointwise_kernel']),
    'depthwise_conv1d': (_SEQ, lambda: keras.layers.DepthwiseConv1D(
        2, depth_multiplier=2, name='k'), ['k/kernel']),
    'depthwise_conv2d': (_IMG2, lambda: keras.layers.DepthwiseConv2D(
        2, depth_multiplier=2, name='k'), ['k/kernel']),
    'gru': (_SEQ, lambda: keras.layers.GRU(4, name='k'),
            ['k/gru_cell/kernel', 'k/gru_cell/recurrent_kernel']),
    'lstm': (_SEQ, lambda: keras.layers.LSTM(4, name='k'),
             ['k/lstm_cell/kernel', 'k/lstm_cell/recurrent_kernel']),
    'simple_rnn': (_SEQ, lambda: keras.layers.SimpleRNN(4, name='k'),
                   ['k/simple_rnn_cell/kernel', 'k/simple_rnn_cell/recurrent_kernel']),
    'bidirectional': (_SEQ, lambda: keras.layers.Bidirectional(
        keras.layers.GRU(3), name='k'),
                      ['k/backward_gru/gru_cell/kernel',
                       'k/backward_gru/gru_cell/recurrent_kernel',
                       'k/forward_gru/gru_cell/kernel',
                       'k/forward_gru/gru_cell/recurrent_kernel']),
    'rnn_cell': (_SEQ, lambda: keras.layers.RNN(keras.layers.LSTMCell(3), name='k'),
                 ['k/lstm_cell/kernel', 'k/lstm_cell/recurrent_kernel']),
}


@pytest.mark.parametrize('kind', sorted(LAYER_KINDS))
def test_every_kernel_of_every_layer_kind_is_masked_and_trains_sparse(kind):
  shape, make_layer, expected = LAYER_KINDS[kind]
  keras.utils.set_random_seed(0)
  inputs = keras.Input(shape)
  x = make_layer()(inputs)
  x = keras.layers.Flatten()(x)
  model = keras.Model(inputs, keras.layers.Dense(2, name='head')(x))
  masking.sparsify_model(model, exclude=['head'], verbose=False)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.Adam(0.01), default_sparsity=SPARSITY,
                                     frequency=2, drop_fraction=0.5)
  optimizer.build(model.trainable_variables)
  assert _masked_paths(model) == sorted(expected)
  rng = np.random.RandomState(0)
  x, y = rng.rand(24, *shape).astype('float32'), rng.rand(24, 2).astype('float32')
  model.compile(optimizer, 'mse')
  initial = [m.numpy().copy() for m in optimizer.masks]
  model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
  _check_sparse(optimizer, initial)
  stripped = export.strip_masks(model)
  assert not masking.masked_kernels(stripped)
  np.testing.assert_allclose(stripped(x), model(x), rtol=1e-5, atol=1e-6)


def test_embeddings_are_masked_only_when_asked():
  inputs = keras.Input((5,), dtype='int32')
  x = keras.layers.Embedding(20, 4, name='emb')(inputs)
  model = keras.Model(inputs, keras.layers.Dense(2, name='head')(keras.layers.Flatten()(x)))
  masking.sparsify_model(model, verbose=False)
  assert masking.kernel_spec(model.get_layer('emb').embeddings) is None
  masking.sparsify_model(model, embeddings=True, exclude=['head'], verbose=False)
  assert masking.kernel_spec(model.get_layer('emb').embeddings).kind == 'embedding'
  rng = np.random.RandomState(0)
  x, y = rng.randint(0, 20, (24, 5)), rng.rand(24, 2).astype('float32')
  optimizer, initial = _fit(model, x, y, steps=6)
  # The embedding's gradient is IndexedSlices: its rows are masked too.
  _check_sparse(optimizer, initial)


def test_the_rule_leaves_biases_norms_lora_and_odd_names_dense():

  class Custom(keras.layers.Layer):
    """A custom layer with weights named like a kernel and otherwise."""

    def build(self, input_shape):
      self.my_kernel = self.add_weight(name='my_kernel', shape=(input_shape[-1], 3))
      self.table = self.add_weight(name='table', shape=(input_shape[-1], 3))
      self.scale = self.add_weight(name='scale', shape=(3,))

    def call(self, x):
      return x @ self.my_kernel + x @ self.table * self.scale

  inputs = keras.Input((4,))
  lora = keras.layers.Dense(3, name='lora_dense')
  x = keras.layers.LayerNormalization(name='norm')(lora(inputs))
  model = keras.Model(inputs, Custom(name='custom')(x))
  lora.enable_lora(2)
  masking.sparsify_model(model, verbose=False)
  masked = {v.path for v in model.weights if masking.kernel_spec(v) is not None}
  assert masked == {'custom/my_kernel'}
  rows = {r['weight']: r['masked'] for r in masking.sparsity_report(model)}
  assert rows['lora_dense/lora_kernel_a'] == 'LoRA adapter'
  assert rows['custom/table'] == 'not named like a kernel'
  assert rows['norm/gamma'] == 'bias, normalisation or scale'
  assert rows['lora_dense/kernel'] == 'not trainable'  # frozen by enable_lora
  # A weight outside the rule is picked by its path, a predicate or a glob.
  for include in (['custom/table'], [lambda v: v.name == 'table'], ['*/table']):
    masking.sparsify_model(model, include=include, verbose=False)
    assert {v.path for v in model.weights if masking.kernel_spec(v)} == {'custom/table'}


def test_sparsify_model_says_what_it_masks_and_refuses_bad_input(capsys):
  inputs = keras.Input((4,))
  x = keras.layers.Dense(8, name='fc')(inputs)
  model = keras.Model(inputs, keras.layers.LayerNormalization(name='norm')(x))
  assert masking.sparsify_model(model) is model
  line = capsys.readouterr().out.strip()
  assert line == (f'sparsify_model({model.name}): 1 weights masked, 32 of 56 trainable '
                  'parameters (57.1%); dense: 3 bias, normalisation or scale '
                  '(24 parameters).')
  with pytest.raises(ValueError, match=r"exclude entries \['nope'\] match no weight"):
    masking.sparsify_model(model, exclude=['nope'])
  with pytest.raises(ValueError, match='nothing to mask.*3 bias'):
    masking.sparsify_model(model, exclude=['fc'])
  with pytest.raises(ValueError, match="masks must be one of.*'random'"):
    masking.sparsify_model(model, masks='random')
  with pytest.raises(ValueError, match='no weights yet.*build it first'):
    masking.sparsify_model(keras.Sequential([keras.layers.Dense(3)]))
  with pytest.raises(ValueError, match='needs a Keras model or layer'):
    masking.sparsify_model('model')
  only_norm = keras.Sequential([keras.Input((4,)), keras.layers.LayerNormalization()])
  with pytest.raises(ValueError, match='found nothing to mask'):
    masking.sparsify_model(only_norm)
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5)
  masking.sparsify_model(model, verbose=False)
  optimizer.build(model.trainable_variables)
  with pytest.raises(ValueError, match='masks of .* exist already'):
    masking.sparsify_model(model)


def test_erk_scores_einsum_kernels_as_their_logical_matrix():
  inputs = keras.Input((6, 64))
  attention = keras.layers.MultiHeadAttention(4, 16, name='mha')
  model = keras.Model(inputs, attention(inputs, inputs))
  masking.sparsify_model(model, verbose=False)
  query = masking.kernel_spec(attention.query_dense.kernel)
  output = masking.kernel_spec(attention.output_dense.kernel)
  assert (query.shape, query.erk_shape) == ((64, 4, 16), (64, 64))
  assert (output.shape, output.erk_shape) == ((4, 16, 64), (64, 64))
  assert (output.matrix.fan_in, output.matrix.fan_out) == (64, 64)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.8,
                                     mask_init_method='erdos_renyi_kernel')
  optimizer.build(model.trainable_variables)
  # Four 64x64 matrices: ERK gives each (64 + 64) / 64^2 * eps with eps fitting 20%
  # density overall, i.e. each at 0.8 (the raw query shape would give 0.903).
  for key, sparsity in optimizer.layer_sparsities().items():
    assert sparsity == pytest.approx(0.8, abs=1e-3), key


def test_matrix_view_puts_output_neurons_in_columns():
  transposed = keras.layers.Conv2DTranspose(5, 3)
  transposed.build((None, 8, 8, 2))
  view = masking.matrix_view(transposed, transposed.kernel)
  assert (view.fan_in, view.fan_out) == (3 * 3 * 2, 5)
  kernel = np.random.RandomState(0).rand(3, 3, 5, 2).astype('float32')
  matrix = np.asarray(view.to_matrix(kernel))
  np.testing.assert_array_equal(matrix[:, 4], kernel[:, :, 4, :].reshape(-1))
  np.testing.assert_array_equal(view.from_matrix(matrix, kernel.shape), kernel)


def test_custom_maps_name_layers_paths_and_globs():
  inputs = keras.Input((5, 8))
  x = keras.layers.GRU(8, return_sequences=True, name='gru')(inputs)
  x = keras.layers.Dense(8, name='fc')(x)
  model = keras.Model(inputs, x)
  masking.sparsify_model(model, verbose=False)

  def sparsities(custom):
    optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5,
                                      custom_sparsity_map=custom)
    optimizer.build(model.trainable_variables)
    return optimizer.layer_sparsities()

  assert sparsities({'gru': 0.0}) == {
      'gru/gru_cell': 0.0, 'gru/gru_cell/recurrent_kernel': 0.0, 'fc': 0.5}
  assert sparsities({'gru/gru_cell/recurrent_kernel': 0.9})[
      'gru/gru_cell/recurrent_kernel'] == 0.9
  assert sparsities({'*/recurrent_kernel': 0.9, 'fc': 0.1}) == {
      'gru/gru_cell': 0.5, 'gru/gru_cell/recurrent_kernel': 0.9, 'fc': 0.1}


# --- Any model: nested, shared, subclassed, custom layers, keras_hub ------------------

class TransformerBlock(keras.layers.Layer):
  """A custom layer holding layers, as the keras.io transformer block does."""

  def __init__(self, width, **kwargs):
    super().__init__(**kwargs)
    self.width = width
    self.attention = keras.layers.MultiHeadAttention(2, width // 2)
    self.norm = keras.layers.LayerNormalization()
    self.ffn = keras.layers.Dense(width, activation='relu')

  def call(self, x):
    x = self.norm(x + self.attention(x, x))
    return x + self.ffn(x)

  def get_config(self):
    return dict(super().get_config(), width=self.width)


class SubclassedNet(keras.Model):
  """A user's subclassed model."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.conv = keras.layers.Conv1D(8, 3, padding='same')
    self.block = TransformerBlock(8)
    self.pool = keras.layers.GlobalAveragePooling1D()
    self.head = keras.layers.Dense(3)

  def call(self, x):
    return self.head(self.pool(self.block(self.conv(x))))


def _nested():
  def sub(name):
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name='fc')], name=name)

  inputs = keras.Input((6,))
  return keras.Model(inputs, keras.layers.Dense(3)(sub('second')(sub('first')(inputs))))


def _shared():
  inputs = keras.Input((6,))
  shared = keras.layers.Dense(6, activation='tanh', name='shared')
  return keras.Model(inputs, keras.layers.Dense(3)(shared(shared(inputs))))


def _custom_block():
  inputs = keras.Input((5, 8))
  x = TransformerBlock(8, name='block')(inputs)
  return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))


def _subclassed():
  model = SubclassedNet()
  model(np.zeros((1, 5, 4), 'float32'))
  return model


def _multi_input():
  a, b = keras.Input((4,), name='a'), keras.Input((5, 3), name='b')
  x = keras.layers.Concatenate()([keras.layers.Dense(4)(a),
                                  keras.layers.GRU(4)(b)])
  return keras.Model([a, b], keras.layers.Dense(3)(x))


MODEL_KINDS = {
    'sequential': (lambda: keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation='relu'),
        keras.layers.Dense(3)]), (6,)),
    'nested_repeated_names': (_nested, (6,)),
    'shared_layer': (_shared, (6,)),
    'custom_layer_of_layers': (_custom_block, (5, 8)),
    'subclassed': (_subclassed, (5, 4)),
    'multi_input': (_multi_input, None),
}


def _data(kind, count=24):
  rng = np.random.RandomState(1)
  if kind == 'multi_input':
    x = [rng.rand(count, 4).astype('float32'), rng.rand(count, 5, 3).astype('float32')]
  else:
    x = rng.rand(count, *MODEL_KINDS[kind][1]).astype('float32')
  return x, rng.randint(0, 3, count)


@pytest.mark.parametrize('kind', sorted(MODEL_KINDS))
def test_any_model_trains_sparse_and_exports_after_fit(kind, tmp_path):
  keras.utils.set_random_seed(0)
  model = MODEL_KINDS[kind][0]()
  masking.sparsify_model(model, verbose=False)
  x, y = _data(kind)
  optimizer, initial = _fit(model, x, y,
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  _check_sparse(optimizer, initial)
  expected = model.predict(x, verbose=0)
  # strip_masks after compile and fit; a copy for graph models.
  np.testing.assert_allclose(export.strip_masks(model).predict(x, verbose=0), expected,
                             rtol=1e-5, atol=1e-6)
  # .keras round trip keeps the masks and the optimizer, and resumes.
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path, custom_objects={
      'SubclassedNet': SubclassedNet, 'TransformerBlock': TransformerBlock})
  np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
  for mask, reference in zip(loaded.optimizer.masks, optimizer.masks):
    np.testing.assert_array_equal(mask.numpy(), reference.numpy())
  assert int(loaded.optimizer.iterations.numpy()) == int(optimizer.iterations.numpy())
  loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)
  assert int(loaded.optimizer.iterations.numpy()) > int(optimizer.iterations.numpy())
  _check_sparse(loaded.optimizer, [m.numpy() for m in optimizer.masks])
  # A model of several inputs takes them by the names of its Input layers.
  named = {'a': x[0], 'b': x[1]} if kind == 'multi_input' else {'inputs': x}
  flatbuffer = export.to_tflite(model)
  np.testing.assert_allclose(export.tflite_predict(flatbuffer, named), expected, rtol=1e-4,
                             atol=1e-5)
  export.save_saved_model(model, str(tmp_path / 'saved'))
  serving = tf.saved_model.load(str(tmp_path / 'saved')).signatures['serving_default']
  feeds = {name: tf.constant(value) for name, value in named.items()}
  np.testing.assert_allclose(serving(**feeds)['logits'], expected, rtol=1e-5, atol=1e-5)


def test_masks_from_weights_continue_a_sparse_run_loaded_without_its_optimizer(tmp_path):
  keras.utils.set_random_seed(0)
  model = MODEL_KINDS['sequential'][0]()
  masking.sparsify_model(model, verbose=False)
  x, y = _data('sequential')
  optimizer, _ = _fit(model, x, y,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  path = str(tmp_path / 'model.keras')
  model.save(path)
  plain = keras.models.load_model(path, compile=False)
  masking.sparsify_model(plain, masks='from_weights', verbose=False)
  again = so.SparseRigLOptimizer(keras.optimizers.Adam(0.01), default_sparsity=SPARSITY)
  again.build(plain.trainable_variables)
  for mask, kernel in zip(again.masks, again.kernels):
    np.testing.assert_array_equal(mask.numpy(), kernel.numpy() != 0)
  np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-6)
  del optimizer


@pytest.mark.parametrize('method', ['rigl', 'set', 'static', 'snfs', 'snip', 'dnw', 'prune'])
def test_every_method_trains_recurrent_attention_and_conv_kernels(method):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((6, 4))
  x = keras.layers.Conv1D(8, 2, padding='same')(inputs)
  x = keras.layers.GRU(8, return_sequences=True)(x)
  x = keras.layers.MultiHeadAttention(2, 4)(x, x)
  model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
  masking.sparsify_model(model, verbose=False)
  inner = keras.optimizers.Adam(0.01)
  dst = dict(default_sparsity=SPARSITY, frequency=2, drop_fraction=0.5)
  optimizer = {
      'rigl': lambda: so.SparseRigLOptimizer(inner, **dst),
      'set': lambda: so.SparseSETOptimizer(inner, **dst),
      'static': lambda: so.SparseStaticOptimizer(inner, **dst),
      'snfs': lambda: so.SparseMomentumOptimizer(inner, **dst),
      'snip': lambda: so.SparseSnipOptimizer(inner, SPARSITY, 'random'),
      'dnw': lambda: so.SparseDNWOptimizer(inner, SPARSITY, 'random'),
      'prune': lambda: so.GradualPruningOptimizer(
          inner, begin_step=0, end_step=4, frequency=2, target_sparsity=SPARSITY),
  }[method]()
  rng = np.random.RandomState(0)
  x, y = rng.rand(36, 6, 4).astype('float32'), rng.randint(0, 3, 36)
  model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  # Built by fit itself, as users do (masks made inside fit's first trace).
  after_first_step = []
  record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: (
      after_first_step or after_first_step.extend(m.numpy().copy() for m in optimizer.masks)))
  model.fit(x, y, batch_size=6, epochs=1, verbose=0, callbacks=[record])
  masks = [m.numpy() for m in optimizer.masks]
  assert len(masks) == 8  # conv, GRU kernel and recurrent kernel, q, k, v, o, head
  ones, size = sum(m.sum() for m in masks), sum(m.size for m in masks)
  assert 1 - ones / size == pytest.approx(SPARSITY, abs=0.01)
  if method not in ('static', 'snip'):  # these two keep the masks of their first step
    assert any((a != b).any() for a, b in zip(after_first_step, masks))
  for kernel, mask in zip(optimizer.kernels, masks):
    assert np.all(kernel.numpy()[mask == 0] == 0)


# --- Reports and the fit callback ---------------------------------------------------

def test_report_summaries_and_callback_name_the_masked_set_and_the_whole_model(tmp_path):
  keras.utils.set_random_seed(0)
  model = MODEL_KINDS['custom_layer_of_layers'][0]()
  masking.sparsify_model(model, verbose=False)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.Adam(0.01), default_sparsity=0.9,
                                     frequency=2, drop_fraction=0.5)
  model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = _data('custom_layer_of_layers')
  history = model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                      callbacks=[callbacks.SparsitySummaries(str(tmp_path / 'tb'))])
  rows = masking.sparsity_report(model, optimizer)
  weights = [w for w in model.weights]
  assert [r['weight'] for r in rows] == [w.path for w in weights]
  masked = [r for r in rows if r['masked'] is True]
  assert {r['weight'] for r in masked} == {k.path for k in optimizer.kernels}
  masked_size = sum(r['parameters'] for r in masked)
  zeros = sum(int(np.sum(w.numpy() == 0)) for w in optimizer.kernels)
  inactive = sum(int(np.sum(m.numpy() == 0)) for m in optimizer.masks)
  summaries = optimizer.sparsity_summaries()
  assert float(summaries['sparsity/masked_weights']) == pytest.approx(
      inactive / masked_size)
  total = sum(w.numpy().size for w in model.trainable_weights)
  all_zeros = sum(int(np.sum(w.numpy() == 0)) for w in model.trainable_weights)
  assert float(summaries['sparsity/all_weights']) == pytest.approx(all_zeros / total)
  assert all_zeros / total < inactive / masked_size  # biases and norms are dense
  assert zeros >= inactive
  for row in masked:
    assert row['target'] == pytest.approx(0.9, abs=0.02)
  assert history.history['sparsity/masked_weights'][-1] == pytest.approx(
      float(summaries['sparsity/masked_weights']))
  assert 'mask_update/changed_connections' in history.history
  text = masking.format_sparsity_report(rows)
  assert 'masked: 6 weights' in text
  assert all(row['weight'] in text for row in rows)
  events = list((tmp_path / 'tb').glob('events.out.tfevents.*'))
  assert events


# --- Training conventions -----------------------------------------------------------

def _transformer():
  inputs = keras.Input((5, 8))
  x = TransformerBlock(8, name='block_0')(inputs)
  x = TransformerBlock(8, name='block_1')(x)
  return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))


def test_mirrored_strategy_trains_a_transformer_with_identical_replicas(mirrored_strategy):
  with mirrored_strategy.scope():
    keras.utils.set_random_seed(0)
    model = _transformer()
    masking.sparsify_model(model, verbose=False)
    optimizer = so.SparseRigLOptimizer(keras.optimizers.Adam(0.01), default_sparsity=0.8,
                                       frequency=2, drop_fraction=0.5)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    optimizer.build(model.trainable_variables)
  initial = [m.numpy().copy() for m in optimizer.masks]
  x, y = _data('custom_layer_of_layers', 48)
  model.fit(x, y, batch_size=8, epochs=1, verbose=0)
  for mask, kernel in zip(optimizer.masks, optimizer.kernels):
    first, second = [v.numpy() for v in mask.value.values]
    np.testing.assert_array_equal(first, second)
    for copy in kernel.value.values:
      assert np.all(copy.numpy()[first == 0] == 0)
  assert any((a != m.numpy()).any() for a, m in zip(initial, optimizer.masks))


@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision_keeps_float32_masks_and_exports_in_float32(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    keras.utils.set_random_seed(0)
    model = _transformer()
  finally:
    keras.mixed_precision.set_global_policy('float32')
  masking.sparsify_model(model, verbose=False)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.Adam(0.01), default_sparsity=0.8,
                                     frequency=2, drop_fraction=0.5)
  model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  if policy == 'mixed_float16':
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  optimizer.build(model.trainable_variables)
  initial = [m.numpy().copy() for m in optimizer.masks]
  x, y = _data('custom_layer_of_layers')
  model.fit(x, y, batch_size=4, epochs=1, verbose=0)
  assert {str(m.dtype) for m in optimizer.masks} == {'float32'}
  _check_sparse(optimizer, initial)
  flatbuffer = export.to_tflite(model)
  np.testing.assert_allclose(export.tflite_predict(flatbuffer, x),
                             model.predict(x, verbose=0), rtol=0.05, atol=0.05)


def test_xla_compiled_fit_trains_sparse():
  keras.utils.set_random_seed(0)
  model = _transformer()
  masking.sparsify_model(model, verbose=False)
  x, y = _data('custom_layer_of_layers')
  optimizer, initial = _fit(model, x, y, jit_compile=True,
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  _check_sparse(optimizer, initial)


def test_gradient_accumulation_updates_masks_on_applying_steps_from_the_accumulated_gradient():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name='fc')])
  masking.sparsify_model(model, verbose=False)
  x = tf.constant(np.random.RandomState(0).rand(4, 6), tf.float32)
  targets = [tf.constant(np.random.RandomState(i).rand(4, 8), tf.float32) for i in (1, 2)]
  optimizer = so.SparseRigLOptimizer(
      keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), default_sparsity=0.5,
      frequency=1, begin_step=0, end_step=0, drop_fraction=0.5, grow_init='grad_scale')
  optimizer.build(model.trainable_variables)
  kernel = model.get_layer('fc').kernel
  before_kernel, before_mask = kernel.numpy().copy(), optimizer.masks[0].numpy().copy()

  def gradient(target):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(x) - target))
    return tape.gradient(loss, model.trainable_variables)

  grads = [gradient(t) for t in targets]
  optimizer.apply(grads[0], model.trainable_variables)
  # The first micro-step only accumulates: no weight or mask moved.
  np.testing.assert_array_equal(kernel.numpy(), before_kernel)
  np.testing.assert_array_equal(optimizer.masks[0].numpy(), before_mask)
  optimizer.apply(grads[1], model.trainable_variables)
  mask = optimizer.masks[0].numpy()
  assert mask.sum() == before_mask.sum() and (mask != before_mask).any()
  # RigL's update replaced the step: grown weights hold the mean of the two gradients.
  mean = (grads[0][0].numpy() + grads[1][0].numpy()) / 2
  grown = (mask == 1) & (before_mask == 0)
  np.testing.assert_allclose(kernel.numpy()[grown], mean[grown], rtol=1e-5)
  assert int(optimizer.iterations.numpy()) == 0  # as RigL's update steps do


def test_built_optimizer_from_a_keras_file_refuses_another_model(tmp_path):
  model = MODEL_KINDS['sequential'][0]()
  masking.sparsify_model(model, verbose=False)
  x, y = _data('sequential')
  _fit(model, x, y, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  config = model.optimizer.get_config()
  other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  optimizer = so.SparseRigLOptimizer.from_config(config)
  with pytest.raises(ValueError, match='saved with .* of shape .*another model'):
    optimizer.build(other.trainable_variables)


def test_masked_layers_and_sparsify_model_work_together():
  model = keras.Sequential([keras.Input((4,)), layers.MaskedDense(6, name='masked'),
                            keras.layers.Dense(3, name='plain')])
  masking.sparsify_model(model, verbose=False)
  # The masked layer has its mask; the plain layer's is made with the optimizer.
  assert _masked_paths(model) == [model.get_layer('masked').kernel.path]
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5)
  optimizer.build(model.trainable_variables)
  assert optimizer.keys == ['masked', 'plain']
  assert optimizer.masks[0] is model.get_layer('masked').mask


# --- keras_hub backbones, built from constructor arguments ---------------------------

def _bert():
  import keras_hub  # pylint: disable=g-import-not-at-top
  backbone = keras_hub.models.BertBackbone(
      vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
      max_sequence_length=8)
  inputs = backbone.input  # of any sequence length, as users build on a backbone
  head = keras.layers.Dense(2, name='head')
  return keras.Model(inputs, head(backbone(inputs)['pooled_output']))


def _gpt2():
  import keras_hub  # pylint: disable=g-import-not-at-top
  backbone = keras_hub.models.GPT2Backbone(
      vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
      max_sequence_length=8)
  # Its language-model head reuses the token embedding (tied weights).
  return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _vit():
  import keras_hub  # pylint: disable=g-import-not-at-top
  backbone = keras_hub.models.ViTBackbone(
      image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=16,
      mlp_dim=32)
  inputs = keras.Input((8, 8, 3))
  features = backbone(inputs)[:, 0]
  return keras.Model(inputs, keras.layers.Dense(2, name='head')(features))


def _hub_data(kind, count=16):
  rng = np.random.RandomState(0)
  if kind == 'vit':
    return rng.rand(count, 8, 8, 3).astype('float32')
  x = {'token_ids': rng.randint(0, 50, (count, 8)),
       'padding_mask': np.ones((count, 8), 'int32')}
  if kind == 'bert':
    x['segment_ids'] = np.zeros((count, 8), 'int32')
  return x


@pytest.mark.parametrize('kind', ['bert', 'gpt2', 'vit'])
def test_keras_hub_backbones_train_sparse_and_round_trip(kind, tmp_path):
  keras.utils.set_random_seed(0)
  model = {'bert': _bert, 'gpt2': _gpt2, 'vit': _vit}[kind]()
  masking.sparsify_model(model, embeddings=kind == 'gpt2', verbose=False)
  if kind == 'gpt2':
    embedding = next(w for w in model.weights if w.path.endswith('token_embedding/embeddings'))
    assert masking.kernel_spec(embedding).kind == 'embedding'
  x = _hub_data(kind)
  y = x['token_ids'] if kind == 'gpt2' else np.random.RandomState(1).randint(0, 2, 16)
  optimizer, initial = _fit(model, x, y, steps=4,
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  _check_sparse(optimizer, initial)
  expected = model.predict(x, verbose=0)
  np.testing.assert_allclose(export.strip_masks(model).predict(x, verbose=0), expected,
                             rtol=1e-5, atol=1e-6)
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
  if kind == 'gpt2':
    # keras_hub's tasks compile their own way, so loading does not restore the
    # optimizer: the masks come back from the weights.
    masking.sparsify_model(loaded, embeddings=True, masks='from_weights', verbose=False)
    loaded.compile(so.SparseRigLOptimizer(keras.optimizers.Adam(0.01),
                                          default_sparsity=SPARSITY))
    loaded.optimizer.build(loaded.trainable_variables)
  for mask, reference in zip(loaded.optimizer.masks, optimizer.masks):
    kept = reference.numpy() == 1
    assert np.all(mask.numpy()[~kept] == 0)
    if kind != 'gpt2':  # grown weights that are still exactly zero read as inactive
      np.testing.assert_array_equal(mask.numpy(), reference.numpy())
  if kind == 'bert':  # the file takes the dict predict takes, at any sequence length
    np.testing.assert_allclose(export.tflite_predict(export.to_tflite(model), x),
                               expected, rtol=1e-4, atol=1e-5)
