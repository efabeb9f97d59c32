"""Tests of structured masks (rigl.structure): constant fan-in with SRigL's neuron
ablation, and N:M, through every sparse optimizer.

Expectations are computed here from the shapes and by plain numpy versions of the rules
(SRigL's ablation as its code writes it, greedy N:M), never by the code under test.
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import masking
from rigl import sparse_optimizers as so
from rigl import structure
from rigl import training_methods

import test_sparse_optimizers  # pylint: disable=g-bad-import-order

SPARSITY = 0.75


# --- Independent versions of the rules ------------------------------------------------

def _top(scores, count):
  """A bool mask of the `count` largest entries of `scores` (distinct scores)."""
  chosen = np.zeros(scores.size, bool)
  chosen[np.argsort(-scores.ravel(), kind='stable')[:count]] = True
  return chosen.reshape(scores.shape)


def _budget(size, sparsity):
  return size - int(np.floor(sparsity * size))


def _srigl_active_neurons(drop, grow, n_keep, n_prune, budget, gamma):
  """SRigL's `_get_neurons_to_ablate` (use_sparse_const_fan_in_for_ablation) on
  `(fan_in, fan_out)` scores: the neurons that stay."""
  fan_in, fan_out = drop.shape
  salient = _top(drop, n_keep) | _top(grow, n_prune)
  counts = {neuron: int(salient[:, neuron].sum()) for neuron in range(fan_out)}
  ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
  threshold = max(1, int(gamma * (budget // fan_out)))
  min_neurons = budget // fan_in
  if ranked[min_neurons][1] < threshold:
    threshold = ranked[min_neurons][1]
  return np.array([counts[n] >= threshold for n in range(fan_out)])


def _constant_fan_in_update(drop, grow, n_keep, n_prune, budget, gamma):
  """SRigL's drop and grow, per neuron, with its ablation; kept weights are cut to k by
  their drop score."""
  fan_in, fan_out = drop.shape
  if gamma:
    active = _srigl_active_neurons(drop, grow, n_keep, n_prune, budget, gamma)
  else:
    active = np.ones(fan_out, bool)
  k = budget // active.sum()
  best = _top(np.where(active, drop, -np.inf), n_keep)
  kept = np.zeros_like(best)
  grown = np.zeros_like(best)
  for neuron in np.flatnonzero(active):
    candidates = np.flatnonzero(best[:, neuron])
    order = candidates[np.argsort(-drop[candidates, neuron])]
    kept[order[:k], neuron] = True
    free = np.flatnonzero(~kept[:, neuron])
    room = k - kept[:, neuron].sum()
    grown[free[np.argsort(-grow[free, neuron])[:room]], neuron] = True
  return kept, grown


def _greedy_n_of_m(scores, taken, count, n, m):
  """The best `count` scores outside `taken`, each taken when its group of `m` inputs
  of one neuron has fewer than `n`."""
  fan_in, fan_out = scores.shape
  filled = taken.reshape(fan_in // m, m, fan_out).sum(1)
  chosen = np.zeros_like(taken)
  for flat in np.argsort(-np.where(taken, -np.inf, scores).ravel()):
    if chosen.sum() == count:
      break
    row, neuron = divmod(flat, fan_out)
    if not taken[row, neuron] and filled[row // m, neuron] < n:
      chosen[row, neuron] = True
      filled[row // m, neuron] += 1
  return chosen


def _n_of_m_update(drop, grow, n_keep, n_prune, n, m):
  best = _top(drop, n_keep)
  kept = _greedy_n_of_m(np.where(best, drop, -np.inf), np.zeros_like(best), n_keep, n, m)
  return kept, _greedy_n_of_m(grow, kept, n_prune, n, m)


# --- The selection rules, against the independent versions ----------------------------

def _rules(name, shape, sparsity, gamma=0.0):
  view = masking.MatrixView(tuple(range(len(shape))), shape[0], shape[1])
  return structure.for_layer(name, 'w', shape, view, sparsity, gamma)


@pytest.mark.parametrize('gamma', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('seed', range(4))
def test_constant_fan_in_drop_and_grow_is_srigls_rule(gamma, seed):
  rng = np.random.RandomState(seed)
  shape, sparsity = (30, 12), 0.8
  budget = _budget(360, sparsity)
  drop, grow = rng.rand(*shape).astype('float32'), rng.rand(*shape).astype('float32')
  # Some neurons have small weights and gradients: the ones ablation should find.
  drop[:, :4] *= 0.01
  grow[:, :4] *= 0.01
  n_ones = (budget // 12) * 12
  n_prune = int(n_ones * 0.3)
  kept, grown = _rules('constant_fan_in', shape, sparsity, gamma).drop_and_grow(
      tf.constant(drop), tf.constant(grow), n_ones - n_prune, n_prune)
  expected_kept, expected_grown = _constant_fan_in_update(
      drop, grow, n_ones - n_prune, n_prune, budget, gamma)
  np.testing.assert_array_equal(kept.numpy(), expected_kept)
  np.testing.assert_array_equal(grown.numpy(), expected_grown)
  fan_ins = (expected_kept | expected_grown).sum(0)
  active = fan_ins > 0
  assert set(fan_ins[active]) == {budget // active.sum()}
  if gamma == 1.0:
    assert not active[:4].any()  # the weak neurons are ablated ...
    assert budget // active.sum() > budget // 12  # ... and their weights feed the others


@pytest.mark.parametrize('n, m', [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize('seed', range(3))
def test_n_of_m_drop_and_grow_is_greedy_within_groups(n, m, seed):
  rng = np.random.RandomState(seed)
  shape = (32, 6)
  mask = _greedy_n_of_m(rng.rand(*shape), np.zeros(shape, bool), 40, n, m)
  drop = np.where(mask, rng.rand(*shape), 0.0).astype('float32')
  grow = rng.rand(*shape).astype('float32')
  kept, grown = _rules(f'{n}:{m}', shape, 0.8).drop_and_grow(
      tf.constant(drop), tf.constant(grow), 28, 12)
  expected_kept, expected_grown = _n_of_m_update(drop, grow, 28, 12, n, m)
  np.testing.assert_array_equal(kept.numpy(), expected_kept)
  np.testing.assert_array_equal(grown.numpy(), expected_grown)
  assert grown.numpy().sum() == 12  # the mask really changes, within the groups


def test_select_draws_the_structure_at_the_rounded_count():
  rng = np.random.RandomState(0)
  scores = rng.rand(32, 6).astype('float32')
  # 192 weights at sparsity 0.8: 39 kept unstructured; 6 per neuron = 36 constant fan-in.
  fan_in_rules = _rules('constant_fan_in', (32, 6), 0.8)
  assert fan_in_rules.count == 36
  selected = fan_in_rules.select(tf.constant(scores), fan_in_rules.count).numpy()
  for neuron in range(6):
    np.testing.assert_array_equal(np.flatnonzero(selected[:, neuron]),
                                  np.sort(np.argsort(-scores[:, neuron])[:6]))
  n_of_m_rules = _rules('2:4', (32, 6), 0.8)
  assert n_of_m_rules.count == 39
  np.testing.assert_array_equal(
      n_of_m_rules.select(tf.constant(scores), 39).numpy(),
      _greedy_n_of_m(scores, np.zeros((32, 6), bool), 39, 2, 4))


def test_ablation_keeps_at_least_budget_over_fan_in_neurons():
  # Every neuron below the threshold: SRigL keeps the budget // fan_in + 1 most salient.
  rng = np.random.RandomState(0)
  shape, sparsity = (10, 40), 0.9  # budget 40: 1 input per neuron, 4 neurons minimum
  drop, grow = rng.rand(*shape).astype('float32'), rng.rand(*shape).astype('float32')
  kept, grown = _rules('constant_fan_in', shape, sparsity, 1.0).drop_and_grow(
      tf.constant(drop), tf.constant(grow), 28, 12)
  fan_ins = (kept.numpy() | grown.numpy()).sum(0)
  active = np.flatnonzero(fan_ins)
  assert len(active) >= 40 // 10
  assert set(fan_ins[active]) == {40 // len(active)}
  assert 40 // len(active) <= 10
  expected_kept, _ = _constant_fan_in_update(drop, grow, 28, 12, 40, 1.0)
  np.testing.assert_array_equal(kept.numpy(), expected_kept)


# --- Every optimizer on every layer kind ------------------------------------------------

def _mixed_model():
  """A convolution, a transposed and a depthwise convolution, a GRU, an EinsumDense and
  a Dense head; every fan-in is a multiple of 8."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((6, 6, 4))
  x = keras.layers.Conv2D(8, 2, padding='same', activation='relu', name='conv')(inputs)
  x = keras.layers.Conv2DTranspose(8, 2, padding='same', activation='relu',
                                   name='deconv')(x)
  x = keras.layers.DepthwiseConv2D(2, depth_multiplier=2, padding='same',
                                   name='depthwise')(x)
  x = keras.layers.Reshape((36, 16))(x)
  x = keras.layers.GRU(8, return_sequences=True, name='gru')(x)
  x = keras.layers.EinsumDense('abc,cde->abde', output_shape=(36, 2, 4), name='einsum')(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name='head')(keras.layers.Flatten()(x)))
  return masking.sparsify_model(model, verbose=False)


