"""The training loop shared by the MNIST, CIFAR-10, ImageNet and char-LM scripts.

It plays the part of the original's TPUEstimator loop on Keras 3 and `tf.distribute`:

- `make_strategy` picks the strategy from the scripts' flags: a TPU (`TPUStrategy`),
  several workers (`MultiWorkerMirroredStrategy`, from `TF_CONFIG`), several GPUs
  (`MirroredStrategy`) or the default one;
- training runs `steps_per_execution` steps (the original's `iterations_per_loop`) per
  compiled call through `strategy.run`, the same code on every strategy, in chunks that
  end at the checkpoint, evaluation and hook boundaries; calls where no mask update can
  be due run a copy of the step without the update test (`rigl.mask_update_dispatch`);
- `tf.train.CheckpointManager` writes `<output_dir>/model.ckpt-<global step>` every
  `steps_per_checkpoint` steps and at the end, and a restarted run resumes from the
  latest checkpoint;
- evaluation covers every example exactly once: the last batch is padded, and padding
  carries weight 0; a sequence model's examples may weight their positions (a language
  model's last window is partly padding), and its metrics are means over every weighted
  position;
- TensorBoard summaries: the training losses, learning rate, gradient and weight norms,
  speed and the sparse optimizer's scalars under `<output_dir>/train`, evaluation
  metrics under `<output_dir>/<eval name>`;
- modes `train`, `eval` (each new checkpoint as it appears), `train_and_eval` and
  `eval_once`.

The global step is the optimizer's `iterations`. RigL's mask updates and SNIP's pruning
step consume a batch without advancing it (as in the original), so the position in the
input stream is a separate checkpointed variable, and the input function returns the
stream positioned at a given batch. Every decision of the loop is a function of that
restored state, so a run killed at any moment and started again with the same command
takes the same chunks and, given a deterministic input stream, ends with the same
weights and masks.
"""

import dataclasses
import datetime
import importlib.util
import json
import math
import os
import socket
import sys
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from rigl import mask_update_dispatch
from rigl import sparse_layers
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


class StrategyError(ValueError):
  """The accelerators the flags ask for cannot be used."""


def make_strategy(use_tpu=False, tpu='', num_gpus=0, tpu_job_name=None):
  """The `tf.distribute` strategy the scripts' flags ask for.

  Args:
    use_tpu: connect to the TPU `tpu` and use `TPUStrategy`.
    tpu: the TPU's name or `grpc://` address (the original's `master`); '' is the TPU
      of this TPU VM.
    num_gpus: 0 or 1 trains on the default device (a GPU if there is one), more with
      `MirroredStrategy` over that many GPUs.
    tpu_job_name: the TPU worker's job name, if not the default.

  Returns:
    A `tf.distribute.Strategy`. Without `use_tpu`, a `TF_CONFIG` environment variable
    describing several workers gives `MultiWorkerMirroredStrategy` (with `num_gpus`
    GPUs per worker).

  Raises:
    StrategyError: no TPU can be reached, or fewer GPUs than asked for.
  """
  if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
    raise StrategyError(f'num_gpus must be an integer >= 0, got {num_gpus!r}.')
  if use_tpu:
    if num_gpus:
      raise StrategyError(f'use_tpu and num_gpus={num_gpus} exclude each other.')
    return _tpu_strategy(tpu, tpu_job_name)
  if num_gpus:
    available = len(tf.config.list_logical_devices('GPU'))
    if num_gpus > available:
      raise StrategyError(
          f'num_gpus={num_gpus} but this machine has {available} GPU(s).')
  if _workers_in_tf_config() > 1:
    return tf.distribute.MultiWorkerMirroredStrategy()
  if num_gpus > 1:
    return tf.distribute.MirroredStrategy([f'/gpu:{i}' for i in range(num_gpus)])
  return tf.distribute.get_strategy()


def _workers_in_tf_config():
  config = json.loads(os.environ.get('TF_CONFIG') or '{}')
  cluster = config.get('cluster', {})
  return len(cluster.get('worker', [])) + len(cluster.get('chief', []))


