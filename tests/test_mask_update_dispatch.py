"""Tests of running the steps where no mask update can be due without the update test."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import layers
from rigl import mask_update_dispatch
from rigl import sparse_layers
from rigl import sparse_optimizers as so

FEATURES, CLASSES, BATCH, STEPS = 8, 3, 4, 18


def _model(sparse_execution=False):
  keras.utils.set_random_seed(1)
  model = keras.Sequential([
      keras.Input((FEATURES,)),
      layers.MaskedDense(16, activation='relu', name='hidden'),
      layers.MaskedDense(CLASSES, name='logits'),
  ])
  if sparse_execution:
    for layer in model.layers:
      layer.mask.assign(tf.cast(
          tf.random.stateless_uniform(layer.mask.shape, [2, 3]) < 0.5, tf.float32))
    model = sparse_layers.to_sparse_execution(model)
  return model


def _sgd():
  return keras.optimizers.SGD(0.1, momentum=0.9)


OPTIMIZERS = {
    'set': lambda: so.SparseSETOptimizer(_sgd(), frequency=4, drop_fraction=0.5,
                                         default_sparsity=0.5),
    'rigl': lambda: so.SparseRigLOptimizer(_sgd(), begin_step=2, end_step=13, frequency=4,
                                           drop_fraction=0.5, default_sparsity=0.5),
    'snfs': lambda: so.SparseMomentumOptimizer(_sgd(), frequency=5, drop_fraction=0.5,
                                               default_sparsity=0.5),
    'static': lambda: so.SparseStaticOptimizer(_sgd(), frequency=3, drop_fraction=0.5,
                                               default_sparsity=0.5),
    'snip': lambda: so.SparseSnipOptimizer(keras.optimizers.SGD(0.1), 0.5, 'random'),
    'dnw': lambda: so.SparseDNWOptimizer(keras.optimizers.SGD(0.1), 0.5, 'random'),
    'prune': lambda: so.GradualPruningOptimizer(
        keras.optimizers.SGD(0.1), begin_step=2, end_step=15, frequency=3,
        target_sparsity=0.7),
}


def _batches(count=STEPS, nan_at=()):
  rng = np.random.RandomState(0)
  batches = []
  for i in range(count):
    x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    if i in nan_at:
      x[0, 0] = np.nan
    batches.append((tf.constant(x), tf.constant(rng.randint(0, CLASSES, BATCH))))
  return batches


class _Run:
  """Steps of a model through a MaskUpdateDispatch, recording each call's copy."""

  def __init__(self, model, optimizer, skip_test):
    self.model, self.optimizer = model, optimizer
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make_function():
      @tf.function
      def step(x, y):
        with tf.GradientTape() as tape:
          loss = optimizer.scale_loss(loss_fn(y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

      return step

    self.dispatch = mask_update_dispatch.MaskUpdateDispatch(optimizer, make_function,
                                                            skip_test)
    self.calls = []  # 'tested' or 'untested', per call
    self.update_steps = []

  def step(self, x, y):
    function, steps = self.dispatch.next_call(1)
    assert steps == 1
    tested = function is self.dispatch._tested  # pylint: disable=protected-access
    self.calls.append('tested' if tested else 'untested')
    function(x, y)
    sparse = mask_update_dispatch.sparse_optimizer_of(self.optimizer)
    last = getattr(sparse, 'last_mask_update_step', None)
    self.update_steps.append(None if last is None else int(last))

  def state(self):
    return [np.asarray(v) for v in self.model.variables + self.optimizer.variables]


def _train(make_optimizer, skip_test, batches, sparse_execution=False):
  run = _Run(_model(sparse_execution), make_optimizer(), skip_test)
  for x, y in batches:
    run.step(x, y)
  return run


@pytest.mark.parametrize('method', sorted(OPTIMIZERS))
def test_untested_steps_train_exactly_as_tested_steps(method):
  batches = _batches()
  tested = _train(OPTIMIZERS[method], False, batches)
  dispatched = _train(OPTIMIZERS[method], True, batches)
  assert tested.calls == ['tested'] * STEPS
  for expected, actual in zip(tested.state(), dispatched.state()):
    np.testing.assert_array_equal(actual, expected)
  assert dispatched.update_steps == tested.update_steps
  if method in ('set', 'rigl', 'snfs', 'static', 'prune'):
    # Several updates happened, each in a tested call, and most calls were untested.
    assert len(set(tested.update_steps)) >= 3
    assert dispatched.calls.count('tested') <= len(set(tested.update_steps)) + 1
  assert dispatched.calls.count('untested') >= STEPS // 2


def test_sparse_execution_layers_get_their_grow_candidates_only_on_update_steps():
  batches = _batches()
  tested = _train(OPTIMIZERS['rigl'], False, batches, sparse_execution=True)
  dispatched = _train(OPTIMIZERS['rigl'], True, batches, sparse_execution=True)
  assert len(set(tested.update_steps)) == 4  # steps 2, 6, 10 and the initial -4
  for expected, actual in zip(tested.state(), dispatched.state()):
    np.testing.assert_array_equal(actual, expected)
  assert dispatched.calls.count('untested') >= STEPS - 4


def test_skipped_loss_scaled_steps_keep_the_count_right():
  # A non-finite batch makes the LossScaleOptimizer skip the apply: no step is counted.
  batches = _batches(nan_at=(1, 3, 6))
  make = lambda: keras.optimizers.LossScaleOptimizer(OPTIMIZERS['set'](),
                                                      initial_scale=2.0 ** 4)
  tested = _train(make, False, batches)
  dispatched = _train(make, True, batches)
  assert int(dispatched.optimizer.iterations) == STEPS - 3
  for expected, actual in zip(tested.state(), dispatched.state()):
    np.testing.assert_array_equal(actual, expected)
  assert dispatched.update_steps == tested.update_steps
  assert dispatched.calls.count('untested') >= STEPS // 2


def _first_update_brute_force(tested_step, begin, end, frequency, last):
  """Applies before the first whose tested step is due, trying one step at a time."""
  for applies in range(1000):
    step = tested_step + applies
    if step >= begin and (end < 0 or step <= end) and last + frequency <= step:
      return applies
  return math.inf


@pytest.mark.parametrize('begin, end, frequency', [(0, -1, 4), (7, 20, 5), (3, 3, 2)])
@pytest.mark.parametrize('iterations, last', [(0, None), (6, 5), (12, 10), (25, 20)])
def test_steps_without_update_follow_the_schedule(begin, end, frequency, iterations, last):
  for cls, tested_offset in ((so.SparseSETOptimizer, 1), (so.SparseRigLOptimizer, 0)):
    optimizer = cls(_sgd(), begin_step=begin, end_step=end, frequency=frequency,
                    default_sparsity=0.5)
    model = _model()
    assert optimizer.steps_without_update() == 0  # not built: test the first step
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(iterations)
    if last is not None:
      optimizer.last_mask_update_step.assign(last)
    last = int(optimizer.last_mask_update_step)
    assert optimizer.steps_without_update() == _first_update_brute_force(
        iterations + tested_offset, begin, end, frequency, last), cls.__name__


def test_steps_without_update_of_the_other_methods():
  model = _model()
  pruning = OPTIMIZERS['prune']()
  pruning.build(model.trainable_variables)
  pruning.iterations.assign(4)
  pruning.last_mask_update_step.assign(3)
  assert pruning.steps_without_update() == 1  # the apply after next tests step 6
  pruning.iterations.assign(15)
  pruning.last_mask_update_step.assign(15)
  assert pruning.steps_without_update() == math.inf  # past end_step

  snip = OPTIMIZERS['snip']()
  snip.build(model.trainable_variables)
  assert snip.steps_without_update() == 0
  snip.is_snipped.assign(True)
  assert snip.steps_without_update() == math.inf

  scratch = so.SparseStaticOptimizer(_sgd(), begin_step=0, end_step=0, frequency=1,
                                     default_sparsity=0.5)
  assert scratch.steps_without_update() == math.inf  # its steps never test
  assert OPTIMIZERS['dnw']().steps_without_update() == math.inf


def test_dense_optimizers_and_compiled_loops_keep_one_copy():
  made = []
  make = lambda: made.append(object()) or made[-1]
  dense = mask_update_dispatch.MaskUpdateDispatch(_sgd(), make)
  assert dense.next_call(5) == (made[0], 5)
  assert len(made) == 1
  wrapped = keras.optimizers.LossScaleOptimizer(OPTIMIZERS['rigl']())
  assert mask_update_dispatch.sparse_optimizer_of(wrapped) is wrapped.inner_optimizer
  made.clear()
  mask_update_dispatch.MaskUpdateDispatch(wrapped, make, skip_test=False)
  assert len(made) == 1


def test_calls_end_before_a_possible_update_and_resume_after_a_reset():
  optimizer = so.SparseSETOptimizer(_sgd(), frequency=10, default_sparsity=0.5)
  optimizer.build(_model().trainable_variables)
  optimizer.last_mask_update_step.assign(0)
  dispatch = mask_update_dispatch.MaskUpdateDispatch(optimizer, lambda: 'copy')
  # Steps 1..9 are cleared; the apply testing step 10 needs the test.
  first, steps = dispatch.next_call(6)
  assert (first, steps) == (dispatch._call_untested, 6)  # pylint: disable=protected-access
  assert dispatch.next_call(6)[1] == 3  # counted on the host, not read again
  optimizer.iterations.assign(9)  # what the 9 steps did
  assert dispatch.next_call(6) == ('copy', 1)
  optimizer.iterations.assign(2)  # e.g. a restore
  dispatch.reset()
  assert dispatch.next_call(100)[1] == 7