def _matrix(key, mask):
  """A kernel's mask as `(fan_in, fan_out)`, output neurons in columns, by hand."""
  if key == 'deconv':  # (kh, kw, out, in)
    mask = mask.transpose(0, 1, 3, 2)
  if key == 'einsum':  # 'abc,cde->abde': c is contracted
    return mask.reshape(mask.shape[0], -1)
  return mask.reshape(-1, mask.shape[-1])


def _check_structure(name, key, mask, budget, ablates):
  matrix = _matrix(key, mask) > 0.5
  if name == 'constant_fan_in':
    fan_ins = matrix.sum(0)
    active = fan_ins > 0
    if not ablates:
      assert active.all(), key
    k = budget // active.sum() if budget else fan_ins.max()
    assert set(fan_ins[active]) == {k}, (key, fan_ins)
  else:
    n, m = (int(part) for part in name.split(':'))
    groups = matrix.reshape(matrix.shape[0] // m, m, matrix.shape[1]).sum(1)
    assert groups.max() <= n, key


DST = dict(default_sparsity=SPARSITY, frequency=2, drop_fraction=0.5, end_step=100)
METHODS = {
    'rigl': lambda o, s: so.SparseRigLOptimizer(o, structure=s, **DST),
    'set': lambda o, s: so.SparseSETOptimizer(o, structure=s, **DST),
    'snfs': lambda o, s: so.SparseMomentumOptimizer(o, structure=s, **DST),
    'static': lambda o, s: so.SparseStaticOptimizer(o, structure=s, **DST),
    'snip': lambda o, s: so.SparseSnipOptimizer(o, SPARSITY, 'random', structure=s),
    'dnw': lambda o, s: so.SparseDNWOptimizer(o, SPARSITY, 'random', structure=s),
    'prune': lambda o, s: so.GradualPruningOptimizer(
        o, begin_step=0, end_step=10, frequency=2, target_sparsity=SPARSITY, structure=s),
}


@pytest.mark.parametrize('method, name', [
    (method, name) for method in METHODS for name in ('constant_fan_in', '2:4')] + [
        ('rigl', '4:8')])
def test_every_mask_obeys_its_structure_after_every_step(method, name):
  model = _mixed_model()
  optimizer = METHODS[method](keras.optimizers.Adam(0.01), name)
  optimizer.build(model.trainable_variables)
  keys = optimizer.keys
  sizes = [int(np.prod(m.shape)) for m in optimizer.masks]
  budgets = [_budget(size, SPARSITY) for size in sizes]
  ablates = method in ('rigl', 'set', 'snfs')
  if method == 'prune':
    budgets = [None] * len(keys)  # the budget follows the schedule
  rng = np.random.RandomState(0)
  x = rng.rand(16, 6, 6, 4).astype('float32')
  y = rng.randint(0, 3, 16)
  variables = model.trainable_variables
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  masks = [m.numpy() for m in optimizer.masks]
  if method != 'snip':  # it starts dense and prunes at its first step
    for key, mask, budget in zip(keys, masks, budgets):
      _check_structure(name, key, mask, budget, ablates=False)
  initial_counts = [m.sum() for m in masks]
  changes = 0
  for _ in range(8):
    step()
    new_masks = [m.numpy() for m in optimizer.masks]
    changes += sum((a != b).any() for a, b in zip(masks, new_masks))
    masks = new_masks
    for key, mask, budget in zip(keys, masks, budgets):
      _check_structure(name, key, mask, budget, ablates and key != 'head')
    if method in ('rigl', 'set', 'snfs', 'static') and ':' in name:
      # N:M drop-and-grow keeps each layer's count.
      assert [m.sum() for m in masks] == initial_counts
  if method == 'static':
    assert changes == 0
  else:
    assert changes > 0
  for kernel, mask in zip(optimizer.kernels, optimizer.masks):
    assert np.all(kernel.numpy()[mask.numpy() == 0] == 0), kernel.path


# --- Ablation in a model ----------------------------------------------------------------

def _mlp():
  keras.utils.set_random_seed(0)
  return test_sparse_optimizers._mlp()  # pylint: disable=protected-access


def _data():
  x, y = test_sparse_optimizers._fit_data()  # pylint: disable=protected-access
  return x[:256], y[:256]


def _fit_rigl(epochs=2, strategy=None, **kwargs):
  with strategy.scope() if strategy else contextlib.nullcontext():
    model = _mlp()
    optimizer = so.SparseRigLOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9), default_sparsity=0.8, frequency=2,
        drop_fraction=0.3, structure='constant_fan_in', **kwargs)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = _data()
  model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False)
  return model, optimizer


