"""Tests of rigl.sparse_optimizers: the original's contract (reference §2) and invariants."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import layers
from rigl import masking
from rigl import sparse_optimizers as so
from rigl import sparse_utils
from rigl import tf1_momentum


class Setup:
  """One masked dense layer on a (1, n_inp) input, stepped by a tf.function."""

  def __init__(self, n_inp, n_out, make_optimizer, sparsity=0.5, loss_scale=None,
               inner=None, seed=0):
    keras.utils.set_random_seed(seed)
    self.layer = layers.MaskedDense(n_out, name='layer')
    self.layer.build((None, n_inp))
    self.layer.mask.assign(sparse_utils.get_mask_random(
        self.layer.mask, sparsity, tf.float32, np.random.RandomState(seed)))
    self.x = tf.constant(np.random.RandomState(seed + 1).rand(1, n_inp), tf.float32)
    self.scale = loss_scale
    self.optimizer = make_optimizer(inner or keras.optimizers.SGD(0.1))
    self.variables = self.layer.trainable_variables
    self.optimizer.build(self.variables)

  def loss(self):
    y = self.layer(self.x)
    if self.scale is None:
      return tf.reduce_mean(y)
    return tf.reduce_sum(y * self.scale(self.optimizer.iterations))

  @tf.function
  def step(self):
    with tf.GradientTape() as tape:
      loss = self.loss()
    grads = tape.gradient(loss, self.variables)
    self.optimizer.apply_gradients(zip(grads, self.variables))

  def mask(self):
    return self.layer.mask.numpy().copy()

  def kernel(self):
    return self.layer.kernel_variable.numpy().copy()

  def step_count(self):
    return int(self.optimizer.iterations.numpy())


# --- SET: timing and basic invariants (reference §2.1) ---------------------------------

@pytest.mark.parametrize('n_inp,n_out,drop', [(15, 25, 0.5), (15, 25, 0.2), (3, 5, 0.2)])
def test_set_mask_changes_only_on_update_iterations(n_inp, n_out, drop):
  setup = Setup(n_inp, n_out, lambda o: so.SparseSETOptimizer(
      o, begin_step=1, end_step=4, frequency=2, drop_fraction=drop))
  changed = []
  for _ in range(1, 6):
    before = setup.mask()
    setup.step()
    changed.append(not np.array_equal(before, setup.mask()))
  # Runs 1 and 3 (post-increment steps 1 and 3) update; end_step 4 is the last chance.
  assert changed == [True, False, True, False, False]


@pytest.mark.parametrize('n_inp,n_out,drop', [(15, 25, 0.5), (15, 25, 0.7), (30, 10, 0.9)])
def test_set_update_keeps_count_and_changes_mask(n_inp, n_out, drop):
  setup = Setup(n_inp, n_out, lambda o: so.SparseSETOptimizer(
      o, begin_step=1, end_step=4, frequency=2, drop_fraction=drop))
  for run in range(1, 6):
    before = setup.mask()
    setup.step()
    after = setup.mask()
    if run in (1, 3):
      assert after.sum() == before.sum()
      assert not np.array_equal(before, after)


@pytest.mark.parametrize('begin,end,freq', [(3, 7, 2), (1, 5, 3), (0, 4, 1)])
def test_no_drop_never_changes_mask(begin, end, freq):
  setup = Setup(10, 8, lambda o: so.SparseSETOptimizer(
      o, begin_step=begin, end_step=end, frequency=freq, drop_fraction=0.0))
  initial = setup.mask()
  for _ in range(end + 2):
    setup.step()
    np.testing.assert_array_equal(setup.mask(), initial)


def test_new_connections_start_at_zero():
  setup = Setup(10, 8, lambda o: so.SparseSETOptimizer(
      o, begin_step=0, end_step=4, frequency=1, drop_fraction=0.5))
  for _ in range(4):
    before = setup.mask()
    setup.step()
    new = (setup.mask() == 1) & (before == 0)
    assert new.any()
    np.testing.assert_array_equal(setup.kernel()[new], 0.0)


@pytest.mark.parametrize('grow_init', ['zeros', 'random_normal', 'random_uniform_2',
                                       'initial_dist', 'initial_dist_4'])
@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_grow_tensor_shape_and_dtype(grow_init, dtype):
  keras.utils.set_random_seed(0)
  layer = layers.MaskedConv2D(4, 3, dtype=dtype, name='conv')
  layer.build((None, 8, 8, 2))
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), grow_init=grow_init)
  optimizer.build(layer.trainable_variables)
  grow = _grow_tensor(optimizer, layer, 3, None)
  assert grow.shape == layer.kernel_variable.shape
  assert grow.dtype == layer.kernel_variable.dtype
  if grow_init != 'zeros':
    assert float(tf.math.reduce_std(grow)) > 0


def _grow_tensor(optimizer, layer, step, gradient):
  return optimizer._grow_tensor(0, tf.constant(step, tf.int64), gradient,
                                tf.convert_to_tensor(layer.kernel_variable),
                                tf.convert_to_tensor(layer.mask))


def test_initial_dist_draws_initial_values():
  keras.utils.set_random_seed(0)
  layer = layers.MaskedDense(6, name='dense')
  layer.build((None, 5))
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), grow_init='initial_dist_2')
  optimizer.build(layer.trainable_variables)
  initial = np.sort(layer.kernel_variable.numpy().ravel())
  layer.kernel_variable.assign(tf.zeros_like(layer.kernel_variable))
  grow = _grow_tensor(optimizer, layer, 1, None).numpy()
  np.testing.assert_allclose(np.sort(grow.ravel()) * 2, initial)


@pytest.mark.parametrize('grow_init', ['ones', 'zero', None, 0, 'random_normal_x',
                                       'random_normal_0', 'grad_scale'])
def test_invalid_grow_init(grow_init):
  with pytest.raises(ValueError, match='Grow-Init'):
    so.SparseSETOptimizer(keras.optimizers.SGD(0.1), grow_init=grow_init)


@pytest.mark.parametrize('grow_init', ['grad_scale', 'grad_sign_10', 'random_normal_.5'])
def test_rigl_accepts_gradient_grow_inits(grow_init):
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), grow_init=grow_init)
  assert optimizer.grow_init == grow_init


# --- Static and SNFS --------------------------------------------------------------------

@pytest.mark.parametrize('n_inp,n_out,drop', [(15, 25, 0.5), (3, 5, 0.2), (30, 10, 0.9)])
def test_static_mask_never_changes_but_weakest_are_reset(n_inp, n_out, drop):
  setup = Setup(n_inp, n_out, lambda o: so.SparseStaticOptimizer(
      o, begin_step=0, end_step=4, frequency=1, drop_fraction=drop))
  initial = setup.mask()
  for _ in range(4):
    setup.step()
    np.testing.assert_array_equal(setup.mask(), initial)
  # The update that ended the last run re-initialised the weakest active weights to 0.
  active = setup.kernel()[initial == 1]
  assert np.count_nonzero(active == 0) >= int(initial.sum() * drop)


@pytest.mark.parametrize('n_inp,n_out,momentum', [(3, 4, 0.5), (5, 2, 0.), (2, 5, 1.)])
def test_momentum_gradient_average(n_inp, n_out, momentum):
  scale = tf.range(n_out, dtype=tf.float32)
  setup = Setup(n_inp, n_out, lambda o: so.SparseMomentumOptimizer(
      o, begin_step=0, end_step=3, frequency=1, drop_fraction=0.5, momentum=momentum),
                loss_scale=lambda step: scale)
  setup.x = tf.ones((1, n_inp))
  expected = np.zeros((n_inp, n_out), np.float32)
  for _ in range(6):
    np.testing.assert_allclose(setup.optimizer.gradient_averages[0].numpy(), expected,
                               rtol=1e-6)
    setup.step()
    expected = expected * momentum + (1 - momentum) * np.broadcast_to(
        np.arange(n_out, dtype=np.float32), (n_inp, n_out))
  np.testing.assert_allclose(setup.optimizer.gradient_averages[0].numpy(), expected,
                             rtol=1e-6)


# --- RigL --------------------------------------------------------------------------------

@pytest.mark.parametrize('begin,end,freq,pattern', [
    (3, 7, 2, [1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1]),
    (1, 5, 3, [1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1]),
    (0, 4, 1, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1])])
def test_rigl_update_replaces_the_gradient_step(begin, end, freq, pattern):
  setup = Setup(4, 3, lambda o: so.SparseRigLOptimizer(
      o, begin_step=begin, end_step=end, frequency=freq, drop_fraction=0.))
  increments = []
  for _ in pattern:
    before_step, before_kernel = setup.step_count(), setup.kernel()
    setup.step()
    increments.append(setup.step_count() - before_step)
    if increments[-1] == 0:  # An update step applies no gradient.
      np.testing.assert_array_equal(setup.kernel(), before_kernel)
  assert increments == pattern


@pytest.mark.parametrize('n_inp,n_out', [(3, 4), (5, 2), (2, 5)])
def test_rigl_grows_with_the_dense_gradient_of_the_current_step(n_inp, n_out):
  # Loss sum(y * arange * (step + 1)): the gradient at an inactive weight (i, j) is
  # x_i * j * (step + 1); grad_scale grows new weights at exactly that value.
  scale = tf.range(1, n_out + 1, dtype=tf.float32)
  setup = Setup(n_inp, n_out, lambda o: so.SparseRigLOptimizer(
      o, begin_step=0, end_step=3, frequency=1, drop_fraction=0.5, grow_init='grad_scale'),
                loss_scale=lambda step: scale * tf.cast(step + 1, tf.float32))
  updates = 0
  for _ in range(6):
    step, before = setup.step_count(), setup.mask()
    setup.step()
    new = (setup.mask() == 1) & (before == 0)
    if setup.step_count() == step:  # a mask-update run
      updates += 1
      expected = np.outer(setup.x.numpy()[0], scale.numpy()) * (step + 1)
      np.testing.assert_allclose(setup.kernel()[new], expected[new], rtol=1e-6)
  assert updates == 3  # runs 0, 2 and 4


def test_rigl_hand_built_drop_and_grow():
  layer = layers.MaskedDense(3, use_bias=False, name='hand')
  layer.build((None, 4))
  # Active connections (mask 1) with distinct magnitudes; the three smallest are dropped.
  mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
  kernel = np.array([[0.9, -0.1, 5.0], [0.2, 7.0, 7.0], [-0.8, 0.3, 7.0], [7.0, -0.7, 7.0]],
                    np.float32)
  layer.mask.assign(mask)
  layer.kernel_variable.assign(kernel)
  x = tf.constant([[1.0, 2.0, 3.0, 4.0]])
  c = tf.constant([3.0, 1.0, 2.5])  # dL/dW = outer(x, c)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), frequency=1,
                                     drop_fraction=0.5)
  variables = layer.trainable_variables
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x) * c)
  optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  new_mask = layer.mask.numpy()
  # 6 active, drop 3: |w| 0.1, 0.2, 0.3 go; 0.9, 0.8, 0.7 stay.
  kept = np.zeros_like(mask)
  kept[0, 0] = kept[2, 0] = kept[3, 1] = 1
  # Grow the 3 largest |x_i * c_j| among the other 9 positions: (3,0)=12, (3,2)=10,
  # (2,2)=7.5; the dropped (1,0) scores 6.
  grown = np.zeros_like(mask)
  grown[3, 0] = grown[3, 2] = grown[2, 2] = 1
  np.testing.assert_array_equal(new_mask, kept + grown)
  np.testing.assert_array_equal(layer.kernel_variable.numpy()[grown == 1], 0.0)


# --- Invariants over many updates ---------------------------------------------------------

@pytest.mark.parametrize('cls', [so.SparseSETOptimizer, so.SparseRigLOptimizer,
                                 so.SparseMomentumOptimizer])
def test_exact_active_count_after_every_update(cls):
  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.Input((12,)),
                            layers.MaskedDense(16, activation='relu', name='l1'),
                            layers.MaskedDense(5, name='l2')])
  optimizer = cls(keras.optimizers.SGD(0.05, momentum=0.9), frequency=1,
                  drop_fraction=0.3, drop_fraction_anneal='cosine', end_step=400,
                  default_sparsity=0.8, mask_init_method='erdos_renyi_kernel')
  optimizer.build(model.trainable_variables)
  expected = [int(m.numpy().sum()) for m in optimizer.masks]
  x = tf.random.stateless_normal((8, 12), [1, 2])
  y = tf.random.stateless_normal((8, 5), [3, 4])
  variables = model.trainable_variables

  @tf.function
  def step(i):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x + 0.01 * tf.cast(i, tf.float32)) - y)**2)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return [tf.reduce_sum(m) for m in optimizer.masks]

  changed_total = 0.0
  for i in range(300):
    counts = [int(c) for c in step(tf.constant(i))]
    assert counts == expected, f'step {i}'
    changed_total += float(optimizer.changed_connections.numpy())
  assert changed_total > 0


@pytest.mark.parametrize('inner', ['sgd_momentum', 'adam'])
def test_grown_connections_reset_optimizer_slots(inner):
  make_inner = {'sgd_momentum': lambda: keras.optimizers.SGD(0.1, momentum=0.9),
                'adam': lambda: keras.optimizers.Adam(0.01)}[inner]
  setup = Setup(12, 10, lambda o: so.SparseSETOptimizer(
      o, begin_step=3, end_step=3, frequency=1, drop_fraction=0.5), inner=make_inner())
  slots = [slot.variable for slot in setup.optimizer._slots[0]]
  assert len(slots) == {'sgd_momentum': 1, 'adam': 2}[inner]
  # Non-zero slots everywhere, so a reset is visible.
  for slot in slots:
    slot.assign(tf.ones_like(slot))
  for _ in range(3):
    before = setup.mask()
    setup.step()
  new = (setup.mask() == 1) & (before == 0)
  assert new.any()
  np.testing.assert_array_equal(setup.kernel()[new], 0.0)
  for slot in slots:
    np.testing.assert_array_equal(slot.numpy()[new], 0.0)
    assert np.all(slot.numpy()[setup.mask() == 1][~new[setup.mask() == 1]] != 0)


@pytest.mark.parametrize('inner', ['tf1_momentum', 'sgd_momentum'])
def test_rigl_slots_of_grown_connections_use_initial_acc_scale(inner):
  scale = tf.constant([1.0, 2.0, 3.0, 4.0])
  learning_rate = 0.1
  make_inner = {
      'tf1_momentum': lambda: tf1_momentum.TF1MomentumOptimizer(learning_rate, 0.9),
      'sgd_momentum': lambda: keras.optimizers.SGD(learning_rate, momentum=0.9)}[inner]
  setup = Setup(3, 4, lambda o: so.SparseRigLOptimizer(
      o, frequency=1, drop_fraction=0.5, initial_acc_scale=0.5),
                loss_scale=lambda step: scale, inner=make_inner())
  before = setup.mask()
  setup.step()
  new = (setup.mask() == 1) & (before == 0)
  assert new.any()
  gradient = np.outer(setup.x.numpy()[0], scale.numpy())
  # TF1's accumulator is in gradient units; Keras' SGD velocity is -lr times it.
  expected = 0.5 * gradient * {'tf1_momentum': 1.0, 'sgd_momentum': -learning_rate}[inner]
  slot = setup.optimizer._slots[0][0].variable.numpy()
  np.testing.assert_allclose(slot[new], expected[new], rtol=1e-6)
  # The next step moves the grown weights down the gradient, as TF1 momentum would.
  setup.step()
  assert np.all(np.sign(setup.kernel()[new]) == -np.sign(gradient[new]))


@pytest.mark.parametrize('make_inner', [lambda: keras.optimizers.Adam(0.01),
                                        lambda: keras.optimizers.SGD(0.1)],
                         ids=['adam', 'sgd_without_momentum'])
def test_initial_acc_scale_is_refused_without_a_momentum_accumulator(make_inner):
  name = type(make_inner()).__name__
  with pytest.raises(ValueError, match=f'initial_acc_scale=0.5.*{name}'):
    so.SparseRigLOptimizer(make_inner(), initial_acc_scale=0.5)


def test_grown_connections_of_an_ema_optimizer_average_from_the_grown_value():
  setup = Setup(8, 6, lambda o: so.SparseSETOptimizer(
      o, begin_step=2, end_step=2, frequency=1, drop_fraction=0.5,
      grow_init='random_normal'),
                inner=keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True))
  names = sorted(slot.name for slot in setup.optimizer._slots[0])
  assert names == ['average', 'momentum']
  for _ in range(2):
    before = setup.mask()
    setup.step()
  new = (setup.mask() == 1) & (before == 0)
  assert new.any()
  slots = {slot.name: slot.variable.numpy() for slot in setup.optimizer._slots[0]}
  np.testing.assert_array_equal(slots['average'][new], setup.kernel()[new])
  np.testing.assert_array_equal(slots['momentum'][new], 0.0)


@pytest.mark.parametrize('inner', [
    lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    lambda: keras.optimizers.AdamW(0.1, weight_decay=0.1),
    lambda: keras.optimizers.Adam(0.1, use_ema=True, ema_overwrite_frequency=2),
    lambda: keras.optimizers.Muon(0.1),
    lambda: keras.optimizers.Adagrad(0.1),
], ids=['momentum', 'adamw', 'adam_ema', 'muon', 'adagrad'])
def test_inactive_weights_stay_zero_through_steps_and_updates(inner):
  setup = Setup(6, 4, lambda o: so.SparseSETOptimizer(o, frequency=2, drop_fraction=0.5),
                inner=inner())
  assert np.all(setup.kernel()[setup.mask() == 0] == 0)
  masks = [setup.mask()]
  for _ in range(6):
    setup.step()
    assert np.all(setup.kernel()[setup.mask() == 0] == 0)
    masks.append(setup.mask())
  assert any((a != b).any() for a, b in zip(masks, masks[1:]))


# --- Drop-fraction schedules --------------------------------------------------------------

def test_drop_fraction_schedules():
  sgd = keras.optimizers.SGD(0.1)
  constant = so.SparseSETOptimizer(sgd, begin_step=0, end_step=100, drop_fraction=0.3)
  cosine = so.SparseSETOptimizer(sgd, begin_step=0, end_step=100, drop_fraction=0.3,
                                 drop_fraction_anneal='cosine')
  linear = so.SparseSETOptimizer(sgd, begin_step=20, end_step=120, drop_fraction=0.3,
                                 drop_fraction_anneal='exponential')
  cubic = so.SparseSETOptimizer(sgd, begin_step=20, end_step=120, drop_fraction=0.3,
                                drop_fraction_anneal='exponential_3')
  assert float(constant.get_drop_fraction(70)) == pytest.approx(0.3)
  assert float(cosine.get_drop_fraction(0)) == pytest.approx(0.3)
  assert float(cosine.get_drop_fraction(50)) == pytest.approx(0.15)
  assert float(cosine.get_drop_fraction(100)) == pytest.approx(0.0, abs=1e-7)
  assert float(cosine.get_drop_fraction(150)) == pytest.approx(0.0, abs=1e-7)
  assert float(linear.get_drop_fraction(70)) == pytest.approx(0.15)
  assert float(cubic.get_drop_fraction(70)) == pytest.approx(0.3 * 0.5**3)


def test_extract_number():
  assert so.extract_number('exponential_3') == 3.0
  assert so.extract_number('exponential_.3') == 0.3
  assert so.extract_number('grad_scale_10') == 10.0
  assert so.extract_number('exponential') == 1.0


# --- SNIP and DNW ----------------------------------------------------------------------

SNIP_DNW_CASES = [(3, 4, .5), (5, 3, .8), (8, 5, .8)]


def _snip_setup(n_inp, n_out, sparsity):
  scale = tf.range(1, n_out + 1, dtype=tf.float32)
  setup = Setup(n_inp, n_out, lambda o: so.SparseSnipOptimizer(
      o, default_sparsity=sparsity, mask_init_method='random'),
                sparsity=0.0, loss_scale=lambda step: scale)
  return setup, scale


@pytest.mark.parametrize('n_inp,n_out,sparsity', SNIP_DNW_CASES)
def test_snip_one_shot_by_gradient_times_weight(n_inp, n_out, sparsity):
  setup, scale = _snip_setup(n_inp, n_out, sparsity)
  np.testing.assert_array_equal(setup.mask(), 1.0)  # dense before training
  kernel = setup.kernel()
  setup.step()
  mask = setup.mask()
  size = n_inp * n_out
  assert size - mask.sum() == sparse_utils.get_n_zeros(size, sparsity)
  score = np.abs(np.outer(setup.x.numpy()[0], scale.numpy()) * kernel)
  assert score[mask == 1].min() >= score[mask == 0].max()
  assert setup.step_count() == 0 and bool(setup.optimizer.is_snipped.numpy())
  for expected_step in range(3):
    assert setup.step_count() == expected_step
    setup.step()
    np.testing.assert_array_equal(setup.mask(), mask)


@pytest.mark.parametrize('n_inp,n_out,sparsity', SNIP_DNW_CASES)
def test_dnw_keeps_largest_weights_with_dense_updates(n_inp, n_out, sparsity):
  scale = tf.range(1, n_out + 1, dtype=tf.float32)
  setup = Setup(n_inp, n_out, lambda o: so.SparseDNWOptimizer(
      o, default_sparsity=sparsity, mask_init_method='random'),
                sparsity=0.0, loss_scale=lambda step: scale)
  size = n_inp * n_out
  dense_weights = lambda: setup.optimizer.dense_kernels[0].numpy().copy()
  for _ in range(5):
    before = dense_weights()
    setup.step()
    after, mask = dense_weights(), setup.mask()
    # The dense gradient moved every dense weight, masked ones included.
    np.testing.assert_allclose(
        before - after, 0.1 * np.outer(setup.x.numpy()[0], scale.numpy()), atol=1e-6)
    assert size - mask.sum() == sparse_utils.get_n_zeros(size, sparsity)
    assert np.abs(after)[mask == 1].min() >= np.abs(after)[mask == 0].max()
    # The model's kernel holds the kept part of them.
    np.testing.assert_array_equal(setup.kernel(), after * mask)


# --- Training through model.fit -----------------------------------------------------------

def _mlp():
  return keras.Sequential([
      keras.Input((20,)),
      layers.MaskedDense(32, activation='relu', name='layer1'),
      layers.MaskedDense(16, activation='relu', name='layer2'),
      layers.MaskedDense(4, name='layer3')])


def _fit_data():
  rng = np.random.RandomState(0)
  x = rng.randn(512, 20).astype('float32')
  y = (x[:, :4] + 0.1 * rng.randn(512, 4)).argmax(1).astype('int32')
  return x, y


FIT_CASES = {
    'set': lambda o: so.SparseSETOptimizer(o, frequency=4, drop_fraction=0.3, **_DIST),
    'rigl': lambda o: so.SparseRigLOptimizer(o, frequency=4, drop_fraction=0.3, **_DIST),
    'static': lambda o: so.SparseStaticOptimizer(o, frequency=4, **_DIST),
    'snfs': lambda o: so.SparseMomentumOptimizer(o, frequency=4, **_DIST),
    'snip': lambda o: so.SparseSnipOptimizer(o, 0.8, 'erdos_renyi_kernel', {'layer3': 0.}),
    'dnw': lambda o: so.SparseDNWOptimizer(o, 0.8, 'erdos_renyi_kernel', {'layer3': 0.}),
    'prune': lambda o: so.GradualPruningOptimizer(
        o, begin_step=0, end_step=60, frequency=10, target_sparsity=0.8,
        weight_sparsity_map={'layer3': 0.0}),
}
_DIST = dict(default_sparsity=0.8, mask_init_method='erdos_renyi_kernel',
             custom_sparsity_map={'layer3': 0.})


# ERK at 0.8 over layer1 (20x32) and layer2 (32x16), layer3 outside the budget, by hand:
# ones kept = (640 - floor(0.8 * 640)) + (512 - floor(0.8 * 512)) = 128 + 103 = 231;
# raw densities (20 + 32) / 640 and (32 + 16) / 512, so eps = 231 / (52 + 48) = 2.31 and
# the sparsities are 1 - 2.31 * 52 / 640 = 0.81231 and 1 - 2.31 * 48 / 512 = 0.78344,
# i.e. floor(0.81231 * 640) = 519 and floor(0.78344 * 512) = 401 zeros.
ERK_08_ZEROS = {'layer1': 519 / 640, 'layer2': 401 / 512, 'layer3': 0.0}


def _measured_sparsities(model):
  return {name: float(value) for name, value in
          sparse_utils.sparsity_summary(layers.get_masks(model)).items()}


def _check_target_sparsities(method, measured):
  if method == 'prune':
    assert measured['layer1'] == pytest.approx(0.8, abs=1 / 640)
    assert measured['layer2'] == pytest.approx(0.8, abs=1 / 512)
    assert measured['layer3'] == 0.0
  else:
    for name, expected in ERK_08_ZEROS.items():
      assert measured[name] == pytest.approx(expected, abs=1e-6), name


@pytest.mark.parametrize('method', sorted(FIT_CASES))
def test_model_fit_trains_to_target_sparsity(method):
  keras.utils.set_random_seed(0)
  model = _mlp()
  optimizer = FIT_CASES[method](keras.optimizers.SGD(0.05, momentum=0.9))
  model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  x, y = _fit_data()
  history = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
  assert history.history['accuracy'][-1] > 0.6
  measured = _measured_sparsities(model)
  _check_target_sparsities(method, measured)
  global_sparsity = float(optimizer.sparsity_summaries()['sparsity/masked_weights'])
  assert global_sparsity == pytest.approx(measured['global'])
  assert 0.7 < global_sparsity < 0.8


@pytest.mark.parametrize('method', sorted(FIT_CASES))
@pytest.mark.parametrize('loop', ['fit_xla', 'tf_function'])
def test_every_method_compiled_with_xla_and_in_a_tf_function_loop(method, loop):
  keras.utils.set_random_seed(0)
  model = _mlp()
  optimizer = FIT_CASES[method](keras.optimizers.SGD(0.05, momentum=0.9))
  x, y = _fit_data()
  optimizer.build(model.trainable_variables)
  initial_masks = [m.numpy() for m in optimizer.masks]
  if loop == 'fit_xla':
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    model.fit(x, y, batch_size=32, epochs=4, verbose=0)
  else:
    _train_steps(model, optimizer, 64, 0)
  _check_target_sparsities(method, _measured_sparsities(model))
  changed = [(m.numpy() != i).any() for m, i in zip(optimizer.masks, initial_masks)]
  if method in ('set', 'rigl', 'snfs', 'prune', 'snip'):
    assert changed[:2] == [True, True]  # layer1 and layer2 rewired or pruned
  if method == 'static':
    assert not any(changed)
  assert int(optimizer.iterations.numpy()) > 0


# --- Checkpoint and resume ------------------------------------------------------------

def _train_steps(model, optimizer, steps, start):
  x, y = _fit_data()
  variables = model.trainable_variables
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step(xb, yb):
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, model(xb))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  for i in range(start, start + steps):
    j = (i * 32) % 512
    step(x[j:j + 32], y[j:j + 32])


@pytest.mark.parametrize('make', [
    lambda o: so.SparseRigLOptimizer(o, frequency=3, drop_fraction=0.3,
                                     drop_fraction_anneal='cosine', end_step=40, **_DIST),
    lambda o: so.SparseMomentumOptimizer(o, frequency=3, drop_fraction=0.3, **_DIST),
    lambda o: so.SparseSnipOptimizer(o, 0.8, 'random'),
], ids=['rigl', 'snfs', 'snip'])
def test_resumed_run_equals_uninterrupted_run(make, tmp_path):
  def fresh():
    keras.utils.set_random_seed(0)
    model = _mlp()
    optimizer = make(keras.optimizers.SGD(0.05, momentum=0.9))
    optimizer.build(model.trainable_variables)
    return model, optimizer

  model, optimizer = fresh()
  _train_steps(model, optimizer, 30, 0)
  uninterrupted = [v.numpy() for v in model.weights]

  model, optimizer = fresh()
  _train_steps(model, optimizer, 14, 0)
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / 'ckpt'))

  model, optimizer = fresh()  # a new process would start from here
  tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).assert_consumed()
  _train_steps(model, optimizer, 16, 14)
  for expected, actual in zip(uninterrupted, [v.numpy() for v in model.weights]):
    np.testing.assert_array_equal(actual, expected)


def test_model_fit_interrupted_and_resumed_by_backup_and_restore(tmp_path):
  x, y = _fit_data()

  def fit(backup_dir, interrupt_after_epoch=None):
    keras.utils.set_random_seed(0)
    model = _mlp()
    optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.05, momentum=0.9),
                                       frequency=5, drop_fraction=0.3, **_DIST)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Interrupt(keras.callbacks.Callback):

      def on_epoch_end(self, epoch, logs=None):
        if epoch == interrupt_after_epoch:
          raise KeyboardInterrupt

    callbacks = [keras.callbacks.BackupAndRestore(str(backup_dir)), Interrupt()]
    try:
      model.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False, callbacks=callbacks)
    except KeyboardInterrupt:
      return None
    return [w.numpy() for w in model.weights], int(optimizer.iterations.numpy())

  uninterrupted_weights, uninterrupted_steps = fit(tmp_path / 'a')
  assert fit(tmp_path / 'b', interrupt_after_epoch=1) is None
  resumed_weights, resumed_steps = fit(tmp_path / 'b')
  assert resumed_steps == uninterrupted_steps < 4 * 16  # RigL updates replaced steps
  for expected, actual in zip(uninterrupted_weights, resumed_weights):
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize('method', sorted(FIT_CASES))
def test_compiled_model_with_sparse_optimizer_saves_and_loads(method, tmp_path):
  keras.utils.set_random_seed(0)
  model = _mlp()
  optimizer = FIT_CASES[method](keras.optimizers.SGD(0.05, momentum=0.9))
  model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = _fit_data()
  model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
  model.save(str(tmp_path / 'model.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'model.keras'))
  assert type(loaded.optimizer) is type(optimizer)
  assert loaded.optimizer.get_config() == optimizer.get_config()
  for expected, actual in zip(model.weights, loaded.weights):
    np.testing.assert_array_equal(actual.numpy(), expected.numpy())
  np.testing.assert_array_equal(loaded.optimizer.iterations.numpy(),
                                optimizer.iterations.numpy())


# --- Distribution ---------------------------------------------------------------------

def test_mirrored_replicas_agree_and_use_all_reduced_gradient(mirrored_strategy):
  devices = mirrored_strategy.extended.worker_devices
  assert len(devices) == 2
  x = tf.random.stateless_normal((16, 20), [5, 6])
  y = tf.random.stateless_uniform((16,), [7, 8], maxval=4, dtype=tf.int32)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction='sum')

  def build(strategy):
    with strategy.scope():
      keras.utils.set_random_seed(0)
      model = _mlp()
      optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.05, momentum=0.9),
                                         frequency=2, drop_fraction=0.3, **_DIST)
      optimizer.build(model.trainable_variables)
    return model, optimizer

  def train(strategy, model, optimizer, steps):
    variables = model.trainable_variables

    def replica_step(xb, yb):
      with tf.GradientTape() as tape:
        loss = loss_fn(yb, model(xb)) / 16.0
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def step(dist_x, dist_y):
      strategy.run(replica_step, args=(dist_x, dist_y))

    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
    for xb, yb in strategy.experimental_distribute_dataset(dataset):
      step(xb, yb)

  model, optimizer = build(mirrored_strategy)
  train(mirrored_strategy, model, optimizer, 7)
  single = tf.distribute.OneDeviceStrategy(devices[0])
  reference_model, reference_optimizer = build(single)
  train(single, reference_model, reference_optimizer, 7)

  assert int(optimizer.iterations.numpy()) == int(reference_optimizer.iterations.numpy())
  for mask, reference in zip(optimizer.masks, reference_optimizer.masks):
    replicas = [v.numpy() for v in mask.value.values]
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])
    # Same masks as one device seeing the whole batch: the scores used the global gradient.
    np.testing.assert_array_equal(replicas[0], reference.numpy())
  assert float(optimizer.changed_connections.numpy()) > 0


def test_mirrored_model_fit_keeps_replicas_identical(mirrored_strategy):
  with mirrored_strategy.scope():
    keras.utils.set_random_seed(0)
    model = _mlp()
    optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.05), frequency=3,
                                      drop_fraction=0.3, **_DIST)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = _fit_data()
  model.fit(x, y, batch_size=32, epochs=1, verbose=0)
  for mask in optimizer.masks:
    first, second = [v.numpy() for v in mask.value.values]
    np.testing.assert_array_equal(first, second)
  assert float(optimizer.changed_connections.numpy()) > 0


# --- Reproducibility across processes -------------------------------------------------

_MASK_SCRIPT = '''
import keras, numpy as np, tensorflow as tf
from rigl import layers, sparse_optimizers as so
keras.utils.set_random_seed(0)
layer = layers.MaskedDense(30, name='l')
layer.build((None, 40))
opt = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), frequency=1, drop_fraction=0.5,
                            default_sparsity=0.9, stateless_seed_offset=5)
opt.build(layer.trainable_variables)
grads = [tf.zeros_like(v) for v in layer.trainable_variables]
for _ in range(3):
  opt.apply_gradients(zip(grads, layer.trainable_variables))
print(''.join(str(int(v)) for v in layer.mask.numpy().ravel()))
'''


def test_masks_are_reproducible_across_processes():
  outputs = []
  for hash_seed in ('1', '2'):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, TF_CPP_MIN_LOG_LEVEL='3')
    result = subprocess.run([sys.executable, '-c', _MASK_SCRIPT], capture_output=True,
                            text=True, env=env, check=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    outputs.append(result.stdout.strip().splitlines()[-1])
  assert outputs[0] == outputs[1]
  assert outputs[0].count('1') == 120


# --- Bad input ------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs,match', [
    (dict(frequency=0), 'frequency.*0'),
    (dict(frequency=-5), 'frequency.*-5'),
    (dict(begin_step=10, end_step=5), r'end_step \(5\).*begin_step \(10\)'),
    (dict(drop_fraction=1.5), 'drop_fraction.*1.5'),
    (dict(drop_fraction=-0.1), 'drop_fraction.*-0.1'),
    (dict(drop_fraction_anneal='linear'), "'linear'"),
    (dict(drop_fraction_anneal='cosine', end_step=-1), 'end_step > begin_step'),
    (dict(default_sparsity=1.0), 'default_sparsity.*1.0'),
    (dict(default_sparsity=0.5, mask_init_method='uniform'), "'uniform'"),
    (dict(custom_sparsity_map={'layer1': 2.0}), r"custom_sparsity_map\['layer1'\].*2.0"),
])
def test_invalid_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), **kwargs)


def test_custom_map_key_matching_no_layer_fails_at_build():
  model = _mlp()
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5,
                                    custom_sparsity_map={'layer9': 0.0})
  with pytest.raises(ValueError, match=r"'layer9' names no masked weight.*'layer1'"):
    optimizer.build(model.trainable_variables)


def test_model_without_kernels_is_rejected():
  model = keras.Sequential([keras.Input((3,)), keras.layers.LayerNormalization()])
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1))
  with pytest.raises(ValueError, match='found no weights to mask.*sparsify_model'):
    optimizer.build(model.trainable_variables)


def test_a_model_saved_before_its_optimizer_was_built_loads_and_trains(tmp_path):
  # A compiled, never trained model has no masks yet, and its loaded copy no marks:
  # the optimizer then masks what sparsify_model(model) would.
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name='fc'),
                            keras.layers.LayerNormalization()])
  masking.sparsify_model(model, verbose=False)
  model.compile(so.SparseSETOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5),
                'mse')
  model.save(str(tmp_path / 'model.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'model.keras'))
  assert loaded.optimizer.keys == ['fc']
  loaded.fit(np.ones((4, 6), 'float32'), np.ones((4, 8), 'float32'), verbose=0)
  kernel, mask = loaded.optimizer.kernels[0].numpy(), loaded.optimizer.masks[0].numpy()
  assert mask.sum() == 24 and np.all(kernel[mask == 0] == 0)


def test_inner_optimizer_must_be_keras():
  with pytest.raises(ValueError, match='keras.optimizers.Optimizer'):
    so.SparseRigLOptimizer('sgd')


# --- Scores use the loss gradient (issue: weight decay in grow scores) -------------------

def _regularized_setup(make, regularization_in_gradients=True, add_losses=True):
  """A masked layer with a strong L2 and large weights that the mask makes inactive
  (so zero, once the optimizer is built); one custom step."""
  layer = layers.MaskedDense(3, use_bias=False, name='hand',
                             kernel_regularizer=keras.regularizers.L2(5.0))
  layer.build((None, 4))
  mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
  # Inactive weights are large: their decay term 2 * 5 * w dwarfs the loss gradient.
  kernel = np.array([[0.9, -0.1, -90.], [0.2, 70., 80.], [-0.8, 0.3, 60.], [50., -0.7, 40.]],
                    np.float32)
  layer.mask.assign(mask)
  layer.kernel_variable.assign(kernel)
  x = tf.constant([[1.0, 2.0, 3.0, 4.0]])
  c = tf.constant([3.0, 1.0, 2.5])  # loss gradient dL/dW = outer(x, c)
  optimizer = make(regularization_in_gradients)
  variables = layer.trainable_variables
  optimizer.build(variables)
  np.testing.assert_array_equal(layer.kernel_variable.numpy(), kernel * mask)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x) * c)
    if add_losses:
      loss += tf.add_n(layer.losses)
  optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  return layer, optimizer, mask, np.outer(x.numpy()[0], c.numpy())


@pytest.mark.parametrize('add_losses', [True, False])
def test_rigl_grows_by_the_loss_gradient_without_weight_decay(add_losses):
  layer, _, _, _ = _regularized_setup(
      lambda reg: so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), frequency=1,
                                         drop_fraction=0.5, grow_init='grad_scale',
                                         regularization_in_gradients=reg),
      regularization_in_gradients=add_losses, add_losses=add_losses)
  # As in test_rigl_hand_built_drop_and_grow: the loss gradient alone picks (3,0), (3,2)
  # and (2,2); with the decay term |g + 10 w| would pick (1,1), (1,2), (3,0) instead.
  grown = np.zeros((4, 3), np.float32)
  grown[3, 0] = grown[3, 2] = grown[2, 2] = 1
  kept = np.zeros((4, 3), np.float32)
  kept[0, 0] = kept[2, 0] = kept[3, 1] = 1
  np.testing.assert_array_equal(layer.mask.numpy(), kept + grown)
  # grad_scale starts them at the loss gradient, not at g + 10 w.
  np.testing.assert_allclose(layer.kernel_variable.numpy()[grown == 1],
                             np.array([7.5, 12.0, 10.0]), rtol=1e-6)


def test_snfs_averages_the_loss_gradient_without_weight_decay():
  _, optimizer, _, gradient = _regularized_setup(
      lambda reg: so.SparseMomentumOptimizer(keras.optimizers.SGD(0.1), frequency=100,
                                             momentum=0.5, regularization_in_gradients=reg))
  np.testing.assert_allclose(optimizer.gradient_averages[0].numpy(), 0.5 * gradient,
                             rtol=1e-5)


_HAND_KERNEL = np.array([[0.9, -0.1, -90.], [0.2, 70., 80.], [-0.8, 0.3, 60.],
                         [50., -0.7, 40.]], np.float32)


@pytest.mark.parametrize('make', [
    lambda reg: so.GradualPruningOptimizer(keras.optimizers.SGD(0.01), begin_step=50,
                                           end_step=60, frequency=10),
    lambda reg: so.SparseSETOptimizer(keras.optimizers.SGD(0.01), frequency=100),
    # Global-norm clipping reads every gradient: an inactive one must not shrink the step.
    lambda reg: so.SparseSETOptimizer(keras.optimizers.SGD(0.01, global_clipnorm=1e6),
                                      frequency=100),
], ids=['prune', 'set', 'clipped'])
def test_active_weights_get_the_original_gradient_and_inactive_ones_stay_zero(make):
  layer, _, mask, gradient = _regularized_setup(make)
  active = _HAND_KERNEL * mask
  expected = mask * (active - 0.01 * (gradient + 2 * 5.0 * active))
  np.testing.assert_allclose(layer.kernel_variable.numpy(), expected, rtol=1e-5)
  assert np.all(layer.kernel_variable.numpy()[mask == 0] == 0)


def test_scores_are_unscaled_by_the_loss_scale_factor():
  def grown_after_update(factor):
    setup = Setup(6, 5, lambda o: so.SparseRigLOptimizer(
        o, frequency=1, drop_fraction=0.5, grow_init='grad_scale'),
                  inner=keras.optimizers.SGD(0.1, loss_scale_factor=factor))
    variables = setup.variables
    with tf.GradientTape() as tape:
      loss = setup.optimizer.scale_loss(setup.loss())
    setup.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return setup.mask(), setup.kernel()

  mask, kernel = grown_after_update(None)
  scaled_mask, scaled_kernel = grown_after_update(256.0)
  np.testing.assert_array_equal(scaled_mask, mask)
  np.testing.assert_allclose(scaled_kernel, kernel, rtol=1e-6)


def test_loss_scale_optimizer_wraps_the_sparse_optimizer_not_the_reverse():
  with pytest.raises(ValueError, match='LossScaleOptimizer'):
    so.SparseRigLOptimizer(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
  setup = Setup(6, 5, lambda o: keras.optimizers.LossScaleOptimizer(
      so.SparseRigLOptimizer(o, frequency=2, drop_fraction=0.5)))
  sparse = setup.optimizer.inner_optimizer
  before = setup.mask()
  for _ in range(3):
    setup.step()
  assert setup.mask().sum() == before.sum()
  assert (setup.mask() != before).any()
  assert int(sparse.iterations.numpy()) == 2  # one of the three was a mask update




# --- Masks that were loaded are kept ----------------------------------------------------

def test_build_keeps_loaded_masks_and_draws_all_ones_masks(tmp_path):
  keras.utils.set_random_seed(0)
  trained = _mlp()
  trained.get_layer('layer1').mask.assign(_random_mask_array((20, 32), 0.7))
  trained.get_layer('layer2').mask.assign(_random_mask_array((32, 16), 0.5))
  trained.save_weights(str(tmp_path / 'trained.weights.h5'))

  model = _mlp()
  model.load_weights(str(tmp_path / 'trained.weights.h5'))
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), **_DIST)
  optimizer.build(model.trainable_variables)
  for name in ('layer1', 'layer2'):
    np.testing.assert_array_equal(model.get_layer(name).mask.numpy(),
                                  trained.get_layer(name).mask.numpy())
  # Untouched (all-ones) masks are drawn at the distribution's sparsities.
  fresh = _mlp()
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), **_DIST)
  optimizer.build(fresh.trainable_variables)
  _check_target_sparsities('rigl', _measured_sparsities(fresh))
  # ... and on request.
  optimizer.initialize_masks()
  _check_target_sparsities('rigl', _measured_sparsities(fresh))


def _random_mask_array(shape, sparsity):
  return (np.random.RandomState(1).rand(*shape) > sparsity).astype(np.float32)


# --- Wrapping an optimizer that has trained before ---------------------------------------

def _dense_pretrained(inner):
  keras.utils.set_random_seed(0)
  model = _mlp()
  model.compile(inner, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = _fit_data()
  model.fit(x[:160], y[:160], batch_size=32, epochs=1, verbose=0)
  return model


@pytest.mark.parametrize('make_inner', [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.Adagrad(0.05, initial_accumulator_value=0.25)],
                         ids=['sgd_momentum', 'adagrad'])
def test_wrapping_a_built_optimizer_finds_and_resets_its_slots(make_inner):
  model = _dense_pretrained(make_inner())
  inner = model.optimizer
  assert int(inner.iterations.numpy()) == 5
  optimizer = so.SparseSETOptimizer(inner, frequency=1, drop_fraction=0.3, begin_step=6,
                                    end_step=6, **_DIST)
  optimizer.build(model.trainable_variables)
  slots = optimizer._slots[0]
  expected_name = 'momentum' if isinstance(inner, keras.optimizers.SGD) else 'accumulator'
  assert [slot.name for slot in slots] == [expected_name]
  assert slots[0].variable is [v for v in inner.variables
                               if v.path.endswith('layer1_kernel_' + expected_name)][0]
  before = model.get_layer('layer1').mask.numpy()
  _train_steps(model, optimizer, 1, 0)
  new = (model.get_layer('layer1').mask.numpy() == 1) & (before == 0)
  assert new.any()
  initial = 0.0 if expected_name == 'momentum' else 0.25
  np.testing.assert_array_equal(slots[0].variable.numpy()[new], initial)


def test_snip_prunes_at_the_first_step_of_a_built_optimizer():
  model = _dense_pretrained(keras.optimizers.SGD(0.05))
  optimizer = so.SparseSnipOptimizer(model.optimizer, 0.8, 'erdos_renyi_kernel',
                                     {'layer3': 0.})
  optimizer.build(model.trainable_variables)
  _train_steps(model, optimizer, 2, 0)
  assert bool(optimizer.is_snipped.numpy())
  _check_target_sparsities('snip', _measured_sparsities(model))
  assert int(optimizer.iterations.numpy()) == 6  # 5 before, the snip step, one more


# --- Bad input and unbuilt optimizers ---------------------------------------------------

@pytest.mark.parametrize('kwargs,match', [
    (dict(erk_power_scale=float('nan')), 'erk_power_scale.*nan'),
    (dict(erk_power_scale=-1.0), 'erk_power_scale.*-1.0'),
    (dict(stateless_seed_offset=-3), 'stateless_seed_offset.*-3'),
    (dict(stateless_seed_offset=1.5), 'stateless_seed_offset.*1.5'),
    (dict(initial_acc_scale=float('nan')), 'initial_acc_scale.*nan'),
])
def test_invalid_numbers_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), **kwargs)


@pytest.mark.parametrize('what', ['masks', 'sparsity_summaries', 'layer_sparsities'])
def test_unbuilt_optimizer_says_to_build_it(what):
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5)
  with pytest.raises(ValueError, match='build the optimizer first'):
    value = getattr(optimizer, what)
    if callable(value):
      value()


def test_duplicate_layer_names_of_nested_models_are_refused():
  def block(name):
    return keras.Sequential([keras.Input((4,)), layers.MaskedDense(4, name='dense')],
                            name=name)

  x = keras.Input((4,))
  model = keras.Model(x, block('second')(block('first')(x)))
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), default_sparsity=0.5,
                                     mask_init_method='erdos_renyi_kernel')
  with pytest.raises(ValueError, match=r"\['dense'\] name several.*sparsify_model"):
    optimizer.build(model.trainable_variables)
  masking.sparsify_model(model, verbose=False)
  optimizer.build(model.trainable_variables)
  assert optimizer.keys == ['first/dense', 'second/dense']


@pytest.mark.parametrize('kwargs,match', [
    (dict(), r'end_step=-1 prunes forever.*sparsity_function_end_step'),
    (dict(end_step=50, target_sparsity=0.0, weight_sparsity_map={'layer1': 0.5}),
     'target_sparsity > 0'),
    (dict(end_step=50, weight_sparsity_map={'layer[': 0.5}), r"'layer\['.*regular"),
    (dict(end_step=50, threshold_decay=1.0), 'threshold_decay'),
])
def test_gradual_pruning_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    so.GradualPruningOptimizer(keras.optimizers.SGD(0.1), **kwargs)


def test_gradual_pruning_prunes_forever_with_a_schedule_end():
  optimizer = so.GradualPruningOptimizer(keras.optimizers.SGD(0.1), end_step=-1,
                                         sparsity_function_end_step=100,
                                         target_sparsity=0.5)
  assert float(optimizer.sparsity_at(100)) == pytest.approx(0.5)
  assert float(optimizer.sparsity_at(50)) == pytest.approx(0.5 * (1 - 0.5**3))


def test_gradual_pruning_keeps_at_least_one_weight():
  setup = Setup(10, 10, lambda o: so.GradualPruningOptimizer(
      o, begin_step=0, end_step=10, frequency=1, target_sparsity=0.999,
      sparsity_function_end_step=1), sparsity=0.0)
  setup.step()
  mask, kernel = setup.mask(), setup.kernel()
  assert mask.sum() == 1
  assert np.abs(kernel)[mask == 1][0] == np.abs(kernel).max()


# --- Grow initialisations and the cosine schedule ---------------------------------------

def _grow_values(grow_init, gradient=None, cls=so.SparseRigLOptimizer):
  keras.utils.set_random_seed(0)
  layer = layers.MaskedDense(6, name='dense')
  layer.build((None, 5))
  layer.mask.assign(_random_mask_array((5, 6), 0.5))
  optimizer = cls(keras.optimizers.SGD(0.1), grow_init=grow_init)
  optimizer.build(layer.trainable_variables)
  return _grow_tensor(optimizer, layer, 7, gradient).numpy(), layer


@pytest.mark.parametrize('kind', ['random_normal', 'random_uniform', 'initial_dist'])
def test_grow_init_divisor_divides_the_same_draw(kind):
  plain, _ = _grow_values(kind)
  divided, _ = _grow_values(f'{kind}_4')
  np.testing.assert_allclose(divided, plain / 4, rtol=1e-6)
  assert np.count_nonzero(plain) == plain.size


@pytest.mark.parametrize('kind', ['random_normal', 'random_uniform'])
def test_random_grow_inits_take_the_spread_of_the_active_weights(kind):
  # A dense kernel of 15 weights -1 and 15 weights +1 (std 1, mean |w| 1) draws the unit
  # draw. Under a mask, the spread is that of the active weights alone: the inactive
  # zeros do not shrink it (zeros included, the std would be about sqrt(0.5)).
  signs = np.where(np.arange(30).reshape(5, 6) % 2, 1.0, -1.0).astype(np.float32)
  optimizer = so.SparseRigLOptimizer(keras.optimizers.SGD(0.1), grow_init=kind)
  layer = layers.MaskedDense(6, name='dense')
  layer.build((None, 5))
  optimizer.build(layer.trainable_variables)
  draw = lambda kernel, mask: optimizer._grow_tensor(
      0, tf.constant(7, tf.int64), None, tf.constant(kernel), tf.constant(mask)).numpy()
  mask = _random_mask_array((5, 6), 0.5)
  unit = draw(signs, np.ones((5, 6), np.float32))
  spread = np.std(signs[mask == 1]) if kind == 'random_normal' else 1.0
  np.testing.assert_allclose(draw(signs * mask, mask), spread * unit, rtol=1e-5)
  np.testing.assert_allclose(draw(3 * signs * mask, mask), 3 * spread * unit, rtol=1e-5)


@pytest.mark.parametrize('grow_init,expected', [
    ('grad_scale', lambda g: g), ('grad_scale_4', lambda g: g / 4),
    ('grad_sign', np.sign), ('grad_sign_2', lambda g: np.sign(g) / 2)])
def test_gradient_grow_inits(grow_init, expected):
  gradient = np.random.RandomState(3).randn(5, 6).astype(np.float32)
  gradient[0, 0] = 0.0
  values, _ = _grow_values(grow_init, tf.constant(gradient))
  np.testing.assert_allclose(values, expected(gradient), rtol=1e-6)


def test_cosine_drop_fraction_decays_on_the_absolute_step():
  # As tf.train.cosine_decay(f0, global_step, end - begin): with begin 20 and end 120 the
  # fraction is already halved at step 50 and reaches 0 at step 100, not 120.
  optimizer = so.SparseSETOptimizer(keras.optimizers.SGD(0.1), begin_step=20,
                                    end_step=120, drop_fraction=0.3,
                                    drop_fraction_anneal='cosine')
  assert float(optimizer.get_drop_fraction(20)) == pytest.approx(
      0.3 * 0.5 * (1 + math.cos(math.pi * 0.2)))
  assert float(optimizer.get_drop_fraction(50)) == pytest.approx(0.15)
  assert float(optimizer.get_drop_fraction(100)) == pytest.approx(0.0, abs=1e-7)
  assert float(optimizer.get_drop_fraction(110)) == pytest.approx(0.0, abs=1e-7)


def test_drop_fraction_summary_is_that_of_the_update_at_this_step_else_zero():
  setup = Setup(6, 5, lambda o: so.SparseSETOptimizer(
      o, frequency=3, drop_fraction=0.4, end_step=100, drop_fraction_anneal='cosine'))
  seen = []
  for _ in range(6):
    setup.step()
    seen.append(float(setup.optimizer.sparsity_summaries()['drop_fraction']))
  # SET updates after the weight step (on the step counter after it) at steps 1 and 4.
  expected = [0.4 * 0.5 * (1 + math.cos(math.pi * 1 / 100)), 0.0, 0.0,
              0.4 * 0.5 * (1 + math.cos(math.pi * 4 / 100)), 0.0, 0.0]
  np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_dnw_dense_weights_get_no_weight_decay():
  # With an L2 regularizer in the loss, DNW's dense weights move by the loss gradient
  # alone, as in the original (its gradient was taken w.r.t. the masked weights).
  layer = layers.MaskedDense(3, use_bias=False, name='hand',
                             kernel_regularizer=keras.regularizers.L2(5.0))
  layer.build((None, 4))
  layer.kernel_variable.assign(_HAND_KERNEL)
  optimizer = so.SparseDNWOptimizer(keras.optimizers.SGD(0.01), 0.5, 'random')
  optimizer.build(layer.trainable_variables)
  dense_before = optimizer.dense_kernels[0].numpy().copy()
  np.testing.assert_array_equal(dense_before, _HAND_KERNEL)
  x = tf.constant([[1.0, 2.0, 3.0, 4.0]])
  c = tf.constant([3.0, 1.0, 2.5])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x) * c) + tf.add_n(layer.losses)
  grads = tape.gradient(loss, layer.trainable_variables)
  optimizer.apply_gradients(zip(grads, layer.trainable_variables))
  expected = _HAND_KERNEL - 0.01 * np.outer(x.numpy()[0], c.numpy())
  np.testing.assert_allclose(optimizer.dense_kernels[0].numpy(), expected, rtol=1e-6)
  # Half the weights are kept: the largest of the dense ones.
  mask = optimizer.masks[0].numpy()
  assert mask.sum() == 6
  assert np.abs(expected)[mask == 1].min() >= np.abs(expected)[mask == 0].max()
  np.testing.assert_array_equal(layer.kernel_variable.numpy(), expected * mask)


def _erk_densities(shapes, sparsity):
  """ERK by hand: density_i = eps * sum(shape_i) / prod(shape_i), the budget exact."""
  raw = [sum(s) / np.prod(s) for s in shapes]
  sizes = [np.prod(s) for s in shapes]
  eps = (1 - sparsity) * sum(sizes) / sum(r * n for r, n in zip(raw, sizes))
  return [eps * r for r in raw]


def test_gradual_pruning_follows_the_erk_distribution_when_asked():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((40,)), layers.MaskedDense(30, name='wide'),
                            layers.MaskedDense(4, name='narrow')])
  optimizer = so.GradualPruningOptimizer(
      keras.optimizers.SGD(0.01), begin_step=0, end_step=4, frequency=2,
      target_sparsity=0.8, mask_init_method='erdos_renyi_kernel')
  optimizer.build(model.trainable_variables)
  densities = _erk_densities([(40, 30), (30, 4)], 0.8)
  targets = optimizer.target_sparsities()
  assert targets['wide'] == pytest.approx(1 - densities[0], abs=1e-3)
  assert targets['narrow'] == pytest.approx(1 - densities[1], abs=1e-3)
  x = np.random.RandomState(0).randn(8, 40).astype('float32')
  for _ in range(5):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model(x) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
  for mask, density in zip(optimizer.masks, densities):
    assert mask.numpy().mean() == pytest.approx(density, abs=0.01)