def _tpu_strategy(tpu, tpu_job_name):
  where = f'the TPU {tpu!r}' if tpu else 'a TPU on this machine (--tpu is empty)'
  try:
    kwargs = {'job_name': tpu_job_name} if tpu_job_name else {}
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu, **kwargs)
    if tpu.startswith('grpc://'):
      _check_reachable(tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except Exception as error:  # pylint: disable=broad-except
    # The resolver fails in many ways: no metadata server, an unknown name, no TPU.
    message = str(error).splitlines()[0] if str(error) else ''
    raise StrategyError(
        f'--use_tpu: could not connect to {where}: {type(error).__name__}: {message}. '
        'Name a TPU with --tpu (or --master=grpc://host:port), run on a Cloud TPU VM, '
        'or train without --use_tpu.') from error
  return tf.distribute.TPUStrategy(resolver)


def _check_reachable(address, timeout_s=10.0):
  """Fails at once, rather than hanging, when nothing listens at a grpc:// address."""
  host, _, port = address[len('grpc://'):].rpartition(':')
  try:
    socket.create_connection((host, int(port)), timeout=timeout_s).close()
  except (OSError, ValueError) as error:
    raise ConnectionError(f'nothing answers at {address} ({error})') from error


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """What the loop does, in global steps.

  Attributes:
    output_dir: checkpoints and summaries go here; it is created if its parent exists.
    train_steps: train until the global step reaches this.
    train_batch_size: global training batch (all replicas together).
    eval_batch_size: global evaluation batch.
    eval_examples: examples of the evaluation set; every one is evaluated once.
    steps_per_checkpoint: save every this many steps (and at the end); 0 never saves.
    keep_checkpoint_max: checkpoints kept; 0 keeps all (the original ImageNet default).
    steps_per_execution: training steps per compiled call (the original's
      `iterations_per_loop`).
    steps_per_eval: in `train_and_eval`, evaluate every this many steps (and at the end).
    summary_steps: write training summaries about every this many steps; 0 never.
    progress_steps: log a progress line about every this many steps; 0 never.
    steps_per_epoch: steps of one epoch, for the `current_epoch` summary; 0 omits it.
    eval_once_ckpt_prefix: checkpoint for `eval_once`: a file prefix inside output_dir
      (or a path); '' means the latest checkpoint.
    eval_timeout_s: in `eval`, stop after waiting this long for a new checkpoint; None
      waits until the final checkpoint has been evaluated.
    jit_compile: compile the training step with XLA.
    eval_batch_statistics: evaluate with batch statistics in batch norm (the original's
      `use_batch_statistics`).
    mask_images: also write every mask as an image with the training summaries.
  """
  output_dir: str
  train_steps: int
  train_batch_size: int = 1
  eval_batch_size: int = 1
  eval_examples: int = 1
  steps_per_checkpoint: int = 1000
  keep_checkpoint_max: int = 0
  steps_per_execution: int = 1
  steps_per_eval: int = 1000
  summary_steps: int = 100
  progress_steps: int = 0
  steps_per_epoch: float = 0
  eval_once_ckpt_prefix: str = ''
  eval_timeout_s: float = None
  jit_compile: bool = False
  eval_batch_statistics: bool = False
  mask_images: bool = False

  def __post_init__(self):
    for name, minimum in (('train_steps', 0), ('train_batch_size', 1),
                          ('eval_batch_size', 1), ('eval_examples', 1),
                          ('steps_per_checkpoint', 0), ('keep_checkpoint_max', 0),
                          ('steps_per_execution', 1), ('steps_per_eval', 1),
                          ('summary_steps', 0), ('progress_steps', 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
          value < minimum):
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')
    if not self.output_dir:
      raise ValueError('output_dir must be a directory path, got an empty string.')
    parent = os.path.dirname(os.path.abspath(self.output_dir))
    if '://' not in self.output_dir and not tf.io.gfile.isdir(parent):
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
    """Before each chunk of training steps, at global step `step`."""

  def after_chunk(self, loop, step):
    """After each chunk of training steps, at global step `step`."""

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
  """`{'global_sparsity': s, 'sparsity/<layer>': s}` of a model's masked and sparse
  layers."""
  masks = sparse_layers.all_masks(model)
  if not masks:
    return {}
  summary = {name: float(value)
             for name, value in sparse_utils.sparsity_summary(masks).items()}
  metrics = {'global_sparsity': summary.pop('global')}
  metrics.update({f'sparsity/{name}': value for name, value in summary.items()})
  return metrics


def _in_top_k(labels, logits, k):
  """1.0 where the label is among the `k` largest logits; the labels' shape (a label per
  example, or per position of a sequence)."""
  k = min(k, logits.shape[-1])
  hits = tf.math.in_top_k(tf.reshape(tf.cast(labels, tf.int32), [-1]),
                          tf.reshape(logits, [-1, logits.shape[-1]]), k)
  return tf.reshape(tf.cast(hits, tf.float32), tf.shape(labels))


def _mean_per_example(losses):
  """`[batch]`: each example's loss, averaged over its positions if it has any."""
  if losses.shape.rank is None or losses.shape.rank <= 1:
    return losses
  return tf.reduce_mean(losses, axis=list(range(1, losses.shape.rank)))


_SHOWN_METRICS = ('loss', 'accuracy', 'top_5_accuracy', 'global_sparsity')


class TrainLoop:
  """Trains, checkpoints, evaluates and resumes one Keras model.

  Args:
    build_model: returns a built, uncompiled `keras.Model` whose outputs are logits;
      called in the strategy's scope.
    make_optimizer: returns the (possibly sparse) Keras optimizer; called in the scope.
    per_example_loss: `(labels, logits) -> [batch]` float32 losses (the "cross loss";
      the model's regularization losses are added for training). A sequence model's
      may be `[batch, positions]` (labels and logits with a time axis): training
      averages each example's positions, evaluation weights each position.
    train_input_fn: `(input_context, start_batch) -> tf.data.Dataset` of `(features,
      labels)` batches of `input_context.get_per_replica_batch_size(train_batch_size)`
      examples, endless, for this input pipeline; its first batch is global batch
      number `start_batch` (a scalar int64 tensor) of the run's input stream.
    eval_input_fn: `input_context -> tf.data.Dataset` of single `(features, label)`
      examples: this pipeline's share (`input_context.input_pipeline_id` of
      `num_input_pipelines`) of the `eval_examples` evaluation examples, finite. An
      example may also carry weights of its labels' shape, `(features, labels,
      weights)`: the metrics are then means over every position, each counted with
      its weight (0 leaves a position out, e.g. the padding of a last window).
    config: a `LoopConfig`.
    strategy: a `tf.distribute.Strategy`; None uses the default one.
    hooks: `Hook`s.
    class_names: if given, evaluations also report each class's precision and recall
      (`class_level_summaries/precision/<name>`, `.../recall/<name>`, the original
      CIFAR script's names); index i names class i.
    derived_metrics: `metrics -> {name: float}`, more metrics computed from an
      evaluation's (e.g. bits per character from the loss); they are returned, logged
      and written to TensorBoard with the others.
  """

  def __init__(self, build_model, make_optimizer, per_example_loss, train_input_fn,
               eval_input_fn, config, strategy=None, hooks=(), class_names=None,
               derived_metrics=None):
    self.config = config
    self.strategy = strategy or tf.distribute.get_strategy()
    self.hooks = list(hooks)
    self._per_example_loss = per_example_loss
    self._train_input_fn = train_input_fn
    self._eval_input_fn = eval_input_fn
    self._class_names = list(class_names or [])
    self._derived_metrics = derived_metrics
    self._shown_metrics = _SHOWN_METRICS
    replicas = self.strategy.num_replicas_in_sync
    for name in ('train_batch_size', 'eval_batch_size'):
      if getattr(config, name) % replicas:
        raise ValueError(f'{name}={getattr(config, name)} must be a multiple of the '
                         f'{replicas} replicas of {type(self.strategy).__name__}.')
    with self.strategy.scope():
      self.model = build_model()
      if not self.model.built:
        raise ValueError(
            'build_model must return a built model (give it a keras.Input).')
      self.optimizer = make_optimizer()
      # Built now, so that a checkpoint restores into existing variables (Keras 3
      # variables do not support TensorFlow's deferred restoration). A sparse
      # optimizer initialises the masks here; a restore overwrites them.
      self.optimizer.build(self.model.trainable_variables)
      self._train_metrics = {name: keras.metrics.Mean(name=name) for name in
                             ('loss', 'cross_loss', 'reg_loss', 'accuracy')}
      self._norms = {name: tf.Variable(0.0, trainable=False, name=name)
                     for name in ('grad_norm', 'var_norm')}
    # Batches of the input stream consumed so far (see the module docstring). A plain
    # host variable, outside the strategy, since the input pipeline reads it.
    self.input_position = tf.Variable(0, dtype=tf.int64, trainable=False,
                                      name='input_position')
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, input_position=self.input_position)
    # Under MultiWorkerMirroredStrategy every worker saves (saving is collective), the
    # chief into output_dir and the others into a directory of their own.
    self.is_chief = getattr(self.strategy.extended, 'should_checkpoint', True)
    checkpoint_dir = config.output_dir
    if not self.is_chief:
      checkpoint_dir = os.path.join(
          config.output_dir, f'worker_{self.strategy.cluster_resolver.task_id}')
    tf.io.gfile.makedirs(checkpoint_dir)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoint_max or None,
        checkpoint_name=CHECKPOINT_NAME)
    self._writers = {}
    self._train_dispatch = None
    self._eval_fn = None
    self.train_seconds = 0.0
    # The step training resumed from (0 for a fresh run); None until `train` runs.
    self.initial_step = None

  # --- State ----------------------------------------------------------------------

  @property
  def global_step(self):
    return int(self.optimizer.iterations.numpy())

  def latest_checkpoint(self):
    """The latest checkpoint of the run (the chief's), or None."""
    return tf.train.latest_checkpoint(self.config.output_dir)

  def writer(self, name):
    """The summary writer of `<output_dir>/<name>` (a no-op one on non-chief workers)."""
    if not self.is_chief:
      return tf.summary.create_noop_writer()
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
      require_match: raise CheckpointError unless the checkpoint and the model and
        optimizer have exactly the same variables (resuming another model's
        checkpoint would otherwise leave some at their initial values or drop some,
        silently). Otherwise every variable of the model must be in the checkpoint.
    """
    path = path or self.latest_checkpoint()
    if path:
      status = self.checkpoint.restore(path)
      try:
        if require_match:
          status.assert_consumed()
        else:
          # Every model variable must be in it; the optimizer's values may be unread.
          model_status = tf.train.Checkpoint(model=self.model).read(path)
          model_status.assert_existing_objects_matched().expect_partial()
          status.expect_partial()
      except AssertionError as error:
        what = 'resume from it' if require_match else 'evaluate it'
        raise CheckpointError(
            f'The checkpoint {path!r} was not written by this model and optimizer, so '
            f'the loop cannot {what} ({str(error)[:500]}); check the flags or use '
            'another output_dir.') from error
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

  def _eval_dataset(self, steps, eval_input_fn):
    """Per-replica batches of every evaluation example once, padded with weight 0.

    Elements: `(features, labels, weights, example weight)`, where `weights` (the
    labels' shape) are the example's own (ones if it has none) and the example weight
    is 1, or 0 for padding.
    """
    per_replica = self.config.eval_batch_size // self.strategy.num_replicas_in_sync

    def weighted(features, labels, weights=None):
      if weights is None:
        weights = tf.ones(tf.shape(labels), tf.float32)
      return features, labels, tf.cast(weights, tf.float32), tf.constant(1.0)

    def pipeline(context):
      examples = eval_input_fn(context).map(weighted)
      features, labels, weights, _ = examples.element_spec
      padding = tf.data.Dataset.from_tensors(
          (tf.zeros(features.shape, features.dtype), tf.zeros(labels.shape, labels.dtype),
           tf.zeros(weights.shape, tf.float32), tf.constant(0.0))).repeat()
      replicas_here = (self.strategy.num_replicas_in_sync //
                       context.num_input_pipelines)
      return examples.concatenate(padding).take(
          steps * replicas_here * per_replica).batch(per_replica, drop_remainder=True)

    return self.strategy.distribute_datasets_from_function(pipeline)

  def _build_eval_fn(self):
    model, num_classes = self.model, self.model.output_shape[-1]
    training = self.config.eval_batch_statistics

    def replica_sums(features, labels, weights, example_weights):
      logits = tf.cast(model(features, training=training), tf.float32)
      # Each position's weight: its own times its example's (0 for padding).
      weights = weights * tf.reshape(
          example_weights, [-1] + [1] * (weights.shape.rank - 1))
      sums = {
          'examples': tf.reduce_sum(example_weights),
          'weight': tf.reduce_sum(weights),
          'loss': tf.reduce_sum(self._per_example_loss(labels, logits) * weights),
          'accuracy': tf.reduce_sum(_in_top_k(labels, logits, 1) * weights),
          'top_5_accuracy': tf.reduce_sum(_in_top_k(labels, logits, 5) * weights),
      }
      if self._class_names:
        sums['confusion'] = tf.math.confusion_matrix(
            tf.reshape(tf.cast(labels, tf.int32), [-1]),
            tf.reshape(tf.argmax(logits, axis=-1, output_type=tf.int32), [-1]),
            num_classes=num_classes, weights=tf.reshape(weights, [-1]), dtype=tf.float32)
      return sums

    @tf.function
    def eval_batch(inputs):
      sums = self.strategy.run(replica_sums, args=inputs)
      return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
              for k, v in sums.items()}

    return eval_batch

  def evaluate(self, summary_name=None, progress=False, step=None, eval_input_fn=None,
               eval_examples=None):
    """Evaluates the current weights on every evaluation example once.

    Args:
      summary_name: if set, the metrics are also written to `<output_dir>/<name>` at
        `step`.
      progress: show a progress bar (on a terminal only: redirected into a log, the
        bar's redraws would be noise).
      step: the global step of the weights (default: the optimizer's).
      eval_input_fn, eval_examples: another evaluation set (e.g. a test split beside
        the validation split), in the form of the constructor's; default: the loop's.

    Returns:
      `{metric: float}`: `loss` (mean per-example loss, or per weighted position),
      `accuracy`, `top_5_accuracy`, `reg_loss`, the sparsities of `sparsity_metrics`,
      with `class_names` each class's precision and recall, and the derived metrics.
    """
    config = self.config
    if eval_input_fn is None:
      eval_input_fn, eval_examples = self._eval_input_fn, config.eval_examples
    steps = math.ceil(eval_examples / config.eval_batch_size)
    if self._eval_fn is None:
      self._eval_fn = self._build_eval_fn()
    show = progress and sys.stdout.isatty()
    bar = keras.utils.Progbar(steps, unit_name='batch') if show else None
    totals = None
    for i, inputs in enumerate(self._eval_dataset(steps, eval_input_fn)):
      sums = {k: v.numpy().astype(np.float64) for k, v in self._eval_fn(inputs).items()}
      totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
      if bar:
        bar.update(i + 1)
    seen = int(round(totals['examples'])) if totals else 0
    if seen != eval_examples:
      raise ValueError(
          f'The evaluation data held {seen} examples, but {eval_examples} were '
          'expected (the number of evaluation examples flag); every example must be '
          'evaluated once.')
    if not totals['weight'] > 0:
      raise ValueError('Every position of the evaluation data has weight 0.')
    metrics = {k: float(totals[k] / totals['weight'])
               for k in ('loss', 'accuracy', 'top_5_accuracy')}
    metrics['reg_loss'] = float(tf.add_n(self.model.losses)) if self.model.losses else 0.0
    if self._class_names:
      confusion = totals['confusion']  # rows: true class, columns: predicted class
      for c, name in enumerate(self._class_names):
        predicted, actual = confusion[:, c].sum(), confusion[c, :].sum()
        metrics[f'class_level_summaries/precision/{name}'] = (
            float(confusion[c, c] / predicted) if predicted else 0.0)
        metrics[f'class_level_summaries/recall/{name}'] = (
            float(confusion[c, c] / actual) if actual else 0.0)
    metrics.update(sparsity_metrics(self.model))
    if self._derived_metrics:
      derived = {k: float(v) for k, v in self._derived_metrics(metrics).items()}
      metrics.update(derived)
      self._shown_metrics = _SHOWN_METRICS + tuple(derived)
    if summary_name:
      write_scalars(self.writer(summary_name),
                    self.global_step if step is None else step, metrics)
      self.writer(summary_name).flush()
    return metrics

  def checkpoint_to_evaluate(self):
    """The checkpoint `eval_once` evaluates: `eval_once_ckpt_prefix` or the latest."""
    prefix = self.config.eval_once_ckpt_prefix
    if prefix:
      path = os.path.join(self.config.output_dir, prefix)
      if not tf.io.gfile.exists(path + '.index'):
        raise CheckpointError(
            f'eval_once_ckpt_prefix {prefix!r}: there is no checkpoint {path!r} '
            f'({path}.index does not exist).')
      return path
    path = self.latest_checkpoint()
    if path is None:
      raise CheckpointError(
          f'eval_once: there is no checkpoint in {self.config.output_dir!r}.')
    return path

  def eval_once(self):
    """Evaluates `eval_once_ckpt_prefix` (or the latest checkpoint) once."""
    path = self.checkpoint_to_evaluate()
    self.restore(path)
    name = 'eval_' + os.path.basename(path) if self.config.eval_once_ckpt_prefix else 'eval'
    return self.evaluate(summary_name=name, progress=True)

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
      self._log_evaluation(step, metrics)
      if step >= self.config.train_steps:
        break
    return metrics

  # --- Training -------------------------------------------------------------------

  def _build_train_chunk(self):
    """`(iterator, steps) -> None`: `steps` training steps in one compiled call."""
    model, optimizer, strategy = self.model, self.optimizer, self.strategy
    config = self.config
    metrics, norms = self._train_metrics, self._norms
    variables = model.trainable_variables

    def train_step(features, labels, summarize):
      with tf.GradientTape() as tape:
        logits = tf.cast(model(features, training=True), tf.float32)
        cross_loss = tf.nn.compute_average_loss(
            _mean_per_example(self._per_example_loss(labels, logits)),
            global_batch_size=config.train_batch_size)
        reg_loss = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
        reg_loss = tf.cast(reg_loss, tf.float32)
        loss = cross_loss + tf.nn.scale_regularization_loss(reg_loss)
        scaled_loss = optimizer.scale_loss(loss)
      grads = tape.gradient(scaled_loss, variables)
      optimizer.apply_gradients(zip(grads, variables))
      replicas = strategy.num_replicas_in_sync
      metrics['loss'].update_state(loss * replicas)
      metrics['cross_loss'].update_state(cross_loss * replicas)
      metrics['reg_loss'].update_state(reg_loss)
      metrics['accuracy'].update_state(tf.reduce_mean(_in_top_k(labels, logits, 1)))
      _record_norms(norms, grads, variables, summarize, optimizer)

    if config.jit_compile:
      train_step = tf.function(train_step, jit_compile=True)

    summary_steps = config.summary_steps

    @tf.function
    def train_chunk(iterator, steps):
      for _ in tf.range(steps):
        features, labels = next(iterator)
        step = optimizer.iterations
        summarize = (tf.equal((step + 1) % summary_steps, 0) if summary_steps
                     else tf.constant(False))
        strategy.run(train_step, args=(features, labels, summarize))

    return train_chunk

  def _next_boundary(self, step, steps_per_eval):
    periods = [self.config.steps_per_checkpoint, steps_per_eval] + [
        h.every_steps for h in self.hooks]
    boundary = self.config.train_steps
    for period in periods:
      if period:
        boundary = min(boundary, (step // period + 1) * period)
    return boundary

  def _train_iterator(self):
    """The training stream, positioned at the batches consumed so far."""
    start = tf.constant(int(self.input_position.numpy()), tf.int64)
    dataset = self.strategy.distribute_datasets_from_function(
        lambda context: self._train_input_fn(context, start))
    return iter(dataset)

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
    metrics = None
    if step < config.train_steps:
      if self._train_dispatch is None:
        self._train_dispatch = mask_update_dispatch.MaskUpdateDispatch(
            self.optimizer, self._build_train_chunk)
      iterator = self._train_iterator()
      reporter = _Reporter(self, step)
    while step < config.train_steps:
      for hook in self.hooks:
        hook.before_chunk(self, step)
      self._train_dispatch.reset()  # hooks and restores may move the step or the masks
      batches = self._next_boundary(step, steps_per_eval) - step
      started = time.time()
      remaining = batches
      while remaining:
        train_chunk, calls = self._train_dispatch.next_call(
            min(remaining, config.steps_per_execution))
        train_chunk(iterator, tf.constant(calls, tf.int64))
        remaining -= calls
        reporter.after_call(self.global_step, calls)
      self.train_seconds += time.time() - started
      self.input_position.assign_add(batches)
      step = self.global_step
      for hook in self.hooks:
        hook.after_chunk(self, step)
      if step == reporter.chunk_start_step:
        # Every batch of the chunk was a mask-update step (RigL, SNIP).
        continue
      reporter.chunk_start_step = step
      evaluated = steps_per_eval and (
          step % steps_per_eval == 0 or step >= config.train_steps)
      if evaluated:
        metrics = self.evaluate(summary_name='eval')
        self._log_evaluation(step, metrics)
        for hook in self.hooks:
          hook.after_eval(self, step, metrics)
      saved = config.steps_per_checkpoint and (
          step % config.steps_per_checkpoint == 0 or step >= config.train_steps)
      if saved:
        self.save()
    for writer in self._writers.values():
      writer.flush()
    for hook in self.hooks:
      hook.end(self, step)
    return metrics

  def _log_evaluation(self, step, metrics):
    shown = ''.join(f', {k}={v:.4f}' for k, v in metrics.items()
                    if k in self._shown_metrics)
    logging.info('evaluation at step %d/%d%s', step, self.config.train_steps, shown)

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


def _record_norms(norms, grads, variables, summarize, optimizer):
  """On summary steps, the norms of the global gradient and of the weights.

  Under a strategy the gradient is summed over replicas in cross-replica context, where
  a `tf.cond` around a reduction is allowed.
  """
  def record(reduce_sum, grads):
    def compute():
      reduced = [reduce_sum(g) for g in grads if g is not None]
      norms['grad_norm'].assign(
          tf.linalg.global_norm(reduced) / _loss_scale_of(optimizer))
      norms['var_norm'].assign(tf.linalg.global_norm(
          [tf.cast(v, tf.float32) for v in variables]))

    tf.cond(summarize, compute, lambda: None)

  if tf.distribute.has_strategy():
    tf.distribute.get_replica_context().merge_call(
        lambda strategy, g: record(
            lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), g),
        args=(grads,))
  else:
    record(lambda v: v, grads)


def _loss_scale_of(optimizer):
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return tf.cast(optimizer.dynamic_scale, tf.float32)
  return optimizer.loss_scale_factor or 1.0


class _Reporter:
  """Training summaries and progress lines, written between compiled calls."""

  def __init__(self, loop, step):
    self.loop = loop
    self.chunk_start_step = step
    config = loop.config
    # The first call writes summaries, so even a short run has some.
    self._next_summary = (step // config.summary_steps * config.summary_steps
                          if config.summary_steps else None)
    self._next_progress = _next_multiple(step, config.progress_steps)
    self._window_start = (time.time(), step, 0)
    self._progress_start = (time.time(), step)

  def after_call(self, step, batches):
    loop, config = self.loop, self.loop.config
    started, first_step, window_batches = self._window_start
    window_batches += batches
    self._window_start = (started, first_step, window_batches)
    if self._next_progress is not None and step >= self._next_progress:
      # Before the summary, which starts the training metrics' next window.
      self._next_progress = _next_multiple(step, config.progress_steps)
      self._log_progress(step)
    if self._next_summary is not None and step >= self._next_summary:
      self._next_summary = _next_multiple(step, config.summary_steps)
      seconds = max(time.time() - started, 1e-9)
      scalars = {k: m.result() for k, m in loop._train_metrics.items()}  # pylint: disable=protected-access
      scalars.update({k: v.read_value() for k, v in loop._norms.items()})  # pylint: disable=protected-access
      scalars['learning_rate'] = loop.optimizer.learning_rate
      scalars['global_step/sec'] = (step - first_step) / seconds
      scalars['examples/sec'] = window_batches * config.train_batch_size / seconds
      if config.steps_per_epoch:
        scalars['current_epoch'] = step / config.steps_per_epoch
      if hasattr(loop.optimizer, 'sparsity_summaries'):
        scalars.update(loop.optimizer.sparsity_summaries())
      writer = loop.writer('train')
      write_scalars(writer, step, scalars)
      if config.mask_images and HAVE_TENSORBOARD:
        with writer.as_default(step=step):
          for mask in sparse_layers.all_masks(loop.model):
            image = tf.reshape(tf.cast(mask, tf.float32), (1, -1, mask.shape[-1], 1))
            tf.summary.image('mask/' + sparse_utils.mask_key(mask), image, max_outputs=1)
      for metric in loop._train_metrics.values():  # pylint: disable=protected-access
        metric.reset_state()
      self._window_start = (time.time(), step, 0)

  def _log_progress(self, step):
    loop, config = self.loop, self.loop.config
    started, first_step = self._progress_start
    seconds = max(time.time() - started, 1e-9)
    rate = (step - first_step) / seconds
    left = (config.train_steps - step) / rate if rate > 0 else float('inf')
    loss = float(loop._train_metrics['loss'].result())  # pylint: disable=protected-access
    eta = (str(datetime.timedelta(seconds=int(left))) if math.isfinite(left) else '?')
    logging.info('step %d/%d: loss %.4f, %.2f steps/s, %.1f examples/s, %s left',
                 step, config.train_steps, loss, rate,
                 rate * config.train_batch_size, eta)
    self._progress_start = (time.time(), step)


def _next_multiple(step, period):
  return (step // period + 1) * period if period else None