def _active_neurons(optimizer):
  return {key: int((mask.numpy().sum(0) > 0).sum())
          for key, mask in zip(optimizer.keys, optimizer.masks)}


def test_ablation_spares_the_last_layer_and_keeps_the_minimum():
  # gamma_sal = 1: a neuron needs as many salient weights as its whole fan-in.
  _, optimizer = _fit_rigl(ablation_threshold=1.0)
  active = _active_neurons(optimizer)
  # Budgets at 0.8: layer1 128 of 20x32, layer2 103 of 32x16, layer3 13 of 16x4.
  assert 128 // 20 <= active['layer1'] < 32
  assert 103 // 32 <= active['layer2'] < 16
  assert active['layer3'] == 4  # the last masked weight keeps every neuron
  for key, budget in (('layer1', 128), ('layer2', 103), ('layer3', 13)):
    fan_ins = optimizer.masks[optimizer.keys.index(key)].numpy().sum(0)
    assert set(fan_ins[fan_ins > 0]) == {budget // active[key]}, key
  summaries = optimizer.sparsity_summaries()
  assert {key: int(summaries[f'active_neurons/{key}']) for key in active} == active


def test_never_ablate_names_the_layers_kept_whole():
  _, optimizer = _fit_rigl(ablation_threshold=1.0, never_ablate=['layer1', 'layer3'])
  active = _active_neurons(optimizer)
  assert (active['layer1'], active['layer3']) == (32, 4)
  assert active['layer2'] < 16


def test_no_ablation_at_threshold_zero():
  _, optimizer = _fit_rigl(ablation_threshold=0.0)
  assert _active_neurons(optimizer) == {'layer1': 32, 'layer2': 16, 'layer3': 4}


# --- What is reported ---------------------------------------------------------------------

@pytest.mark.parametrize('name, expected', [
    # uniform 0.8 by hand: budgets 128 of 640, 103 of 512, 13 of 64.
    ('constant_fan_in', {'layer1': 1 - 4 * 32 / 640, 'layer2': 1 - 6 * 16 / 512,
                         'layer3': 1 - 3 * 4 / 64}),
    ('2:4', {'layer1': 1 - 128 / 640, 'layer2': 1 - 103 / 512, 'layer3': 1 - 13 / 64}),
])
def test_achieved_sparsity_is_reported_exactly(name, expected):
  model = _mlp()
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.8,
                                    structure=name)
  optimizer.build(model.trainable_variables)
  assert optimizer.target_sparsities() == pytest.approx(expected, abs=1e-12)
  summaries = optimizer.sparsity_summaries()
  for key, sparsity in expected.items():
    assert float(summaries[f'sparsity/{key}']) == pytest.approx(sparsity, abs=1e-6)
  targets = {row['weight'].split('/')[-2]: row['target']
             for row in masking.sparsity_report(model, optimizer) if row['masked'] is True}
  assert targets == pytest.approx(expected, abs=1e-12)


