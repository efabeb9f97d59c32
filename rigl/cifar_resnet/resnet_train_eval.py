r"""Trains and evaluates sparse WideResNets on CIFAR-10: the original's CIFAR script.

The paper's WRN-22-2 with RigL, ERK at 90%, on one GPU:

  python -m rigl.cifar_resnet.resnet_train_eval \
    --gin_config=configs/cifar_wrn22_2_rigl_erk_90.gin --train_dir=/tmp/cifar

Every flag of the original keeps its name and default (the defaults build WRN-16-4; the
paper's WRN-22-2 is `--resnet_depth=22 --resnet_width=2`). The original's
`train_and_eval` did nothing and its `scratch` needed `--load_mask_dir`; here both work.
New: `--mode=eval_once` with `--eval_once_ckpt_prefix`, `--use_folder_stub`,
`--steps_per_execution`, the `dnw` method, the strategy flags and the gin flags. `master`,
`ps_task`, `pruning_hparams` and `dataset_size` never did anything and still do not.

Outputs below `--train_dir` (and the original's folder stub): checkpoints, TensorBoard
events (`train/`, `eval/`), `summary.json` (with per-class precision and recall),
`history.json`, `train_seconds.json`, `training_curves.png`, `flags.json` and
`operative_config.gin`. A run directory with checkpoints is resumed (or evaluated) only
with the flags in its `flags.json` (`script_flags.check_run_flags`).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np

from rigl import datasets
from rigl import layers as masked_layers
from rigl import script_flags
from rigl import sparse_utils
from rigl import tf1_checkpoints
from rigl import tf1_momentum
from rigl import train_lib
from rigl import training_history
from rigl import training_methods
from rigl.cifar_resnet import data_helper
from rigl.cifar_resnet import resnet_model

SCRIPT_NAME = 'resnet_train_eval'
FLAGS = flags.FlagValues()
_UNUSED = 'Accepted for the original\'s command lines; it has no effect (as in the original).'

flags.DEFINE_string('master', 'local', _UNUSED, flag_values=FLAGS)
flags.DEFINE_integer('ps_task', 0, _UNUSED, flag_values=FLAGS)
flags.DEFINE_integer('keep_checkpoint_max', 5, 'Checkpoints kept; 0 keeps all.',
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string('pruning_hparams', '', _UNUSED, flag_values=FLAGS)
flags.DEFINE_string('train_dir', '/tmp/cifar10/', 'Checkpoints, summaries and results go '
                    'here (below the folder stub).', flag_values=FLAGS)
flags.DEFINE_string('load_mask_dir', '', 'A checkpoint (or its directory), TF1 or this '
                    'project\'s, to take the initial masks from.', flag_values=FLAGS)
flags.DEFINE_string('initial_value_checkpoint', '', 'A checkpoint (or its directory) to '
                    'take the initial weights, biases and batch-norm gamma and beta from.',
                    flag_values=FLAGS)
flags.DEFINE_float('momentum', 0.9, 'Momentum of the Nesterov momentum optimizer.',
                   lower_bound=0, upper_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('max_steps', 97656, 'Steps to train (250 epochs of 128), times '
                     '--training_steps_multiplier.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('l2', 5e-4, 'L2 on every kernel: l2 * ||w||^2 / 2.', lower_bound=0,
                   flag_values=FLAGS)
flags.DEFINE_integer('resnet_depth', 16, 'Depth of the WideResNet, 6n + 4.',
                     flag_values=FLAGS)
flags.DEFINE_integer('resnet_width', 4, 'Width multiplier of the WideResNet.',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string('data_directory', '', 'TensorFlow Datasets\' data directory for '
                    'cifar10; empty: its default.', flag_values=FLAGS)
flags.DEFINE_integer('num_classes', 10, 'Classes.', lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer('dataset_size', 50000, _UNUSED, flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 128, 'Batch size (training and evaluation).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('checkpoint_steps', 5000, 'Save a checkpoint (and evaluate, in '
                     'train_and_eval) every this many steps.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('summaries_steps', 300, 'Write training summaries every this many '
                     'steps.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_bool('per_class_metrics', True, 'Evaluations also report each class\'s '
                  'precision and recall.', flag_values=FLAGS)
flags.DEFINE_enum('mode', 'train', train_lib.MODES, 'train, eval (each new checkpoint), '
                  'train_and_eval (evaluates every --checkpoint_steps) or eval_once.',
                  flag_values=FLAGS)
script_flags.define_pruning_schedule_flags(FLAGS, 20000, 75000, 1000)
script_flags.define_method_flags(
    FLAGS, training_method='baseline', mask_init_method='random', end_sparsity=0.9,
    maskupdate_end_step=75000, drop_fraction_anneal='constant')
flags.DEFINE_bool('prune_first_layer', False, 'Mask the first layer (conv_1).',
                  flag_values=FLAGS)
flags.DEFINE_bool('prune_last_layer', True, 'Mask the last layer (logits).',
                  flag_values=FLAGS)
flags.DEFINE_float('training_steps_multiplier', 1.0, 'Scales max_steps, the learning-rate '
                   'boundaries and the mask-update and pruning steps.', lower_bound=0,
                   flag_values=FLAGS)
# New flags.
flags.DEFINE_bool('use_folder_stub', True, 'Append the original\'s folder stub '
                  '(method/end_sparsity/begin/end/frequency) to --train_dir.',
                  flag_values=FLAGS)
flags.DEFINE_string('eval_once_ckpt_prefix', '', 'Checkpoint inside the run directory '
                    'that --mode=eval_once evaluates; empty: the latest.', flag_values=FLAGS)
flags.DEFINE_integer('steps_per_execution', 100, 'Training steps per compiled call.',
                     lower_bound=1, flag_values=FLAGS)
script_flags.define_strategy_flags(FLAGS)
script_flags.define_gin_flags(FLAGS)
script_flags.finite(FLAGS, 'momentum', 'l2', 'training_steps_multiplier')

LR_BOUNDARIES = (30000, 60000, 90000)
SUMMARY_FILE = 'summary.json'
PLOT_FILE = 'training_curves.png'
# The flags a run may be resumed or evaluated with whatever it was trained with (where
# the data and outputs are, how often to report, which machine, and the flags that never
# did anything); every other flag decides what the run computes
# (`script_flags.check_run_flags`). --max_steps may grow.
FREE_FLAGS = (
    'train_dir', 'use_folder_stub', 'mode', 'eval_once_ckpt_prefix', 'data_directory',
    'checkpoint_steps', 'keep_checkpoint_max', 'summaries_steps', 'per_class_metrics',
    'steps_per_execution', 'use_tpu', 'tpu', 'tpu_job_name', 'num_gpus', 'master',
    'ps_task', 'pruning_hparams', 'dataset_size', 'gin_config', 'gin_bindings')
GROWING_FLAGS = ('max_steps',)


def multiplied(step):
  return int(step * FLAGS.training_steps_multiplier)


def method_config():
  return script_flags.scaled_method_config(FLAGS, {})


def run_dir():
  """--train_dir below the original's folder stub."""
  if not FLAGS.use_folder_stub:
    return FLAGS.train_dir
  method = FLAGS.training_method
  if method == 'prune':
    stub = [method, FLAGS.end_sparsity, multiplied(FLAGS.sparsity_begin_step),
            multiplied(FLAGS.sparsity_end_step), FLAGS.pruning_frequency]
  elif method in training_methods.DST_METHODS:
    stub = [method, FLAGS.end_sparsity, multiplied(FLAGS.maskupdate_begin_step),
            multiplied(FLAGS.maskupdate_end_step), FLAGS.maskupdate_frequency]
  else:
    stub = [method, 0.0, 0.0, 0.0, 0.0]
  return os.path.join(FLAGS.train_dir, *[str(part) for part in stub])


