"""A Keras callback that records what a sparse optimizer does during `model.fit`."""

import keras
import tensorflow as tf

from rigl import mask_update_dispatch


class SparsitySummaries(keras.callbacks.Callback):
  """Logs the sparse optimizer's summaries to the History and to TensorBoard.

  At the end of every epoch the optimizer's `sparsity_summaries()` (the sparsity of the
  masked weights, of all trainable weights and of each masked weight; the last update's
  drop fraction and changed connections) join the epoch's logs, so `model.fit` returns them in
  its History and other callbacks (`CSVLogger`, `TensorBoard`) see them. With `log_dir`
  they are also written as TensorBoard scalars at the optimizer's step, and so is every
  mask update's count of changed connections, at the step of the update.

  Args:
    log_dir: a TensorBoard directory (e.g. the `TensorBoard` callback's `log_dir` plus
      '/sparsity'); None writes no events.
  """

  def __init__(self, log_dir=None):
    super().__init__()
    self.log_dir = log_dir
    self._writer = None
    self._last_update = None

  def _optimizer(self):
    optimizer = mask_update_dispatch.sparse_optimizer_of(self.model.optimizer)
    if optimizer is None:
      raise ValueError(
          f'SparsitySummaries needs a model compiled with a rigl sparse optimizer; '
          f'{self.model.name!r} has {type(self.model.optimizer).__name__}.')
    return optimizer

  def on_train_begin(self, logs=None):
    optimizer = self._optimizer()
    if self.log_dir:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    if not self.model.optimizer.built:
      # Built now rather than in the first step, to know where the schedule starts: an
      # update at step 0 (RigL's) must show as a change.
      self.model.optimizer.build(self.model.trainable_variables)
    if hasattr(optimizer, 'last_mask_update_step'):
      self._last_update = int(optimizer.last_mask_update_step.numpy())

  def on_train_batch_end(self, batch, logs=None):
    optimizer = self._optimizer()
    if self._writer is None or not hasattr(optimizer, 'last_mask_update_step'):
      return
    update = int(optimizer.last_mask_update_step.numpy())
    if update != self._last_update:
      with self._writer.as_default(step=update):
        tf.summary.scalar('mask_update/changed_connections',
                          optimizer.changed_connections.numpy())
    self._last_update = update

  def on_epoch_end(self, epoch, logs=None):
    optimizer = self._optimizer()
    summaries = {name: float(value)
                 for name, value in optimizer.sparsity_summaries().items()}
    if logs is not None:
      logs.update(summaries)
    if self._writer is not None:
      with self._writer.as_default(step=int(optimizer.iterations.numpy())):
        for name, value in summaries.items():
          tf.summary.scalar(name, value)
      self._writer.flush()

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None