def test_n_of_m_caps_a_denser_layer_and_leaves_dense_layers_dense(caplog):
  model = _mlp()
  optimizer = so.SparseRigLOptimizer(
      keras.optimizers.SGD(0.1), default_sparsity=0.3, structure='1:4',
      custom_sparsity_map={'layer3': 0.0})
  with caplog.at_level('WARNING'):
    optimizer.build(model.trainable_variables)
  assert "'1:4' holds at most 160 of the 640 weights of layer1" in caplog.text
  assert optimizer.target_sparsities() == {'layer1': 0.75, 'layer2': 0.75, 'layer3': 0.0}
  assert optimizer.masks[2].numpy().all()


# --- Distribution and resume ------------------------------------------------------------

def test_mirrored_replicas_get_identical_structured_masks(mirrored_strategy):
  # Constant fan-in with ablation: every structured step (N:M's too) runs in it.
  devices = mirrored_strategy.extended.worker_devices
  mirrored = _fit_rigl(epochs=1, strategy=mirrored_strategy, ablation_threshold=1.0)[1]
  single = _fit_rigl(epochs=1, strategy=tf.distribute.OneDeviceStrategy(devices[0]),
                     ablation_threshold=1.0)[1]
  assert _active_neurons(single)['layer1'] < 32  # neurons were ablated
  for mask, reference in zip(mirrored.masks, single.masks):
    first, second = [v.numpy() for v in mask.value.values]
    np.testing.assert_array_equal(first, second)
    # The scores were the all-reduced gradient: the masks one device makes.
    np.testing.assert_array_equal(first, reference.numpy())
  assert float(mirrored.changed_connections.numpy()) > 0