def build_model():
  return resnet_model.wide_resnet(
      FLAGS.resnet_depth, FLAGS.resnet_width, FLAGS.num_classes,
      pruning_method='baseline' if FLAGS.training_method == 'baseline' else 'threshold',
      prune_first_layer=FLAGS.prune_first_layer, prune_last_layer=FLAGS.prune_last_layer,
      l2=FLAGS.l2)


def restore_checkpoint(model, path):
  """Restores `model` from a TF1 checkpoint of the original or one of this script's."""
  return tf1_checkpoints.restore_model(model, path, resnet_model.tf1_scope)


def example_inputs(count, seed=0):
  """`count` random standardised 32x32 images."""
  return np.random.RandomState(seed).normal(size=(count, 32, 32, 3)).astype(np.float32)


def make_optimizer(config):
  """Nesterov momentum at 0.1 / 5^i, dropping at 30k, 60k and 90k steps (multiplied)."""
  boundaries = [multiplied(b) for b in LR_BOUNDARIES]
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
      boundaries, [0.1 / 5.**i for i in range(len(boundaries) + 1)])
  inner = tf1_momentum.TF1MomentumOptimizer(schedule, FLAGS.momentum, use_nesterov=True)
  return training_methods.make_optimizer(inner, config)


def per_example_loss(labels, logits):
  return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def check_flags():
  if FLAGS.resnet_depth < 10 or (FLAGS.resnet_depth - 4) % 6:
    raise ValueError(f'--resnet_depth={FLAGS.resnet_depth}: a WideResNet has depth 6n + 4 '
                     '(10, 16, 22, 28, ...).')
  if FLAGS.per_class_metrics and FLAGS.num_classes != len(data_helper.CLASS_NAMES):
    raise ValueError(f'--per_class_metrics names the {len(data_helper.CLASS_NAMES)} '
                     f'CIFAR-10 classes, but --num_classes={FLAGS.num_classes}.')
  if FLAGS.training_method == 'prune' and not (
      FLAGS.sparsity_begin_step < FLAGS.sparsity_end_step):
    raise ValueError(f'--training_method=prune needs --sparsity_begin_step < '
                     f'--sparsity_end_step, got {FLAGS.sparsity_begin_step} and '
                     f'{FLAGS.sparsity_end_step}.')


