r"""Trains and evaluates the RigL paper's character-level language model (a byte GRU).

The paper's run (Section 4.2 and Appendix I; RigL at 75%, 200,000 steps), on WikiText-103:

  python -m rigl.char_lm.char_lm_train_eval --data_directory=path/to/wikitext-103-raw \
    --gin_config=configs/char_lm_rigl_75_1x.gin --output_dir=/tmp/char_lm_rigl

Offline, on the CPython reference manual that ships with Python, with a reduced model and
budget (a few minutes on 2 CPU cores):

  python -m rigl.char_lm.char_lm_train_eval --gin_config=configs/char_lm_offline.gin \
    --training_method=rigl --output_dir=/tmp/char_lm_rigl

Text from a trained run: `--mode=sample --prompt="The " --num_characters=300`, with the
run's flags.

There is no original script (the original repository never released this experiment);
its flags are those the other scripts share (`rigl.script_flags`: the methods, their
schedules, the strategy and gin flags; the pruning schedule of the CIFAR-10 and ImageNet
scripts), the paper's settings as defaults, and the model's sizes. The metric is bits
per character on the validation and test splits: the mean next-byte cross entropy (in
nats) over every byte of the split but the first, divided by ln 2
(`rigl.char_lm.char_data`).

Outputs in `--output_dir`: checkpoints `model.ckpt-<step>`, TensorBoard events (`train/`,
`eval/`), `summary.json`, `history.json`, `training_curves.png` (validation bits per
character and per-kernel sparsity over training), `train_seconds.json`, `flags.json` and
`operative_config.gin`. A directory holding a run is resumed (or evaluated, or sampled)
only with the flags it was trained with (`script_flags.check_run_flags`).
"""

import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
import keras
import tensorflow as tf

from rigl import flops
from rigl import script_flags
from rigl import train_lib
from rigl import training_history
from rigl import training_methods
from rigl.char_lm import char_data
from rigl.char_lm import char_lm_model

SCRIPT_NAME = 'char_lm_train_eval'
FLAGS = flags.FlagValues()
MODES = train_lib.MODES + ('sample',)

flags.DEFINE_string('data_directory', '', 'A folder with WikiText-103\'s raw files '
                    '(wiki.train.raw, wiki.valid.raw, wiki.test.raw; '
                    'wikitext-103-raw-v1.zip unzipped); empty: the CPython reference '
                    'manual that ships with Python (pydoc_data), split 90/5/5%.',
                    flag_values=FLAGS)
flags.DEFINE_string('output_dir', '/tmp/char_lm', 'Checkpoints, summaries and results go '
                    'here. Its parent directory must exist.', flag_values=FLAGS)
flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'train_and_eval (validation every '
                  '--steps_per_eval steps), train, eval (each new checkpoint), eval_once, '
                  'or sample (text from the latest checkpoint, or '
                  '--eval_once_ckpt_prefix).', flag_values=FLAGS)
flags.DEFINE_string('eval_once_ckpt_prefix', '', 'Checkpoint inside --output_dir that '
                    '--mode=eval_once evaluates and --mode=sample samples from; empty: '
                    'the latest.', flag_values=FLAGS)
flags.DEFINE_integer('train_steps', 200000, 'Steps to train (the paper: 200,000), times '
                     '--training_steps_multiplier.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('training_steps_multiplier', 1.0, 'Scales --train_steps and the '
                   'mask-update and pruning steps (the paper\'s extended runs).',
                   lower_bound=0, flag_values=FLAGS)