@pytest.mark.parametrize('make', [
    lambda o: so.SparseRigLOptimizer(o, default_sparsity=0.8, frequency=3,
                                     drop_fraction=0.3, structure='constant_fan_in',
                                     ablation_threshold=1.0),
    lambda o: so.SparseSETOptimizer(o, default_sparsity=0.8, frequency=3,
                                    drop_fraction=0.3, structure='2:4'),
], ids=['rigl_constant_fan_in', 'set_2_4'])
def test_resumed_structured_run_equals_uninterrupted_run(make, tmp_path):
  x, y = _data()
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def fresh():
    model = _mlp()
    optimizer = make(keras.optimizers.SGD(0.05, momentum=0.9))
    optimizer.build(model.trainable_variables)
    return model, optimizer

  def train(model, optimizer, start, steps):
    variables = model.trainable_variables

    @tf.function
    def step(xb, yb):
      with tf.GradientTape() as tape:
        loss = loss_fn(yb, model(xb))
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for i in range(start, start + steps):
      j = (i * 32) % 256
      step(x[j:j + 32], y[j:j + 32])

  model, optimizer = fresh()
  train(model, optimizer, 0, 24)
  uninterrupted = [v.numpy() for v in model.weights]
  assert min(_active_neurons(optimizer).values()) > 0

  model, optimizer = fresh()
  train(model, optimizer, 0, 11)
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / 'ckpt'))
  model, optimizer = fresh()
  tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).assert_consumed()
  train(model, optimizer, 11, 13)
  for expected, actual in zip(uninterrupted, [v.numpy() for v in model.weights]):
    np.testing.assert_array_equal(actual, expected)


# --- Bad arguments ------------------------------------------------------------------------

