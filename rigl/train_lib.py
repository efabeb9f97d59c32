"""The training loop shared by the MNIST, CIFAR-10 and ImageNet scripts.

It plays the part of the original's TPUEstimator loop on Keras 3:

- `make_strategy` picks the `tf.distribute` strategy from the scripts' flags;
- training runs through `model.fit` with `steps_per_execution` (the original's
  `iterations_per_loop`), in chunks that end at the checkpoint, evaluation and hook
  boundaries;
- `tf.train.CheckpointManager` writes `<output_dir>/model.ckpt-<global step>` every
  `steps_per_checkpoint` steps and at the end, and a restarted run resumes from the
  latest checkpoint;
- TensorBoard summaries: the training logs, learning rate and the sparse optimizer's
  scalars under `<output_dir>/train`, evaluation metrics under `<output_dir>/eval`;
- modes `train`, `eval` (each new checkpoint as it appears), `train_and_eval` and
  `eval_once`.

The global step is the optimizer's `iterations`. RigL's mask updates and SNIP's pruning
step consume a batch without advancing it (as in the original), so the position in the
input stream is a separate checkpointed variable, and the input function returns the
stream positioned at a given batch. Every decision of the loop is a function of that
restored state, so a run killed at any moment and started again with the same command
takes the same chunks and ends with the same weights and masks.
"""

import dataclasses
import importlib.util
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from rigl import layers as masked_layers_lib
from rigl import sparse_utils

MODES = ('train', 'eval', 'train_and_eval', 'eval_once')
CHECKPOINT_NAME = 'model.ckpt'


# tf.summary's writing ops come from the tensorboard package, which TensorFlow 2.21 no
# longer installs; without it training still runs, with no summaries.
HAVE_TENSORBOARD = importlib.util.find_spec('tensorboard') is not None


def write_scalars(writer, step, scalars):
  """Writes `{tag: scalar}` at `step` (nothing if tensorboard is not installed)."""
  if not HAVE_TENSORBOARD:
    return
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.scalar(name, tf.cast(value, tf.float32))


class CheckpointError(ValueError):
  """The checkpoint to evaluate does not exist, or one to resume does not fit."""


