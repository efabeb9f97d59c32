"""Tests of rigl.sparse_layers: truly sparse dense layers against the masked ones."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import layers
from rigl import masking
from rigl import sparse_layers
from rigl import sparse_optimizers as so


def _masked_mlp(sparsity=0.7, seed=0, sizes=(20, 32, 16, 4)):
  keras.utils.set_random_seed(seed)
  model = keras.Sequential(
      [keras.Input((sizes[0],))] +
      [layers.MaskedDense(n, activation='relu' if i < len(sizes) - 2 else None,
                          name=f'layer{i + 1}') for i, n in enumerate(sizes[1:])])
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    masking.set_mask(layer.kernel_variable,
                     (rng.rand(*layer.mask.shape) > sparsity).astype(np.float32))
  return model


@pytest.mark.parametrize('shape, nnz', [((40, 30), 300), ((300, 400), 500)],
                         ids=['dense_weight_gradient', 'gathered_weight_gradient'])
def test_outputs_and_gradients_equal_the_masked_layer(shape, nnz):
  keras.utils.set_random_seed(0)
  masked = layers.MaskedDense(shape[1], name='m')
  masked.build((None, shape[0]))
  mask = np.zeros(shape[0] * shape[1], np.float32)
  mask[np.random.RandomState(1).choice(mask.size, nnz, replace=False)] = 1
  masking.set_mask(masked.kernel_variable, mask.reshape(shape))
  sparse = sparse_layers.to_sparse_execution(
      keras.Sequential([keras.Input((shape[0],)), masked])).layers[0]
  assert sparse.gather_gradient == (nnz / mask.size < 0.009)
  x = tf.random.stateless_normal((3, 5, shape[0]), [1, 2])  # rank 3: flattened inside
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ys, ym = sparse(x), masked(x)
    loss_s, loss_m = tf.reduce_sum(ys**2), tf.reduce_sum(ym**2)
  np.testing.assert_allclose(ys, ym, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss_s, x), tape.gradient(loss_m, x),
                             rtol=1e-4, atol=1e-4)
  dense_grad = tape.gradient(loss_m, masked.kernel_variable)
  np.testing.assert_allclose(
      tape.gradient(loss_s, sparse.values),
      tf.gather(tf.reshape(dense_grad, [-1]), sparse.kernel_positions()),
      rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(tape.gradient(loss_s, sparse.bias),
                             tape.gradient(loss_m, masked.bias), rtol=1e-5, atol=1e-5)


def test_conversions_keep_the_function_and_files_round_trip(tmp_path):
  masked = _masked_mlp()
  sparse = sparse_layers.to_sparse_execution(masked)
  assert [type(l).__name__ for l in sparse.layers] == ['SparseDense'] * 3
  assert [l.nnz for l in sparse.layers] == [int(l.mask.numpy().sum()) for l in masked.layers]
  x = np.random.RandomState(0).randn(6, 20).astype(np.float32)
  np.testing.assert_allclose(sparse(x), masked(x), rtol=1e-5, atol=1e-6)
  back = sparse_layers.to_masked_execution(sparse)
  np.testing.assert_allclose(back(x), masked(x), rtol=1e-5, atol=1e-6)
  for a, b in zip(back.layers, masked.layers):
    np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
  sparse.save(str(tmp_path / 'sparse.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'sparse.keras'))
  np.testing.assert_allclose(loaded(x), sparse(x), rtol=1e-6)


def _train(model, optimizer, steps, start=0, seed=3):
  """Trains on batches start..start+steps-1 of one fixed stream; returns the masks after each."""
  variables = model.trainable_variables
  batches = [np.random.RandomState([seed, i]) for i in range(start, start + steps)]
  xs = [rng.randn(16, 20).astype(np.float32) for rng in batches]
  ys = [rng.randint(0, 4, 16) for rng in batches]
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  history = []
  for x, y in zip(xs, ys):
    step(x, y)
    history.append([np.asarray(tf.convert_to_tensor(m)) for m in optimizer.masks])
  return history


@pytest.mark.parametrize('make, masks_move', [
    (lambda o: so.SparseRigLOptimizer(o, frequency=3, drop_fraction=0.3,
                                      drop_fraction_anneal='cosine', end_step=30,
                                      grow_init='grad_scale'), True),
    (lambda o: so.SparseSETOptimizer(o, frequency=3, drop_fraction=0.3, end_step=30), True),
    # Static re-initialises its weakest weights in place: same masks, changed weights.
    (lambda o: so.SparseStaticOptimizer(o, frequency=3, drop_fraction=0.2, end_step=30),
     False),
], ids=['rigl', 'set', 'static'])
def test_sparse_training_equals_masked_training(make, masks_move):
  masked = _masked_mlp()
  sparse = sparse_layers.to_sparse_execution(masked)
  masked_optimizer = make(keras.optimizers.SGD(0.05, momentum=0.9))
  sparse_optimizer = make(keras.optimizers.SGD(0.05, momentum=0.9))
  masked_history = _train(masked, masked_optimizer, 24)
  sparse_history = _train(sparse, sparse_optimizer, 24)
  changed = 0
  for step, (m, s) in enumerate(zip(masked_history, sparse_history)):
    for a, b in zip(m, s):
      np.testing.assert_array_equal(b, a, err_msg=f'step {step}')
    changed += int(any((a != b).any() for a, b in zip(m, masked_history[0])))
  assert (changed > 0) == masks_move
  assert int(sparse_optimizer.iterations) == int(masked_optimizer.iterations)
  # Same active weights (inactive ones only exist in the masked model).
  x = np.random.RandomState(9).randn(5, 20).astype(np.float32)
  np.testing.assert_allclose(sparse(x), masked(x), rtol=1e-4, atol=1e-4)
  # The optimizer keeps slots for the active weights only.
  for layer, slots in zip(sparse.layers, sparse_optimizer._slots):
    assert all(slot.variable.shape == (layer.nnz,) for slot in slots)


def test_model_fit_with_sparse_layers():
  sparse = sparse_layers.to_sparse_execution(_masked_mlp(0.8))
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), frequency=4,
                                     drop_fraction=0.3)
  sparse.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=['accuracy'])
  rng = np.random.RandomState(0)
  x = rng.randn(256, 20).astype(np.float32)
  y = x[:, :4].argmax(1)
  before = [l.indices.numpy().copy() for l in sparse.layers]
  history = sparse.fit(x, y, batch_size=32, epochs=8, verbose=0)
  assert history.history['accuracy'][-1] > 0.5
  assert any((l.indices.numpy() != b).any() for l, b in zip(sparse.layers, before))
  assert [l.indices.shape[0] for l in sparse.layers] == [l.nnz for l in sparse.layers]


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
  def fresh():
    model = sparse_layers.to_sparse_execution(_masked_mlp())
    optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.05, momentum=0.9),
                                       frequency=3, drop_fraction=0.3)
    optimizer.build(model.trainable_variables)
    return model, optimizer

  model, optimizer = fresh()
  _train(model, optimizer, 12)
  expected = [v.numpy() for v in model.weights]
  model, optimizer = fresh()
  _train(model, optimizer, 7)  # stops between two mask updates (steps 6 and 9)
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / 'c'))
  model, optimizer = fresh()
  tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).assert_consumed()
  _train(model, optimizer, 5, start=7)
  for got, want in zip(model.weights, expected):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=got.path)


@pytest.mark.parametrize('make, message', [
    (lambda o: so.SparseMomentumOptimizer(o), 'SparseMomentumOptimizer needs dense'),
    (lambda o: so.SparseSETOptimizer(o, grow_init='initial_dist'), 'initial_dist'),
])
def test_methods_that_need_dense_weights_are_refused(make, message):
  sparse = sparse_layers.to_sparse_execution(_masked_mlp())
  with pytest.raises(ValueError, match=message):
    make(keras.optimizers.SGD(0.1)).build(sparse.trainable_variables)


def test_sparse_execution_refuses_distribution(mirrored_strategy):
  with mirrored_strategy.scope():
    sparse = sparse_layers.to_sparse_execution(_masked_mlp())
    with pytest.raises(ValueError, match='default strategy only'):
      so.SparseRigLOptimizer(keras.optimizers.SGD(0.1)).build(sparse.trainable_variables)


def test_rigl_on_sparse_layers_unscales_the_loss_scale():
  # grad_scale grows connections at the loss gradient: a loss scale must not reach them.
  def grown(loss_scale_factor):
    sparse = sparse_layers.to_sparse_execution(_masked_mlp())
    optimizer = so.SparseRigLOptimizer(
        keras.optimizers.SGD(0.05, loss_scale_factor=loss_scale_factor), frequency=1,
        drop_fraction=0.3, grow_init='grad_scale')
    variables = sparse.trainable_variables
    rng = np.random.RandomState(4)
    x, y = rng.randn(16, 20).astype(np.float32), rng.randint(0, 4, 16)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
      loss = optimizer.scale_loss(loss_fn(y, sparse(x)))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return [l.dense_kernel().numpy() for l in sparse.layers]

  for scaled, plain in zip(grown(1024.0), grown(None)):
    np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-7)


def test_sparse_layers_train_under_mixed_precision():
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    sparse = sparse_layers.to_sparse_execution(_masked_mlp())
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert sparse.layers[0].compute_dtype == 'float16'
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.05), frequency=2,
                                     drop_fraction=0.3)
  sparse.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  assert isinstance(sparse.optimizer, keras.optimizers.LossScaleOptimizer)
  rng = np.random.RandomState(0)
  x = rng.randn(64, 20).astype(np.float32)
  before = [l.indices.numpy().copy() for l in sparse.layers]
  sparse.fit(x, x[:, :4].argmax(1), batch_size=16, epochs=2, verbose=0)
  assert any((l.indices.numpy() != b).any() for l, b in zip(sparse.layers, before))
  outputs = sparse(x[:4])
  assert outputs.dtype == 'float16' and np.all(np.isfinite(outputs.numpy()))