@pytest.mark.parametrize('value', ['2:2', '4:2', '0:4', '2-4', 'fan_in', 2, None])
def test_a_bad_structure_names_itself_and_the_choices(value):
  for make in (lambda: so.SparseRigLOptimizer(keras.optimizers.SGD(), structure=value),
               lambda: training_methods.MethodConfig('rigl', structure=value)):
    with pytest.raises(ValueError, match=r"structure .*is not valid; allowed: .*"
                       r"constant_fan_in.*'N:M'") as error:
      make()
    assert repr(value) in str(error.value)


@pytest.mark.parametrize('make, match', [
    (lambda: so.SparseRigLOptimizer(keras.optimizers.SGD(), structure='2:4',
                                    ablation_threshold=0.3),
     r"ablation_threshold=0.3 .*structure='2:4'"),
    (lambda: so.SparseStaticOptimizer(keras.optimizers.SGD(), structure='constant_fan_in',
                                      ablation_threshold=0.3),
     'SparseStaticOptimizer'),
    (lambda: so.SparseRigLOptimizer(keras.optimizers.SGD(), structure='constant_fan_in',
                                    ablation_threshold=1.5),
     r'ablation_threshold must be a fraction in \[0, 1\].*1.5'),
    (lambda: so.SparseRigLOptimizer(keras.optimizers.SGD(), never_ablate=['layer3']),
     "never_ablate.*structure='unstructured'"),
    (lambda: so.GradualPruningOptimizer(keras.optimizers.SGD(), end_step=10,
                                        threshold_decay=0.5, structure='2:4'),
     'threshold_decay=0.5'),
    (lambda: so.SparseSnipOptimizer(keras.optimizers.SGD(), 0.8, 'random',
                                    ablation_threshold=0.3),
     'ablation_threshold'),
])
def test_bad_structure_arguments_are_clear_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize('name, sparsity, match', [
    ('2:8', 0.8, "'2:8': 'layer1' has fan-in 20 .*not a multiple of M=8"),
    ('constant_fan_in', 0.99, "'layer1' keeps 7 weights at sparsity 0.99, fewer than its "
     '32 output neurons'),
])
def test_a_kernel_that_cannot_take_the_structure_is_named(name, sparsity, match):
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(), default_sparsity=sparsity,
                                     structure=name)
  with pytest.raises(ValueError, match=match):
    optimizer.build(_mlp().trainable_variables)


def test_never_ablate_naming_no_weight_is_refused_at_build():
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(), default_sparsity=0.8,
                                     structure='constant_fan_in', never_ablate=['nope'])
  with pytest.raises(ValueError, match="never_ablate entry 'nope' names no masked weight"):
    optimizer.build(_mlp().trainable_variables)


def test_sparse_execution_refuses_structured_masks():
  config = training_methods.MethodConfig('rigl', end_sparsity=0.8, structure='2:4')
  with pytest.raises(ValueError, match="unstructured masks only, not structure='2:4'"):
    training_methods.to_sparse_execution(_mlp(), config)


def test_the_configuration_round_trips():
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(), default_sparsity=0.8,
                                     structure='constant_fan_in', ablation_threshold=0.5,
                                     never_ablate='layer2')
  config = optimizer.get_config()
  assert (config['structure'], config['ablation_threshold'], config['never_ablate']) == (
      'constant_fan_in', 0.5, ['layer2'])
  assert so.SparseRigLOptimizer.from_config(config).get_config() == config


# --- The methods of the scripts ---------------------------------------------------------

@pytest.mark.parametrize('method', training_methods.ALL_METHODS)
def test_make_optimizer_passes_the_structure_to_every_sparse_method(method):
  config = training_methods.MethodConfig(method, end_sparsity=0.8,
                                         structure='constant_fan_in',
                                         ablation_threshold=0.4, pruning_end_step=10)
  optimizer = training_methods.make_optimizer(keras.optimizers.SGD(0.1), config)
  if method == 'baseline':
    return
  assert optimizer.structure == 'constant_fan_in'
  if method in ('set', 'momentum', 'rigl'):
    assert optimizer.ablation_threshold == 0.4
  elif method in ('scratch', 'static'):
    assert optimizer.ablation_threshold == 0.0
