"""TF1 momentum semantics, checked against the update written out by hand."""

import keras
import numpy as np
import pytest

from rigl import tf1_momentum


@pytest.mark.parametrize('nesterov', [False, True])
def test_matches_tf1_update_across_a_learning_rate_drop(nesterov):
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.5, 0.1])
  optimizer = tf1_momentum.TF1MomentumOptimizer(schedule, 0.9, use_nesterov=nesterov)
  weight = keras.Variable(np.array([1.0, -2.0], np.float32))
  expected, accumulator = np.array([1.0, -2.0]), np.zeros(2)
  for step, grad in enumerate([[1.0, 0.5], [0.2, -1.0], [-0.3, 0.4], [0.7, 0.1]]):
    grad = np.array(grad)
    optimizer.apply([grad.astype(np.float32)], [weight])
    lr = 0.5 if step <= 2 else 0.1  # The boundary step still has the first value.
    accumulator = 0.9 * accumulator + grad
    expected = expected - lr * ((grad + 0.9 * accumulator) if nesterov else accumulator)
    np.testing.assert_allclose(np.asarray(weight), expected, rtol=1e-6)


def test_accumulator_is_in_gradient_units():
  optimizer = tf1_momentum.TF1MomentumOptimizer(0.5, 0.9)
  weight = keras.Variable(np.zeros(1, np.float32))
  optimizer.apply([np.ones(1, np.float32)], [weight])
  np.testing.assert_allclose(np.asarray(optimizer.accumulators[0]), [1.0])


def test_rejects_bad_momentum():
  with pytest.raises(ValueError, match='momentum must be a number in \\[0, 1\\], got 1.5'):
    tf1_momentum.TF1MomentumOptimizer(0.1, 1.5)


def test_config_round_trip():
  optimizer = tf1_momentum.TF1MomentumOptimizer(0.3, 0.8, use_nesterov=True)
  again = tf1_momentum.TF1MomentumOptimizer.from_config(optimizer.get_config())
  assert (again.momentum, again.use_nesterov) == (0.8, True)
