"""Training calls that leave out the mask-update test where no update can be due.

A dynamic sparse optimizer tests in every step whether a mask update is due, with a
`tf.cond`, which costs even when no update is due: tens of microseconds of control flow
without XLA (up to 10% of a 1 ms MLP step, `bench/step_profile.py`), and with XLA about 3%
of a ResNet-50 step, whose weight updates then sit inside a conditional. The schedule is
known on the host, so a loop can trace its training function twice: once as usual, and
once in the optimizer's `no_update_due()`, which leaves the test out; it then runs the
second copy for the steps that `steps_without_update()` clears, and the first for the
others (one in every `frequency` steps). Both copies compute the same values; the price
is a second trace and compilation.
"""

import math

import keras

from rigl import sparse_optimizers


def sparse_optimizer_of(optimizer):
  """The sparse optimizer `optimizer` is or wraps (in a LossScaleOptimizer), or None."""
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    optimizer = optimizer.inner_optimizer
  if isinstance(optimizer, sparse_optimizers.SparseOptimizerBase):
    return optimizer
  return None


class MaskUpdateDispatch:
  """Chooses, call by call, the copy of a training function to run, and for how long.

  Args:
    optimizer: the training's optimizer; a dense one gets one copy.
    make_function: returns a new `tf.function` (a new trace cache) running the training
      steps; called once per copy.
    skip_test: whether to make the copy without the test; False keeps the test in
      every step, as `model.fit` does.

  The host counts the steps it has run; after a restore, or anything else that moves
  the optimizer's step or schedule, call `reset()`.
  """

  def __init__(self, optimizer, make_function, skip_test=True):
    self._optimizer = sparse_optimizer_of(optimizer) if skip_test else None
    self._tested = make_function()
    self._untested = make_function() if self._optimizer is not None else None
    self._cleared = 0

  def reset(self):
    """Forgets the cleared steps: they are read again before the next call."""
    self._cleared = 0

  def next_call(self, limit):
    """`(function, steps)`: the function to call next and how many steps it may run.

    Args:
      limit: the most steps the caller wants from this call (>= 1).

    Returns:
      `steps` is `limit`, or fewer where the call ends before a possible update, or 1
      for the step that may update (run with the test).
    """
    if self._optimizer is None:
      return self._tested, limit
    if not self._cleared:
      self._cleared = self._optimizer.steps_without_update()
    if not self._cleared:
      return self._tested, 1
    steps = limit if math.isinf(self._cleared) else min(limit, self._cleared)
    self._cleared -= steps
    return self._call_untested, steps

  def _call_untested(self, *args, **kwargs):
    with self._optimizer.no_update_due():
      return self._untested(*args, **kwargs)