flags.register_validator('training_steps_multiplier', lambda value: value > 0,
                         message='--training_steps_multiplier must be > 0.',
                         flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 32, 'Windows per training batch (global).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('sequence_length', 512, 'Bytes predicted per window, in training '
                     'and evaluation.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('eval_batch_size', 32, 'Windows per evaluation batch (global).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float('learning_rate', 7e-4, 'Adam\'s (constant) learning rate.',
                   lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('l2', 5e-4, 'L2 on the kernels and the embedding: l2 * ||w||^2 / 2.',
                   lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('clip_norm', 10.0, 'Clip the gradients to this global norm; 0: none.',
                   lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('embedding_size', 128, 'Width of the byte embedding.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('gru_units', 512, 'State size of the GRU.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_list('readout_units', ['256', '128'], 'Widths of the readout\'s dense ReLU '
                  'layers; with --tie_embedding the last is --embedding_size.',
                  flag_values=FLAGS)
flags.DEFINE_bool('tie_embedding', True, 'The logits reuse the embedding table (the '
                  'paper\'s shared embedding); false: a dense output layer of their own.',
                  flag_values=FLAGS)
flags.DEFINE_integer('steps_per_eval', 5000, 'train_and_eval evaluates on the validation '
                     'split every this many steps (and at the end).', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('steps_per_checkpoint', 1000, 'Save a checkpoint every this many '
                     'steps and at the end.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('keep_checkpoint_max', 5, 'Checkpoints kept; 0 keeps all.',
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('steps_per_execution', 100, 'Training steps per compiled call.',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('summary_steps', 100, 'Write training summaries (and log a progress '
                     'line) every this many steps; 0 never.', lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_bool('jit_compile', False, 'Compile the training step with XLA.',
                  flag_values=FLAGS)
flags.DEFINE_string('prompt', '', '--mode=sample: the text to continue (empty: from a '
                    'newline).', flag_values=FLAGS)
flags.DEFINE_integer('num_characters', 500, '--mode=sample: bytes to generate.',
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float('temperature', 1.0, '--mode=sample: divides the logits; 0 takes the '
                   'most likely byte.', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer('sample_seed', 0, '--mode=sample: seed of the draws (the same seed '
                     'gives the same text).', lower_bound=0, flag_values=FLAGS)
script_flags.define_pruning_schedule_flags(FLAGS, 50000, 150000, 1000)
script_flags.define_method_flags(
    FLAGS, training_method='rigl', mask_init_method='random', end_sparsity=0.75,
    maskupdate_end_step=200000, drop_fraction_anneal='cosine')
# Appendix I: alpha = 0.1 (the other scripts' default is 0.3).
FLAGS.set_default('drop_fraction', 0.1)
script_flags.define_strategy_flags(FLAGS)
script_flags.define_gin_flags(FLAGS)
script_flags.finite(FLAGS, 'training_steps_multiplier', 'learning_rate', 'l2', 'clip_norm',
                    'temperature')
flags.register_validator(
    'readout_units', lambda units: bool(units) and all(
        u.isdigit() and int(u) > 0 for u in units),
    message='--readout_units must be one or more positive integers, e.g. 256,128.',
    flag_values=FLAGS)
flags.register_validator(
    'output_dir',
    lambda p: bool(p) and os.path.isdir(os.path.dirname(os.path.abspath(p))),
    message='the parent directory of --output_dir must exist (create it, or choose '
    'another --output_dir).', flag_values=FLAGS)

SUMMARY_FILE = 'summary.json'
PLOT_FILE = 'training_curves.png'
BITS = 'bits_per_character'
# The flags a run may be resumed, evaluated or sampled with whatever it was trained with
# (where the data and outputs are, how often to report, which machine, what to sample);
# every other flag decides what the run computes. --train_steps may grow.
FREE_FLAGS = (
    'data_directory', 'output_dir', 'mode', 'eval_once_ckpt_prefix', 'eval_batch_size',
    'steps_per_eval', 'steps_per_checkpoint', 'keep_checkpoint_max', 'steps_per_execution',
    'summary_steps', 'jit_compile', 'prompt', 'num_characters', 'temperature',
    'sample_seed', 'use_tpu', 'tpu', 'tpu_job_name', 'num_gpus', 'gin_config',
    'gin_bindings')
GROWING_FLAGS = ('train_steps',)


def multiplied(step):
  return int(step * FLAGS.training_steps_multiplier)


def model_sizes():
  return dict(embedding_size=FLAGS.embedding_size, gru_units=FLAGS.gru_units,
              readout_units=[int(u) for u in FLAGS.readout_units],
              tie_embedding=FLAGS.tie_embedding)


def method_config():
  return script_flags.method_config(
      FLAGS, {}, FLAGS.training_steps_multiplier,
      pruning_begin_step=FLAGS.sparsity_begin_step,
      pruning_end_step=FLAGS.sparsity_end_step, pruning_frequency=FLAGS.pruning_frequency)


def check_flags():
  sizes = model_sizes()
  if sizes['tie_embedding'] and sizes['readout_units'][-1] != sizes['embedding_size']:
    raise ValueError(
        f'--readout_units={",".join(FLAGS.readout_units)}: with --tie_embedding the last '
        f'width is the embedding\'s (--embedding_size={FLAGS.embedding_size}), since the '
        'logits are its features times the embedding table; or give --notie_embedding.')
  if FLAGS.training_method == 'prune' and not (
      FLAGS.sparsity_begin_step < FLAGS.sparsity_end_step <= FLAGS.train_steps):
    raise ValueError(
        '--training_method=prune needs --sparsity_begin_step < --sparsity_end_step <= '
        f'--train_steps to reach --end_sparsity, got {FLAGS.sparsity_begin_step}, '
        f'{FLAGS.sparsity_end_step} and {FLAGS.train_steps}.')


def build_model():
  model = char_lm_model.build_model(l2=FLAGS.l2, **model_sizes())
  if FLAGS.training_method != 'baseline':
    char_lm_model.sparsify(model)
  return model


def make_optimizer(config):
  """Adam (TF1's epsilon), gradients clipped to --clip_norm, in the method's wrapper."""
  inner = keras.optimizers.Adam(FLAGS.learning_rate, epsilon=1e-8,
                                global_clipnorm=FLAGS.clip_norm or None)
  return training_methods.make_optimizer(inner, config)


def per_example_loss(labels, logits):
  """`[batch, time]` next-byte cross entropies, in nats."""
  return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def bits_per_character(metrics):
  return {BITS: metrics['loss'] / math.log(2)}


def run_costs():
  """The run's training and inference FLOPs per character, relative to dense."""
  stats = flops.count_run(
      model_architecture='char_lm', mask_init_method=FLAGS.mask_init_method or 'random',
      end_sparsity=FLAGS.end_sparsity, erk_power_scale=FLAGS.erk_power_scale,
      training_method=FLAGS.training_method,
      training_steps_multiplier=FLAGS.training_steps_multiplier or 1.0,
      maskupdate_frequency=FLAGS.maskupdate_frequency, train_steps=FLAGS.train_steps,
      sparsity_begin_step=FLAGS.sparsity_begin_step,
      sparsity_end_step=FLAGS.sparsity_end_step, pruning_frequency=FLAGS.pruning_frequency,
      char_lm_sizes=model_sizes())
  return {k: stats[k] for k in ('inference_flops', 'dense_inference_flops',
                                'inference_flops_ratio', 'training_flops_ratio',
                                'size_mb', 'dense_size_mb')}


class CharLMRecorder(training_history.HistoryRecorder):
  """The history of validation evaluations, with bits per character."""

  def after_eval(self, loop, step, metrics):
    super().after_eval(loop, step, metrics)
    self.history[-1][BITS] = metrics[BITS]


def setup():
  """Reads the corpus and builds the loop from the flags.

  Returns:
    (loop, recorder, corpus).

  Raises:
    char_data.DataError: a file of the corpus is missing or malformed.
    ValueError: the flags make no valid configuration.
  """
  check_flags()
  config = method_config()
  script_flags.make_run_dir('output_dir', FLAGS.output_dir, FLAGS.output_dir)
  script_flags.check_run_flags(FLAGS, SCRIPT_NAME, FLAGS.output_dir, 'output_dir',
                               FREE_FLAGS, GROWING_FLAGS)
  check_same_corpus()
  training = FLAGS.mode in script_flags.TRAINING_MODES
  corpus = char_data.load(FLAGS.data_directory,
                          char_data.SPLITS if training else ('valid', 'test'),
                          FLAGS.sequence_length)
  print(corpus.description, flush=True)
  if training:
    script_flags.write_run_config(FLAGS, FLAGS.output_dir, SCRIPT_NAME)
  keras.utils.set_random_seed(FLAGS.seed)
  strategy = train_lib.make_strategy(FLAGS.use_tpu, FLAGS.tpu, FLAGS.num_gpus,
                                     FLAGS.tpu_job_name)
  replicas = strategy.num_replicas_in_sync
  chars_per_step = FLAGS.batch_size * FLAGS.sequence_length
  steps_per_epoch = (max(corpus.characters('train') // chars_per_step, 1) if training
                     else 1)
  loop_config = train_lib.LoopConfig(
      output_dir=FLAGS.output_dir, train_steps=multiplied(FLAGS.train_steps),
      train_batch_size=FLAGS.batch_size,
      eval_batch_size=-(-FLAGS.eval_batch_size // replicas) * replicas,
      eval_examples=char_data.evaluation_windows(corpus.characters('valid'),
                                                  FLAGS.sequence_length),
      steps_per_checkpoint=FLAGS.steps_per_checkpoint,
      keep_checkpoint_max=FLAGS.keep_checkpoint_max,
      steps_per_execution=FLAGS.steps_per_execution, steps_per_eval=FLAGS.steps_per_eval,
      summary_steps=FLAGS.summary_steps,
      progress_steps=max(FLAGS.steps_per_execution, FLAGS.summary_steps),
      steps_per_epoch=steps_per_epoch, eval_once_ckpt_prefix=FLAGS.eval_once_ckpt_prefix,
      jit_compile=FLAGS.jit_compile)
  train_input_fn = (char_data.make_train_input_fn(
      corpus.splits['train'], FLAGS.batch_size, FLAGS.sequence_length, FLAGS.seed)
                    if training else None)
  recorder = CharLMRecorder(FLAGS.output_dir, steps_per_epoch)
  loop = train_lib.TrainLoop(
      build_model=build_model, make_optimizer=lambda: make_optimizer(config),
      per_example_loss=per_example_loss, train_input_fn=train_input_fn,
      eval_input_fn=char_data.make_eval_input_fn(corpus.splits['valid'],
                                                 FLAGS.sequence_length),
      config=loop_config, strategy=strategy, hooks=[recorder] if training else [],
      derived_metrics=bits_per_character)
  return loop, recorder, corpus


def evaluate_split(loop, corpus, split, sequence_length):
  """The metrics of `split` ('valid' or 'test') at the loop's current weights."""
  return loop.evaluate(
      eval_input_fn=char_data.make_eval_input_fn(corpus.splits[split], sequence_length),
      eval_examples=char_data.evaluation_windows(corpus.characters(split),
                                                 sequence_length))


def run(loop, recorder, corpus):
  """Runs --mode; returns the summary (also written to the output directory)."""
  training = FLAGS.mode in script_flags.TRAINING_MODES
  loop.run(FLAGS.mode)
  # The reported numbers come from the final weights in every mode (in the eval modes,
  # from the checkpoint evaluated last).
  results = {split: evaluate_split(loop, corpus, split, FLAGS.sequence_length)
             for split in ('valid', 'test')}
  valid = results['valid']
  summary = {
      'mode': FLAGS.mode,
      'corpus': corpus.name,
      'training_method': FLAGS.training_method,
      'end_sparsity': FLAGS.end_sparsity,
      'mask_init_method': FLAGS.mask_init_method,
      'training_steps_multiplier': FLAGS.training_steps_multiplier,
      **{f'{split}_{BITS}': results[split][BITS] for split in results},
      **{f'{split}_loss_nats': results[split]['loss'] for split in results},
      **{f'{split}_next_character_accuracy': results[split]['accuracy']
         for split in results},
      **{f'{split}_characters': corpus.characters(split) - 1 for split in results},
      'global_sparsity': valid.get('global_sparsity', 0.0),
      'per_kernel_sparsity': {k[len('sparsity/'):]: v for k, v in valid.items()
                              if k.startswith('sparsity/')},
      'flops_per_character': run_costs(),
      'model': model_sizes(),
      'steps': loop.global_step,
      **({'train_seconds': round(recorder.train_seconds(loop), 3)} if training else {}),
      'resumed_from_step': loop.initial_step,
      'checkpoint': loop.latest_checkpoint(),
  }
  name = SUMMARY_FILE if training else f'{FLAGS.mode}_summary.json'
  if loop.is_chief:
    training_history.write_json(os.path.join(FLAGS.output_dir, name), summary)
    if training and recorder.history:
      training_history.write_plot(
          recorder.history, os.path.join(FLAGS.output_dir, PLOT_FILE),
          f'char LM, {FLAGS.training_method}, end_sparsity {FLAGS.end_sparsity}',
          metric=(BITS, 'validation bits\nper character'))
  _report(summary, name)
  return summary


def _report(summary, summary_name):
  timing = (f" ({summary['train_seconds']:.1f} s of training)"
            if 'train_seconds' in summary else '')
  print(f"{summary['training_method']} char LM on {summary['corpus']}: "
        f"{summary[f'valid_{BITS}']:.3f} bits per character on valid, "
        f"{summary[f'test_{BITS}']:.3f} on test, at step {summary['steps']}{timing}")
  kernels = ', '.join(f'{k} {v:.4f}' for k, v in summary['per_kernel_sparsity'].items())
  print(f"sparsity: global {summary['global_sparsity']:.4f}" +
        (f' ({kernels})' if kernels else ' (dense)'))
  costs = summary['flops_per_character']
  print(f"FLOPs per character: inference {costs['inference_flops']:.3g} "
        f"({costs['inference_flops_ratio']:.2f}x dense), training "
        f"{costs['training_flops_ratio']:.2f}x dense training")
  print(f'outputs in {FLAGS.output_dir}: {summary_name}, {PLOT_FILE}, checkpoints '
        f"({summary['checkpoint']}), TensorBoard events (train/, eval/)")
  logging.info('Summary: %s', summary)


# --- Sampling -----------------------------------------------------------------------


def checkpoint_to_sample():
  prefix = FLAGS.eval_once_ckpt_prefix
  if prefix:
    path = os.path.join(FLAGS.output_dir, prefix)
    if not tf.io.gfile.exists(path + '.index'):
      raise ValueError(f'--eval_once_ckpt_prefix={prefix!r}: there is no checkpoint '
                       f'{path!r}.')
    return path
  path = tf.train.latest_checkpoint(FLAGS.output_dir)
  if path is None:
    raise ValueError(f'--mode=sample: there is no checkpoint in {FLAGS.output_dir!r}; '
                     'train a model there first.')
  return path


def check_same_corpus():
  """Refuses to continue or evaluate a run on the other corpus.

  `--data_directory` may move (it is a free flag), but a run trained on WikiText-103
  resumed or evaluated without it would go on with the built-in text, and the reverse.

  Raises:
    ValueError: naming the corpus of the run and that of this command.
  """
  if not (tf.io.gfile.exists(os.path.join(FLAGS.output_dir, script_flags.FLAGS_FILE)) and
          tf.train.latest_checkpoint(FLAGS.output_dir)):
    return
  recorded = script_flags.read_run_flags(FLAGS.output_dir)[1].get('data_directory')
  if recorded is None or bool(recorded) == bool(FLAGS.data_directory):
    return
  name = lambda directory: (f'WikiText-103 in {directory!r}' if directory
                            else 'the built-in text (no --data_directory)')
  raise ValueError(f'--output_dir: {FLAGS.output_dir!r} holds a run on '
                   f'{name(recorded)}; this command reads {name(FLAGS.data_directory)}. '
                   'Give the run\'s --data_directory, or another --output_dir.')


def sample():
  """Prints the prompt and the text the checkpoint's model continues it with."""
  check_flags()
  script_flags.check_run_flags(FLAGS, SCRIPT_NAME, FLAGS.output_dir, 'output_dir',
                               FREE_FLAGS, GROWING_FLAGS)
  path = checkpoint_to_sample()
  model = build_model()
  try:
    tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched(
        ).expect_partial()
  except AssertionError as error:
    raise ValueError(f'{path} was not written by this model ({str(error)[:300]}); give '
                     'the run\'s flags.') from None
  sampler = char_lm_model.make_sampler(model)
  prompt = FLAGS.prompt.encode('utf-8')
  text = sampler(prompt, FLAGS.num_characters, FLAGS.temperature, FLAGS.sample_seed)
  print((prompt + text).decode('utf-8', errors='replace'))
  return prompt + text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    if FLAGS.mode == 'sample':
      sample()
    else:
      run(*setup())
  except ValueError as error:  # char_data.DataError too
    sys.exit(f'char_lm_train_eval: error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=script_flags.parser(FLAGS, SCRIPT_NAME))
