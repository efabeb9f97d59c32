r"""Trains and evaluates sparse ImageNet models: the original's main script.

On a Cloud TPU (the paper's ResNet-50 RigL ERK 80% run, 5x):

  python -m rigl.imagenet_resnet.imagenet_train_eval --use_tpu --tpu=$TPU_NAME \
    --data_directory=gs://bucket/imagenet --output_dir=gs://bucket/runs \
    --gin_config=configs/imagenet_resnet50_rigl_erk_80_5x.gin --mode=train_and_eval

A released checkpoint, with the original README's command:

  python rigl/imagenet_resnet/imagenet_train_eval.py --mode=eval_once \
    --output_dir=path/to/ckpt/folder --eval_once_ckpt_prefix=model.ckpt-3200000 \
    --use_folder_stub=False --training_method=rigl \
    --mask_init_method=erdos_renyi_kernel --first_layer_sparsity=-1

Every flag of the original keeps its name and default (some never did anything, and
still do not: `num_workers`, `ps_task`, `is_warm_up`, `block_width`, `block_height`,
`transpose_input`). New: `--dataset` (TFRecords or TensorFlow Datasets), `--tpu`,
`--num_gpus`, `--image_size`, `--summary_steps`, the pruning schedule of `prune`, and
`--gin_config` / `--gin_bindings` / `--dry_run`. Without `--data_directory` the input is
synthetic, to smoke-test a machine.
"""

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
from rigl import export
from rigl import script_flags
from rigl import tf1_checkpoints
from rigl import tf1_momentum
from rigl import train_lib
from rigl import training_methods
from rigl.imagenet_resnet import imagenet_input
from rigl.imagenet_resnet import imagenet_model

SCRIPT_NAME = 'imagenet_train_eval'
FLAGS = flags.FlagValues()
_UNUSED = 'Accepted for the original\'s command lines; it has no effect (as in the original).'

flags.DEFINE_enum('precision', 'float32', ('float32', 'bfloat16'),
                  'float32, or bfloat16 compute (Keras mixed_bfloat16; logits, losses and '
                  'masks in float32).', flag_values=FLAGS)
