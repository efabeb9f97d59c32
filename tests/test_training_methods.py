"""Tests of rigl.training_methods: the one method -> optimizer dispatch."""

import keras
import numpy as np
import pytest

from rigl import layers
from rigl import sparse_layers
from rigl import sparse_optimizers as so
from rigl import training_methods


def _mlp():
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((12,)), layers.MaskedDense(16, name='a'),
                           layers.MaskedDense(4, name='b')])


@pytest.mark.parametrize('method, cls', [
    ('scratch', so.SparseStaticOptimizer), ('set', so.SparseSETOptimizer),
    ('static', so.SparseStaticOptimizer), ('momentum', so.SparseMomentumOptimizer),
    ('rigl', so.SparseRigLOptimizer), ('snip', so.SparseSnipOptimizer),
    ('dnw', so.SparseDNWOptimizer), ('prune', so.GradualPruningOptimizer)])
def test_each_method_gets_its_optimizer(method, cls):
  inner = keras.optimizers.SGD(0.1)
  optimizer = training_methods.make_optimizer(
      inner, training_methods.MethodConfig(method, end_sparsity=0.75, seed=3,
                                           maskupdate_frequency=7, drop_fraction=0.2,
                                           pruning_end_step=100))
  assert type(optimizer) is cls  # pylint: disable=unidiomatic-typecheck
  assert optimizer.inner_optimizer is inner
  if method in training_methods.DST_METHODS:
    assert (optimizer.frequency, optimizer.drop_fraction) == (7, 0.2)
  if method == 'scratch':
    assert optimizer.drop_fraction == 0.0


def test_baseline_is_the_inner_optimizer():
  inner = keras.optimizers.SGD(0.1)
  assert training_methods.make_optimizer(
      inner, training_methods.MethodConfig('baseline')) is inner


def test_unknown_method_names_the_choices():
  with pytest.raises(ValueError, match="'magic'.*rigl"):
    training_methods.MethodConfig('magic')


@pytest.mark.parametrize('method', training_methods.SPARSE_EXECUTION_METHODS)
def test_sparse_execution_starts_from_the_masks_the_optimizer_draws(method):
  config = training_methods.MethodConfig(method, end_sparsity=0.75, seed=5)
  masked = _mlp()
  training_methods.make_optimizer(keras.optimizers.SGD(0.1), config).build(
      masked.trainable_variables)
  sparse = training_methods.to_sparse_execution(_mlp(), config)
  assert [type(l) for l in sparse.layers] == [sparse_layers.SparseDense] * 2
  for s, m in zip(sparse.layers, masked.layers):
    np.testing.assert_array_equal(np.asarray(s.mask), m.mask.numpy())
    np.testing.assert_array_equal(s.dense_kernel().numpy(),
                                  (m.kernel_variable * m.mask).numpy())
  assert [l.nnz for l in sparse.layers] == [48, 16]


@pytest.mark.parametrize('method', ['momentum', 'snip', 'dnw', 'prune', 'baseline'])
def test_sparse_execution_refuses_methods_that_need_dense_state(method):
  with pytest.raises(ValueError, match=f"not training_method='{method}'"):
    training_methods.to_sparse_execution(_mlp(), training_methods.MethodConfig(method))
