"""The gradual-pruning sparsity schedule of Zhu & Gupta (2017), contrib `pruning`'s.

A plain formula, so that the pruning optimizer (on tensors) and the FLOPs accounting (on
Python numbers) share it.
"""


def gradual_sparsity(progress, initial_sparsity, target_sparsity, exponent=3.0):
  """`target + (initial - target) * (1 - progress)^exponent` for progress in [0, 1].

  Args:
    progress: the fraction of the pruning schedule done, already clipped to [0, 1]; a
      Python number or a tensor.
    initial_sparsity: the sparsity at progress 0.
    target_sparsity: the sparsity at progress 1.
    exponent: 3 is the cubic schedule of the paper.
  """
  return target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress)**exponent
