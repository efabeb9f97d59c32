"""TF1's `tf.train.MomentumOptimizer` as a Keras 3 optimizer.

The original scripts train with TF1 momentum, whose accumulator is in gradient units and
whose learning rate is applied when the weights are updated:

    acc = momentum * acc + g
    w -= lr * acc                      (plain)
    w -= lr * (g + momentum * acc)     (Nesterov)

Keras' `SGD(momentum=...)` keeps a velocity that already includes the learning rate, so
the two differ as soon as the learning rate changes (at every drop of a piecewise
schedule). The sparse optimizers also reset the accumulator of grown connections (RigL
to gradient * `initial_acc_scale`), which only means the same thing in gradient units.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package='rigl')
class TF1MomentumOptimizer(keras.optimizers.Optimizer):
  """Momentum with TF1 semantics (see the module docstring).

  Args:
    learning_rate: a float or a `keras.optimizers.schedules.LearningRateSchedule`.
    momentum: the accumulator's decay, in [0, 1].
    use_nesterov: the Nesterov form of the update.
    name: the optimizer's name.
    **kwargs: the other arguments of `keras.optimizers.Optimizer` (clipnorm, ...).
  """

  def __init__(self, learning_rate=0.01, momentum=0.9, use_nesterov=False,
               name='TF1Momentum', **kwargs):
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
        0 <= momentum <= 1):
      raise ValueError(f'momentum must be a number in [0, 1], got {momentum!r}.')
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = float(momentum)
    self.use_nesterov = bool(use_nesterov)

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self.accumulators = [
        self.add_variable_from_reference(reference_variable=v, name='accumulator')
        for v in var_list]

  def update_step(self, gradient, variable, learning_rate):
    learning_rate = ops.cast(learning_rate, variable.dtype)
    gradient = ops.cast(gradient, variable.dtype)
    accumulator = self.accumulators[self._get_variable_index(variable)]
    self.assign(accumulator, ops.add(ops.multiply(accumulator, self.momentum), gradient))
    if self.use_nesterov:
      step = ops.add(gradient, ops.multiply(accumulator, self.momentum))
    else:
      step = accumulator
    self.assign_sub(variable, ops.multiply(step, learning_rate))

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum, use_nesterov=self.use_nesterov)
    return config