flags.DEFINE_integer('num_workers', 1, _UNUSED, flag_values=FLAGS)
flags.DEFINE_float('base_learning_rate', 0.1, 'Learning rate for a batch of 256; scaled '
                   'by train_batch_size / 256.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('momentum', 0.9, 'Momentum of the (Nesterov) momentum optimizer.',
                   lower_bound=0, upper_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('ps_task', 0, _UNUSED, flag_values=FLAGS)
flags.DEFINE_float('weight_decay', 1e-4, 'L2 on the kernels: weight_decay * ||w||^2 / 2.',
                   lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string('master', '', 'The TPU\'s name or grpc:// address (as --tpu).',
                    flag_values=FLAGS)
flags.DEFINE_integer('steps_per_checkpoint', 1000, 'Save a checkpoint every this many '
                     'steps.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('keep_checkpoint_max', 0, 'Checkpoints kept; 0 keeps all.',
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string('data_directory', None, 'ImageNet TFRecords (train-*, validation-*), '
                    'or TFDS\'s data directory with --dataset=imagenet2012; empty: '
                    'synthetic data.', flag_values=FLAGS)
flags.DEFINE_enum('dataset', 'tfrecords', imagenet_input.SOURCES,
                  'tfrecords: --data_directory holds tensorflow/tpu-style TFRecords. '
                  'imagenet2012: TensorFlow Datasets\' ImageNet.', flag_values=FLAGS)
flags.DEFINE_string('eval_once_ckpt_prefix', '', 'Checkpoint file inside --output_dir '
                    'that --mode=eval_once evaluates (this project\'s or a TF1 one such as '
                    'the released model.ckpt-3200000); empty: the latest.', flag_values=FLAGS)
flags.DEFINE_enum('data_format', 'channels_last', ('channels_last', 'channels_first'),
                  'channels_first runs the network in NCHW (GPUs only).', flag_values=FLAGS)
flags.DEFINE_bool('transpose_input', False, _UNUSED, flag_values=FLAGS)
flags.DEFINE_bool('log_mask_imgs_each_iteration', False, 'Also write every mask as an '
                  'image with the training summaries.', flag_values=FLAGS)
flags.DEFINE_integer('resnet_depth', 50, 'Depth of ResNet: 18, 34, 50, 101, 152 or 200.',
                     flag_values=FLAGS)
flags.DEFINE_float('label_smoothing', 0.1, 'Label smoothing of the cross entropy.',
                   lower_bound=0, upper_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('train_steps', 2, 'Global steps to train (the original\'s default '
                     'is 2; the paper: 32000 at batch 4096), times '
                     '--training_steps_multiplier.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('train_batch_size', 1024, 'Global training batch.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('eval_batch_size', 1000, 'Global evaluation batch.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('num_train_images', 1281167, 'Training images (one epoch).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('num_eval_images', 50000, 'Evaluation images; each is evaluated once '
                     '(the last batch is padded).', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('num_label_classes', 1000, 'Classes.', lower_bound=2,
                     flag_values=FLAGS)
flags.DEFINE_integer('steps_per_eval', 1251, 'train_and_eval evaluates every this many '
                     'steps.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('iterations_per_loop', 1251, 'Training steps per compiled call '
                     '(and per progress line).', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('num_parallel_calls', 64, 'Parallel input preprocessing calls.',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('num_cores', 8, 'TPU cores; the TPU\'s own count is used, and a '
                     'different value is reported.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string('output_dir', '/tmp/imagenet/', 'Checkpoints, summaries and '
                    'evaluation results go here (below the folder stub).', flag_values=FLAGS)
flags.DEFINE_bool('use_folder_stub', True, 'Append training_method/end_sparsity/'
                  'maskupdate_begin_step/maskupdate_end_step/maskupdate_frequency/'
                  'drop_fraction/label_smoothing/weight_decay to --output_dir.',
                  flag_values=FLAGS)
flags.DEFINE_bool('use_batch_statistics', False, 'Batch norm uses batch statistics in '
                  'evaluation too.', flag_values=FLAGS)
flags.DEFINE_bool('eval_on_train', False, 'Evaluate on the training split.',
                  flag_values=FLAGS)
flags.DEFINE_enum('mode', 'train', train_lib.MODES, 'train, eval (each new checkpoint), '
                  'train_and_eval or eval_once.', flag_values=FLAGS)
flags.DEFINE_integer('export_model_freq', 2502, '--mode=train exports a SavedModel (masks '
                     'folded) every this many steps to <output_dir>/export_dir/<step>.',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum('init_method', 'baseline', ('baseline', 'sparse'),
                  'sparse: Glorot-uniform scaled for the layers\' density.',
                  flag_values=FLAGS)
flags.DEFINE_bool('is_warm_up', True, _UNUSED, flag_values=FLAGS)
flags.DEFINE_float('width', -1., 'Channel multiplier; <= 0 means 1.', flag_values=FLAGS)
flags.DEFINE_bool('use_adam', False, 'Adam with a constant learning rate.',
                  flag_values=FLAGS)
flags.DEFINE_bool('use_sgdr', False, 'Cosine decay with restarts (SGDR), in epochs.',
                  flag_values=FLAGS)
flags.DEFINE_float('sgdr_decay_step', 5, 'SGDR: epochs of the first cycle.',
                   lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('sgdr_t_mul', 1.5, 'SGDR: cycle-length multiplier.', flag_values=FLAGS)
flags.DEFINE_float('sgdr_m_mul', 0.5, 'SGDR: learning-rate multiplier per restart.',
                   flag_values=FLAGS)
script_flags.define_method_flags(
    FLAGS, training_method='scratch', mask_init_method='', end_sparsity=0.9,
    maskupdate_end_step=25000, drop_fraction_anneal='constant')
flags.DEFINE_float('first_layer_sparsity', 0., '0: the first layer is a plain, unmasked '
                   'layer; -1: masked at the distribution\'s sparsity; in (0, 1): masked at '
                   'this sparsity. Only ResNet honours it (MobileNets never mask their first '
                   'layer, VGGs always do).', flag_values=FLAGS)
flags.DEFINE_float('last_layer_sparsity', -1, 'The same for the last layer.',
                   flag_values=FLAGS)
flags.DEFINE_string('load_mask_dir', '', 'A checkpoint (or its directory), TF1 or this '
                    'project\'s, to take the initial masks from.', flag_values=FLAGS)
flags.DEFINE_string('initial_value_checkpoint', '', 'A checkpoint (or its directory) to '
                    'take the initial weights, biases and batch-norm gamma and beta from.',
                    flag_values=FLAGS)
flags.DEFINE_enum('model_architecture', 'resnet', imagenet_model.ARCHITECTURES,
                  'The network.', flag_values=FLAGS)
flags.DEFINE_float('expansion_factor', 6., 'MobileNet v2\'s expansion.', lower_bound=1,
                   flag_values=FLAGS)
flags.DEFINE_float('training_steps_multiplier', 1.0, 'Scales train_steps, the learning '
                   'rate schedule, and the mask-update and pruning steps.', lower_bound=0,
                   flag_values=FLAGS)
flags.DEFINE_integer('block_width', 1, _UNUSED, flag_values=FLAGS)
flags.DEFINE_integer('block_height', 1, _UNUSED, flag_values=FLAGS)
# New flags.
flags.DEFINE_integer('image_size', imagenet_input.IMAGE_SIZE, 'Height and width of the '
                     'images (224 as the original; smaller for quick runs).', lower_bound=32,
                     flag_values=FLAGS)
flags.DEFINE_integer('summary_steps', 100, 'Write training summaries about every this many '
                     'steps (at the end of a compiled call).', lower_bound=0,
                     flag_values=FLAGS)
script_flags.define_pruning_schedule_flags(FLAGS, 10000, 25000, 1000)
script_flags.define_strategy_flags(FLAGS)
script_flags.define_gin_flags(FLAGS)
script_flags.finite(FLAGS, 'base_learning_rate', 'momentum', 'weight_decay',
                    'label_smoothing', 'width', 'sgdr_decay_step', 'sgdr_t_mul',
                    'sgdr_m_mul', 'first_layer_sparsity', 'last_layer_sparsity',
                    'training_steps_multiplier')

# (multiplier, start epoch) pairs: linear warm-up to the first, steps at the others.
LR_SCHEDULES = {
    'resnet': ((1.0, 0), (0.1, 30), (0.01, 70), (0.001, 90), (1e-4, 120)),
    'vgg': ((1.0, 0), (0.1, 30), (0.01, 70), (0.001, 90), (1e-4, 120)),
    'mobilenet': ((1.0, 8), (0.1, 40), (0.01, 75), (0.001, 95), (3e-4, 120)),
}
EXPORT_DIR = 'export_dir'
# The flags a run may be resumed or evaluated with whatever it was trained with (where
# the data and outputs are, what and how often to evaluate and report, which machine,
# and the flags that never did anything); every other flag decides what the run
# computes (`script_flags.check_run_flags`). --train_steps may grow.
FREE_FLAGS = (
    'output_dir', 'use_folder_stub', 'mode', 'eval_once_ckpt_prefix', 'data_directory',
    'dataset', 'steps_per_checkpoint', 'keep_checkpoint_max', 'steps_per_eval',
    'iterations_per_loop', 'summary_steps', 'export_model_freq',
    'log_mask_imgs_each_iteration', 'num_parallel_calls', 'eval_batch_size',
    'num_eval_images', 'eval_on_train', 'use_batch_statistics', 'master', 'use_tpu', 'tpu',
    'tpu_job_name', 'num_gpus', 'num_cores', 'num_workers', 'ps_task', 'is_warm_up',
    'block_width', 'block_height', 'transpose_input', 'gin_config', 'gin_bindings')
GROWING_FLAGS = ('train_steps',)


@keras.saving.register_keras_serializable(package='rigl')
class ImageNetLearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """The original's learning rate as a function of the epoch (step / steps per epoch).

  Piecewise: a linear warm-up from 0 to `scaled_lr * schedule[0][0]` over
  `schedule[0][1]` epochs (none if 0), then `scaled_lr * multiplier` from each start
  epoch on. With `sgdr`, TF1's `cosine_decay_restarts` over epochs instead.
  """

  def __init__(self, scaled_lr, steps_per_epoch, schedule, sgdr=None):
    self.scaled_lr = float(scaled_lr)
    self.steps_per_epoch = float(steps_per_epoch)
    self.schedule = [tuple(map(float, pair)) for pair in schedule]
    self.sgdr = dict(sgdr) if sgdr else None
    if self.sgdr:
      self._sgdr = keras.optimizers.schedules.CosineDecayRestarts(
          self.scaled_lr, self.sgdr['decay_step'], t_mul=self.sgdr['t_mul'],
          m_mul=self.sgdr['m_mul'])

  def __call__(self, step):
    epoch = tf.cast(step, tf.float32) / self.steps_per_epoch
    if self.sgdr:
      return self._sgdr(epoch)
    first_multiplier, warmup_epochs = self.schedule[0]
    rate = (self.scaled_lr * first_multiplier * epoch / warmup_epochs if warmup_epochs
            else tf.constant(0.0))
    for multiplier, start_epoch in self.schedule:
      rate = tf.where(epoch < start_epoch, rate, self.scaled_lr * multiplier)
    return rate

  def get_config(self):
    return {'scaled_lr': self.scaled_lr, 'steps_per_epoch': self.steps_per_epoch,
            'schedule': self.schedule, 'sgdr': self.sgdr}


# --- Settings -------------------------------------------------------------------------

def width():
  return 1. if FLAGS.width <= 0 else FLAGS.width


def multiplied(step):
  return int(step * FLAGS.training_steps_multiplier)


def train_steps():
  return multiplied(FLAGS.train_steps)


def lr_schedule_pairs():
  """The architecture's (multiplier, start epoch) pairs, stretched by the multiplier."""
  family = ('mobilenet' if FLAGS.model_architecture.startswith('mobilenet') else
            'vgg' if FLAGS.model_architecture.startswith('vgg') else 'resnet')
  return [(m, e * FLAGS.training_steps_multiplier) for m, e in LR_SCHEDULES[family]]


def custom_sparsity_map():
  return imagenet_model.custom_sparsity_map(
      FLAGS.model_architecture, FLAGS.first_layer_sparsity, FLAGS.last_layer_sparsity)


def method_config():
  return script_flags.scaled_method_config(FLAGS, custom_sparsity_map())


def output_dir():
  """--output_dir, below the original's folder stub with --use_folder_stub."""
  if not FLAGS.use_folder_stub:
    return FLAGS.output_dir
  stub = [FLAGS.training_method, FLAGS.end_sparsity,
          multiplied(FLAGS.maskupdate_begin_step), multiplied(FLAGS.maskupdate_end_step),
          FLAGS.maskupdate_frequency, FLAGS.drop_fraction, FLAGS.label_smoothing,
          FLAGS.weight_decay]
  return os.path.join(FLAGS.output_dir, *[str(part) for part in stub])


def build_model():
  """The network of the flags, with bfloat16 compute under --precision=bfloat16."""
  previous = keras.config.dtype_policy()
  if FLAGS.precision == 'bfloat16':
    keras.config.set_dtype_policy('mixed_bfloat16')
  try:
    return imagenet_model.build_model(
        FLAGS.model_architecture, num_classes=FLAGS.num_label_classes,
        resnet_depth=FLAGS.resnet_depth, width=width(),
        expansion_factor=FLAGS.expansion_factor,
        first_layer_sparsity=FLAGS.first_layer_sparsity,
        last_layer_sparsity=FLAGS.last_layer_sparsity, init_method=FLAGS.init_method,
        end_sparsity=FLAGS.end_sparsity, weight_decay=FLAGS.weight_decay,
        data_format=FLAGS.data_format, image_size=FLAGS.image_size)
  finally:
    keras.config.set_dtype_policy(previous)


def restore_checkpoint(model, path):
  """Restores `model` from a TF1 checkpoint of the original or one of this script's."""
  return tf1_checkpoints.restore_model(
      model, path, imagenet_model.tf1_scope,
      imagenet_model.checkpoint_hints(FLAGS.model_architecture))


def example_inputs(count, seed=0):
  """`count` random [0, 255] images of the model's input size."""
  rng = np.random.RandomState(seed)
  return rng.uniform(0, 255, (count, FLAGS.image_size, FLAGS.image_size, 3)).astype(
      np.float32)


def make_optimizer(config):
  scaled_lr = FLAGS.base_learning_rate * FLAGS.train_batch_size / 256.0
  if FLAGS.use_adam:
    # TF1's AdamOptimizer defaults (Keras' epsilon is 1e-7), with a constant rate.
    inner = keras.optimizers.Adam(scaled_lr, epsilon=1e-8)
  else:
    sgdr = dict(decay_step=FLAGS.sgdr_decay_step, t_mul=FLAGS.sgdr_t_mul,
                m_mul=FLAGS.sgdr_m_mul) if FLAGS.use_sgdr else None
    schedule = ImageNetLearningRate(scaled_lr, FLAGS.num_train_images /
                                    FLAGS.train_batch_size, lr_schedule_pairs(), sgdr)
    inner = tf1_momentum.TF1MomentumOptimizer(schedule, FLAGS.momentum, use_nesterov=True)
  return training_methods.make_optimizer(inner, config)


def per_example_loss(labels, logits):
  """Softmax cross entropy with label smoothing, TF1's `softmax_cross_entropy`'s."""
  one_hot = tf.one_hot(tf.cast(labels, tf.int32), FLAGS.num_label_classes)
  return keras.losses.categorical_crossentropy(
      one_hot, logits, from_logits=True, label_smoothing=FLAGS.label_smoothing)


def check_flags():
  """Refuses combinations that could only fail later, naming the flag."""
  if FLAGS.model_architecture == 'resnet' and FLAGS.resnet_depth not in (
      18, 34, 50, 101, 152, 200):
    raise ValueError(f'--resnet_depth={FLAGS.resnet_depth} is not one of 18, 34, 50, 101, '
                     '152, 200.')
  if FLAGS.data_format == 'channels_first' and not tf.config.list_logical_devices('GPU'):
    raise ValueError('--data_format=channels_first needs a GPU (TensorFlow\'s CPU '
                     'convolutions take channels_last only); use channels_last here.')
  custom_sparsity_map()  # Checks the first/last-layer flags.
  if FLAGS.mode in script_flags.TRAINING_MODES:
    steps = [train_steps(), FLAGS.sparsity_begin_step, FLAGS.sparsity_end_step]
    if FLAGS.training_method == 'prune' and not (
        0 <= steps[1] < steps[2]):
      raise ValueError(f'--training_method=prune needs --sparsity_begin_step < '
                       f'--sparsity_end_step, got {steps[1]} and {steps[2]}.')


# --- Hooks ----------------------------------------------------------------------------

def eval_record(metrics, step):
  """An evaluation in the original's names."""
  return {
      'eval_accuracy': metrics['accuracy'],
      'top_5_eval_accuracy': metrics['top_5_accuracy'],
      'cross_loss': metrics['loss'],
      'reg_loss': metrics['reg_loss'],
      'global_step': step,
      'global_sparsity': metrics.get('global_sparsity', 0.0),
      'per_layer_sparsity': {k[len('sparsity/'):]: v for k, v in metrics.items()
                             if k.startswith('sparsity/')},
  }


def write_json(path, record):
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(record, f, indent=2)
  tf.io.gfile.rename(temporary, path, overwrite=True)


class EvalRecorder(train_lib.Hook):
  """Writes every evaluation during training to `<output_dir>/eval_<step>.json`."""

  def after_eval(self, loop, step, metrics):
    if loop.is_chief:
      write_json(os.path.join(loop.config.output_dir, f'eval_{step}.json'),
                 eval_record(metrics, step))


class ExportHook(train_lib.Hook):
  """The original's ExportModelHook: a SavedModel every `export_model_freq` steps."""

  def __init__(self, every):
    self.every = every
    self.last_export = 0

  def after_chunk(self, loop, step):
    if loop.is_chief and step - self.last_export >= self.every:
      self.last_export = step
      path = os.path.join(loop.config.output_dir, EXPORT_DIR, str(step))
      export.save_saved_model(loop.model, path)
      logging.info('Exported %s.', path)


# --- Main -----------------------------------------------------------------------------

def setup():
  """Builds the data and the loop from the flags; returns (loop, run directory).

  Raises:
    datasets.DataError: the data cannot be read.
    ValueError: the flags make no valid configuration.
    train_lib.StrategyError: the accelerators cannot be used.
  """
  check_flags()
  config = method_config()
  directory = output_dir()
  script_flags.make_run_dir('output_dir', FLAGS.output_dir, directory)
  script_flags.check_run_flags(FLAGS, SCRIPT_NAME, directory, 'output_dir', FREE_FLAGS,
                               GROWING_FLAGS)
  keras.utils.set_random_seed(FLAGS.seed)
  data = imagenet_input.ImageNetInput(
      FLAGS.data_directory, FLAGS.dataset, FLAGS.train_batch_size, FLAGS.num_eval_images,
      FLAGS.image_size, FLAGS.num_parallel_calls, FLAGS.seed, FLAGS.eval_on_train)
  data.check(training=FLAGS.mode in script_flags.TRAINING_MODES,
             evaluation=FLAGS.mode != 'train')
  strategy = train_lib.make_strategy(FLAGS.use_tpu, FLAGS.tpu or FLAGS.master,
                                     FLAGS.num_gpus, FLAGS.tpu_job_name)
  if FLAGS.use_tpu and strategy.num_replicas_in_sync != FLAGS.num_cores:
    logging.warning('--num_cores=%d, but the TPU has %d cores; using %d.', FLAGS.num_cores,
                    strategy.num_replicas_in_sync, strategy.num_replicas_in_sync)
  loop_config = train_lib.LoopConfig(
      output_dir=directory, train_steps=train_steps(),
      train_batch_size=FLAGS.train_batch_size, eval_batch_size=FLAGS.eval_batch_size,
      eval_examples=FLAGS.num_eval_images, steps_per_checkpoint=FLAGS.steps_per_checkpoint,
      keep_checkpoint_max=FLAGS.keep_checkpoint_max,
      steps_per_execution=FLAGS.iterations_per_loop, steps_per_eval=FLAGS.steps_per_eval,
      summary_steps=FLAGS.summary_steps, progress_steps=FLAGS.iterations_per_loop,
      steps_per_epoch=FLAGS.num_train_images / FLAGS.train_batch_size,
      eval_once_ckpt_prefix=FLAGS.eval_once_ckpt_prefix,
      eval_batch_statistics=FLAGS.use_batch_statistics,
      mask_images=FLAGS.log_mask_imgs_each_iteration)
  hooks = [EvalRecorder()]
  if FLAGS.mode == 'train':
    hooks.append(ExportHook(FLAGS.export_model_freq))
  loop = train_lib.TrainLoop(
      build_model=build_model, make_optimizer=lambda: make_optimizer(config),
      per_example_loss=per_example_loss, train_input_fn=data.train_input_fn,
      eval_input_fn=data.eval_input_fn, config=loop_config, strategy=strategy,
      hooks=hooks)
  return loop


def initialize_from_checkpoints(loop):
  """`--load_mask_dir` and `--initial_value_checkpoint`, for a run that starts now."""
  if loop.latest_checkpoint():
    return
  method = FLAGS.training_method
  if FLAGS.load_mask_dir and method not in training_methods.NO_MASK_INIT_METHODS:
    report = tf1_checkpoints.load(loop.model, FLAGS.load_mask_dir, 'masks',
                                  imagenet_model.tf1_scope,
                                  imagenet_model.checkpoint_hints(FLAGS.model_architecture))
    logging.info('Loaded %d masks from %s.', len(report.loaded), report.path)
  if FLAGS.initial_value_checkpoint:
    report = tf1_checkpoints.load(loop.model, FLAGS.initial_value_checkpoint,
                                  'initial_values', imagenet_model.tf1_scope,
                                  imagenet_model.checkpoint_hints(FLAGS.model_architecture))
    logging.info('Loaded %d weights from %s.', len(report.loaded), report.path)


def eval_once(loop):
  """Evaluates one checkpoint (TF1 or this project's) on the whole evaluation set."""
  if FLAGS.eval_once_ckpt_prefix or loop.latest_checkpoint():
    path = loop.checkpoint_to_evaluate()
  else:
    # A released checkpoint's folder has no `checkpoint` state file: its only checkpoint.
    path = tf1_checkpoints.resolve(loop.config.output_dir)
  step = restore_checkpoint(loop.model, path)
  prefix = os.path.basename(path)
  metrics = loop.evaluate(summary_name=f'eval_{prefix}', progress=True, step=step)
  record = eval_record(metrics, step)
  write_json(os.path.join(loop.config.output_dir, f'eval_once_{prefix}.json'), record)
  print(f'{prefix}: top-1 {record["eval_accuracy"]:.4f}, top-5 '
        f'{record["top_5_eval_accuracy"]:.4f}, cross_loss {record["cross_loss"]:.4f}, '
        f'global step {step}, global sparsity {record["global_sparsity"]:.4f} '
        f'({FLAGS.num_eval_images} images)')
  return record


def run(loop):
  """Runs --mode; returns the last evaluation record, or None."""
  if FLAGS.mode == 'eval_once':
    return eval_once(loop)
  if FLAGS.mode in script_flags.TRAINING_MODES:
    script_flags.write_run_config(FLAGS, loop.config.output_dir, SCRIPT_NAME)
    initialize_from_checkpoints(loop)
  metrics = loop.run(FLAGS.mode)
  step = loop.global_step
  print(f'{FLAGS.mode} finished at global step {step} in {loop.config.output_dir}')
  if metrics:
    record = eval_record(metrics, step)
    print(f'top-1 {record["eval_accuracy"]:.4f}, top-5 {record["top_5_eval_accuracy"]:.4f}'
          f', cross_loss {record["cross_loss"]:.4f}')
    return record
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    run(setup())
  except (datasets.DataError, ValueError) as error:
    # Bad flags, missing data, a checkpoint that does not fit, no accelerator: the
    # message says what to do.
    sys.exit(f'imagenet_train_eval: error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=script_flags.parser(FLAGS, SCRIPT_NAME))