def make_strategy(use_tpu=False, tpu='', num_gpus=0):
  """The `tf.distribute` strategy the scripts' flags ask for.

  Args:
    use_tpu: connect to the TPU `tpu` and use `TPUStrategy`.
    tpu: the TPU's name or address (the original's `master`); '' is the local TPU.
    num_gpus: 0 trains on the default device, 1 on the first GPU, more with
      `MirroredStrategy` over that many GPUs.

  Returns:
    A `tf.distribute.Strategy`.
  """
  if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
    raise ValueError(f'num_gpus must be an integer >= 0, got {num_gpus!r}.')
  if use_tpu:
    if num_gpus:
      raise ValueError(f'use_tpu and num_gpus={num_gpus} exclude each other.')
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if num_gpus:
    available = len(tf.config.list_logical_devices('GPU'))
    if num_gpus > available:
      raise ValueError(
          f'num_gpus={num_gpus} but this machine has {available} GPU(s).')
    if num_gpus == 1:
      return tf.distribute.OneDeviceStrategy('/gpu:0')
    return tf.distribute.MirroredStrategy([f'/gpu:{i}' for i in range(num_gpus)])
  return tf.distribute.get_strategy()


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """What the loop does, in global steps.

  Attributes:
    output_dir: checkpoints and summaries go here; it is created if its parent exists.
    train_steps: train until the global step reaches this.
    steps_per_checkpoint: save every this many steps (and at the end); 0 never saves.
    keep_checkpoint_max: checkpoints kept; 0 keeps all (the original ImageNet default).
    steps_per_execution: training steps per `tf.function` call (the original's
      `iterations_per_loop`).
    steps_per_eval: in `train_and_eval`, evaluate every this many steps (and at the end).
    summary_steps: write training summaries about every this many steps; 0 never.
    eval_steps: batches per evaluation; None evaluates the whole eval dataset.
    eval_once_ckpt_prefix: checkpoint file name inside output_dir for `eval_once`;
      '' means the latest checkpoint.
    eval_timeout_s: in `eval`, stop after waiting this long for a new checkpoint; None
      waits until the final checkpoint has been evaluated.
    jit_compile: compile the training step with XLA.
  """
  output_dir: str
  train_steps: int
  steps_per_checkpoint: int = 1000
  keep_checkpoint_max: int = 0
  steps_per_execution: int = 1
  steps_per_eval: int = 1000
  summary_steps: int = 100
  eval_steps: int = None
  eval_once_ckpt_prefix: str = ''
  eval_timeout_s: float = None
  jit_compile: bool = False

  def __post_init__(self):
    for name, minimum in (('train_steps', 0), ('steps_per_checkpoint', 0),
                          ('keep_checkpoint_max', 0), ('steps_per_execution', 1),
                          ('steps_per_eval', 1), ('summary_steps', 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
          value < minimum):
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')
    if self.eval_steps is not None and (
        not isinstance(self.eval_steps, (int, np.integer)) or self.eval_steps < 1):
      raise ValueError(f'eval_steps must be None or an integer >= 1, got '
                       f'{self.eval_steps!r}.')
    if not self.output_dir:
      raise ValueError('output_dir must be a directory path, got an empty string.')
    parent = os.path.dirname(os.path.abspath(self.output_dir))
    if not tf.io.gfile.isdir(parent):
      raise ValueError(
          f'The parent directory of output_dir {self.output_dir!r} does not exist '
          f'({parent!r}); create it first or choose another output_dir.')


class Hook:
  """Called by `TrainLoop` at fixed points of training; override what you need.

  Attributes:
    every_steps: if set, training chunks also end at multiples of this many steps, so
      `before_chunk` sees each such step.
  """

  every_steps = None

  def begin(self, loop, step):
    """After the latest checkpoint (if any) is restored, before training."""

  def before_chunk(self, loop, step):
    """Before each `model.fit` chunk, at global step `step`."""

  def after_eval(self, loop, step, metrics):
    """After an evaluation during training."""

  def before_checkpoint(self, loop, step):
    """Before the checkpoint of step `step` is written; persist side state here.

    A run killed in between resumes from the previous checkpoint and rewrites it, so
    side state written now is never behind the latest checkpoint.
    """

  def end(self, loop, step):
    """After the last training step (also when training had already finished)."""


def sparsity_metrics(model):
  """`{'global_sparsity': s, 'sparsity/<layer>': s}` of a model's masked layers."""
  pairs = masked_layers_lib.get_mask_kernel_pairs(model)
  if not pairs:
    return {}
  masks = [mask for mask, _ in pairs]
  metrics = {'global_sparsity': float(sparse_utils.calculate_sparsity(masks))}
  for mask in masks:
    name = sparse_utils.layer_name_of_mask(sparse_utils.mask_name(mask))
    metrics[f'sparsity/{name}'] = float(sparse_utils.calculate_sparsity([mask]))
  return metrics


class _TrainSummaries(keras.callbacks.Callback):
  """Writes the training logs, learning rate and sparsity scalars to TensorBoard.

  Keras calls it once per `steps_per_execution` steps, so summaries land on the first
  execution boundary at or after each multiple of `every`.
  """

  def __init__(self, loop, writer, every):
    super().__init__()
    self._loop, self._writer, self._every = loop, writer, every
    self._next = None

  def on_train_batch_end(self, batch, logs=None):
    step = self._loop.global_step
    if self._next is None:
      self._next = (step // self._every) * self._every
    if step < self._next:
      return
    self._next = (step // self._every + 1) * self._every
    optimizer = self._loop.model.optimizer
    scalars = {k: v for k, v in (logs or {}).items() if np.ndim(v) == 0}
    scalars['learning_rate'] = optimizer.learning_rate
    if hasattr(optimizer, 'sparsity_summaries'):
      scalars.update(optimizer.sparsity_summaries())
    write_scalars(self._writer, step, scalars)


class TrainLoop:
  """Trains, checkpoints, evaluates and resumes one Keras model.

  Args:
    build_model: returns a built, uncompiled `keras.Model`; called in the strategy's
      scope.
    make_optimizer: returns the (possibly sparse) Keras optimizer; called in the scope.
    loss: the Keras loss of `model.compile`.
    metrics: the Keras metrics of `model.compile`.
    train_input_fn: `start_batch -> tf.data.Dataset` of global training batches, endless,
      whose first batch is batch number `start_batch` of the run's input stream.
      `start_batch` is a scalar int64 tensor: the loop calls the function once, inside a
      `tf.data` function that reads the batches consumed so far whenever `model.fit`
      starts a chunk, so the pipeline is traced once and not once per chunk.
    eval_input_fn: `() -> tf.data.Dataset` of evaluation batches, finite; called once.
    config: a `LoopConfig`.
    strategy: a `tf.distribute.Strategy`; None uses the default one.
    hooks: `Hook`s.
  """

  def __init__(self, build_model, make_optimizer, loss, metrics, train_input_fn,
               eval_input_fn, config, strategy=None, hooks=()):
    self.config = config
    self.strategy = strategy or tf.distribute.get_strategy()
    self.hooks = list(hooks)
    with self.strategy.scope():
      self.model = build_model()
      if not self.model.built:
        raise ValueError(
            'build_model must return a built model (give it a keras.Input).')
      self.model.compile(optimizer=make_optimizer(), loss=loss, metrics=metrics,
                         steps_per_execution=self._steps_per_execution(),
                         jit_compile=config.jit_compile)
      # Built now, so that a checkpoint restores into existing variables (Keras 3
      # variables do not support TensorFlow's deferred restoration). A sparse
      # optimizer initialises the masks here; a restore overwrites them.
      self.model.optimizer.build(self.model.trainable_variables)
    # Batches of the input stream consumed so far (see the module docstring). A plain
    # host variable, outside the strategy, since the input pipeline reads it.
    self.input_position = tf.Variable(0, dtype=tf.int64, trainable=False,
                                      name='input_position')
    self._train_dataset = tf.data.Dataset.range(1).flat_map(
        lambda _: train_input_fn(self.input_position.read_value()))
    self._eval_dataset = eval_input_fn()
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.model.optimizer,
        input_position=self.input_position)
    tf.io.gfile.makedirs(config.output_dir)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, config.output_dir,
        max_to_keep=config.keep_checkpoint_max or None,
        checkpoint_name=CHECKPOINT_NAME)
    self._writers = {}
    self.train_seconds = 0.0
    # The step training resumed from (0 for a fresh run); None until `train` runs.
    self.initial_step = None

  def _steps_per_execution(self):
    steps = self.config.steps_per_execution
    if steps > 1 and self.strategy.num_replicas_in_sync > 1 and not isinstance(
        self.strategy, tf.distribute.TPUStrategy):
      # Keras 3.15's multi-step loop fails under MirroredStrategy on TF 2.21 ("You
      # must feed a value for placeholder tensor 'while/cond/Placeholder'"), even
      # with a plain optimizer.
      logging.warning('steps_per_execution=%d is reduced to 1 under %s (a Keras '
                      'limitation).', steps, type(self.strategy).__name__)
      return 1
    return steps

  # --- State ----------------------------------------------------------------------

  @property
  def global_step(self):
    return int(self.model.optimizer.iterations.numpy())

  def writer(self, name):
    """The summary writer of `<output_dir>/<name>`."""
    if not HAVE_TENSORBOARD and not self._writers:
      logging.warning('The tensorboard package is not installed: no TensorBoard '
                      'summaries are written (pip install tensorboard).')
    if name not in self._writers:
      self._writers[name] = tf.summary.create_file_writer(
          os.path.join(self.config.output_dir, name))
    return self._writers[name]

  def restore(self, path=None, require_match=False):
    """Restores `path` (default: the latest checkpoint, if any); returns the step.

    Args:
      path: a checkpoint prefix, or None for the latest in output_dir.
      require_match: raise ValueError unless the checkpoint and the model and optimizer
        have exactly the same variables (resuming another model's checkpoint would
        otherwise leave some at their initial values or drop some, silently).
    """
    path = path or self.manager.latest_checkpoint
    if path:
      status = self.checkpoint.restore(path)
      if require_match:
        try:
          status.assert_consumed()
        except AssertionError as error:
          raise CheckpointError(
              f'The checkpoint {path!r} was not written by this model and optimizer, so '
              f'training cannot resume from it ({error}); use another output_dir.'
          ) from error
      else:
        status.expect_partial()
      logging.info('Restored %s (global step %d).', path, self.global_step)
    return self.global_step

  def save(self):
    """Writes `model.ckpt-<global step>` (after the hooks' `before_checkpoint`)."""
    step = self.global_step
    for hook in self.hooks:
      hook.before_checkpoint(self, step)
    path = self.manager.save(checkpoint_number=step)
    logging.info('Saved %s.', path)
    return path

  # --- Evaluation -----------------------------------------------------------------

  def evaluate(self, summary_name=None):
    """Evaluates the current weights; returns `{metric: float}` incl. sparsities.

    Args:
      summary_name: if set, the metrics are also written to `<output_dir>/<name>` at
        the current global step.
    """
    results = self.model.evaluate(self._eval_dataset, steps=self.config.eval_steps,
                                  verbose=0, return_dict=True)
    metrics = {k: float(v) for k, v in results.items()}
    metrics.update(sparsity_metrics(self.model))
    if summary_name:
      write_scalars(self.writer(summary_name), self.global_step, metrics)
      self.writer(summary_name).flush()
    return metrics

  def eval_once(self):
    """Evaluates `eval_once_ckpt_prefix` (or the latest checkpoint) once."""
    prefix = self.config.eval_once_ckpt_prefix
    if prefix:
      path = os.path.join(self.config.output_dir, prefix)
      if not tf.io.gfile.exists(path + '.index'):
        raise CheckpointError(
            f'eval_once_ckpt_prefix {prefix!r}: there is no checkpoint {path!r}.')
    else:
      path = self.manager.latest_checkpoint
      if path is None:
        raise CheckpointError(
            f'eval_once: there is no checkpoint in {self.config.output_dir!r}.')
    self.restore(path)
    name = 'eval_' + os.path.basename(path) if prefix else 'eval'
    return self.evaluate(summary_name=name)

  def continuous_eval(self):
    """Evaluates every new checkpoint until one reaches `train_steps`."""
    metrics = None
    for path in tf.train.checkpoints_iterator(
        self.config.output_dir, timeout=self.config.eval_timeout_s):
      try:
        step = self.restore(path)
      except tf.errors.NotFoundError:
        # The trainer's CheckpointManager deleted it before we got to it.
        logging.info('Checkpoint %s was deleted before it was evaluated.', path)
        continue
      metrics = self.evaluate(summary_name='eval')
      _log_progress(step, self.config.train_steps, metrics)
      if step >= self.config.train_steps:
        break
    return metrics

  # --- Training -------------------------------------------------------------------

  def _next_boundary(self, step, steps_per_eval):
    periods = [self.config.steps_per_checkpoint, steps_per_eval] + [
        h.every_steps for h in self.hooks]
    boundary = self.config.train_steps
    for period in periods:
      if period:
        boundary = min(boundary, (step // period + 1) * period)
    return boundary

  def train(self, steps_per_eval=None):
    """Trains to `train_steps`, resuming from the latest checkpoint.

    Args:
      steps_per_eval: evaluate every this many steps and at the end; None never.

    Returns:
      The metrics of the last evaluation, or None.
    """
    config = self.config
    step = self.initial_step = self.restore(require_match=True)
    for hook in self.hooks:
      hook.begin(self, step)
    callbacks = []
    if config.summary_steps:
      callbacks.append(_TrainSummaries(self, self.writer('train'), config.summary_steps))
    metrics, done = None, step
    while step < config.train_steps:
      for hook in self.hooks:
        hook.before_chunk(self, step)
      batches = self._next_boundary(step, steps_per_eval) - step
      dataset = self._train_dataset.take(batches).apply(
          tf.data.experimental.assert_cardinality(batches))
      started = time.time()
      self.model.fit(dataset, epochs=1, verbose=0, callbacks=callbacks, shuffle=False)
      self.train_seconds += time.time() - started
      self.input_position.assign_add(batches)
      step = self.global_step
      if step == done:
        # Every batch of the chunk was a mask-update step (RigL, SNIP).
        continue
      done = step
      evaluated = steps_per_eval and (
          step % steps_per_eval == 0 or step >= config.train_steps)
      if evaluated:
        metrics = self.evaluate(summary_name='eval')
        for hook in self.hooks:
          hook.after_eval(self, step, metrics)
      saved = config.steps_per_checkpoint and (
          step % config.steps_per_checkpoint == 0 or step >= config.train_steps)
      if saved:
        self.save()
      if evaluated or saved:
        _log_progress(step, config.train_steps, metrics if evaluated else {},
                      self.train_seconds)
    for writer in self._writers.values():
      writer.flush()
    for hook in self.hooks:
      hook.end(self, step)
    return metrics

  def run(self, mode):
    """Runs one of `MODES`; returns the last evaluation's metrics (or None)."""
    if mode == 'train':
      return self.train()
    if mode == 'train_and_eval':
      return self.train(steps_per_eval=self.config.steps_per_eval)
    if mode == 'eval':
      return self.continuous_eval()
    if mode == 'eval_once':
      return self.eval_once()
    raise ValueError(f'mode {mode!r} is not one of {MODES}.')


def _log_progress(step, train_steps, metrics, seconds=None):
  """One line of progress; `metrics` may be empty (a checkpoint without evaluation)."""
  shown = ''.join(f', {k}={v:.4f}' for k, v in metrics.items()
                  if k in ('loss', 'accuracy', 'global_sparsity'))
  timing = f' ({seconds:.1f} s training)' if seconds is not None else ''
  logging.info('step %d/%d%s%s', step, train_steps, shown, timing)