def setup():
  """Builds the data and the loop from the flags; returns (loop, history recorder).

  Raises:
    datasets.DataError: CIFAR-10 cannot be read.
    ValueError: the flags make no valid configuration.
  """
  check_flags()
  config = method_config()
  directory = run_dir()
  script_flags.make_run_dir('train_dir', FLAGS.train_dir, directory)
  script_flags.check_run_flags(FLAGS, SCRIPT_NAME, directory, 'train_dir', FREE_FLAGS,
                               GROWING_FLAGS)
  keras.utils.set_random_seed(FLAGS.seed)
  data = data_helper.Cifar10Input(FLAGS.data_directory, FLAGS.batch_size, FLAGS.seed)
  data.check()
  strategy = train_lib.make_strategy(FLAGS.use_tpu, FLAGS.tpu, FLAGS.num_gpus,
                                     FLAGS.tpu_job_name)
  replicas = strategy.num_replicas_in_sync
  steps_per_epoch = 50000 / FLAGS.batch_size
  loop_config = train_lib.LoopConfig(
      output_dir=directory, train_steps=multiplied(FLAGS.max_steps),
      train_batch_size=FLAGS.batch_size,
      eval_batch_size=-(-FLAGS.batch_size // replicas) * replicas,
      eval_examples=data.eval_examples(), steps_per_checkpoint=FLAGS.checkpoint_steps,
      keep_checkpoint_max=FLAGS.keep_checkpoint_max,
      steps_per_execution=FLAGS.steps_per_execution,
      steps_per_eval=FLAGS.checkpoint_steps, summary_steps=FLAGS.summaries_steps,
      progress_steps=FLAGS.checkpoint_steps, steps_per_epoch=steps_per_epoch,
      eval_once_ckpt_prefix=FLAGS.eval_once_ckpt_prefix)
  recorder = training_history.HistoryRecorder(directory, steps_per_epoch)
  loop = train_lib.TrainLoop(
      build_model=build_model, make_optimizer=lambda: make_optimizer(config),
      per_example_loss=per_example_loss, train_input_fn=data.train_input_fn,
      eval_input_fn=data.eval_input_fn, config=loop_config, strategy=strategy,
      hooks=[recorder] if FLAGS.mode in script_flags.TRAINING_MODES else [],
      class_names=data_helper.CLASS_NAMES if FLAGS.per_class_metrics else None)
  return loop, recorder


def initialize_from_checkpoints(loop):
  """`--load_mask_dir` and `--initial_value_checkpoint`, for a run that starts now."""
  if loop.latest_checkpoint():
    return
  if FLAGS.load_mask_dir and (
      FLAGS.training_method not in training_methods.NO_MASK_INIT_METHODS):
    tf1_checkpoints.load(loop.model, FLAGS.load_mask_dir, 'masks', resnet_model.tf1_scope)
  if FLAGS.initial_value_checkpoint:
    tf1_checkpoints.load(loop.model, FLAGS.initial_value_checkpoint, 'initial_values',
                         resnet_model.tf1_scope)


def run(loop, recorder):
  """Runs --mode; returns the summary (also written to the run directory)."""
  training = FLAGS.mode in script_flags.TRAINING_MODES
  if training:
    script_flags.write_run_config(FLAGS, loop.config.output_dir, SCRIPT_NAME)
    initialize_from_checkpoints(loop)
  loop.run(FLAGS.mode)
  # The reported numbers come from the final weights in every mode (in the eval modes,
  # from the checkpoint evaluated last).
  metrics = loop.evaluate()
  masks = masked_layers.get_masks(loop.model)
  summary = {
      'mode': FLAGS.mode,
      'training_method': FLAGS.training_method,
      'end_sparsity': FLAGS.end_sparsity,
      'eval_accuracy': metrics['accuracy'],
      'top_5_eval_accuracy': metrics['top_5_accuracy'],
      'eval_loss': metrics['loss'],
      'global_sparsity': metrics.get('global_sparsity', 0.0),
      'per_layer_sparsity': {k: float(v) for k, v in
                             sparse_utils.sparsity_summary(masks).items()
                             if k != 'global'} if masks else {},
      'per_class': {k: v for k, v in metrics.items() if k.startswith('class_level')},
      'steps': loop.global_step,
      # Every invocation that trained the run's steps (the eval modes train none).
      **({'train_seconds': round(recorder.train_seconds(loop), 3)} if training else {}),
      'resumed_from_step': loop.initial_step,
      'checkpoint': loop.latest_checkpoint(),
  }
  directory = loop.config.output_dir
  name = SUMMARY_FILE if training else f'{FLAGS.mode}_summary.json'
  if loop.is_chief:
    training_history.write_json(os.path.join(directory, name), summary)
    if training and recorder.history:
      training_history.write_plot(
          recorder.history, os.path.join(directory, PLOT_FILE),
          f'WRN-{FLAGS.resnet_depth}-{FLAGS.resnet_width} {FLAGS.training_method}, '
          f'end_sparsity {FLAGS.end_sparsity}')
  print(f"{FLAGS.training_method} WRN-{FLAGS.resnet_depth}-{FLAGS.resnet_width}: eval "
        f"accuracy {summary['eval_accuracy']:.4f} (top-5 "
        f"{summary['top_5_eval_accuracy']:.4f}) at step {summary['steps']}, global "
        f"sparsity {summary['global_sparsity']:.4f}; outputs in {directory}")
  logging.info('Summary: %s', json.dumps(summary))
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    run(*setup())
  except (datasets.DataError, ValueError) as error:
    sys.exit(f'resnet_train_eval: error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=script_flags.parser(FLAGS, SCRIPT_NAME))
