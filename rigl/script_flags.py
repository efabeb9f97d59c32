"""The command-line flags the training scripts share, gin configs, and flag parsing.

Flags are kept per script instead of in absl's global `FLAGS`: the scripts share flag
names (`--output_dir`, `--mode`, `--seed`...), so defining them all in the global `FLAGS`
would make importing two scripts into one process (a test session, a notebook) fail with
`DuplicateFlagError`. Each script defines its flags in its own `flags.FlagValues()` with
the `define_*` functions here (its own defaults, the original script's) and runs with
`app.run(main, flags_parser=script_flags.parser(FLAGS, name))`.

**gin.** Every script takes `--gin_config=<file>` (repeatable) and
`--gin_bindings='<script>.<flag> = <value>'` (repeatable): a gin file sets flags under
the script's name, e.g. `imagenet_train_eval.end_sparsity = 0.8`. A flag given on the
command line wins over gin, and gin wins over the flag's default; `write_run_config`
records the effective values in `<output_dir>/operative_config.gin` and `flags.json`.

**Runs.** `make_run_dir` creates a run's directory or says in one line why it cannot;
`check_run_flags` is the one rule of every script for a directory that already holds a
run: resume or evaluate it only with the flags it was trained with.
"""

import contextlib
import inspect
import json
import logging
import math
import os
import sys

from absl import app
from absl import flags
import gin
import tensorflow as tf

from rigl import structure
from rigl import training_methods

_HELP_ARGS = ('-h', '-help', '--help', '-helpshort', '--helpshort', '-?')
GIN_FLAGS = ('gin_config', 'gin_bindings')
OPERATIVE_CONFIG_FILE = 'operative_config.gin'
FLAGS_FILE = 'flags.json'
SCRIPT_KEY = 'script'


def finite(flag_values, *names):
  """Rejects NaN and infinite values of float flags when they are parsed."""
  for name in names:
    flags.register_validator(
        name, lambda value: value is None or math.isfinite(value),
        message=f'--{name} must be a finite number.', flag_values=flag_values)


def define_method_flags(flag_values, training_method, mask_init_method, end_sparsity,
                        maskupdate_end_step, drop_fraction_anneal, methods=None):
  """The sparse-training flags of the original scripts, with a script's defaults.

  Args:
    flag_values: the script's `flags.FlagValues`.
    training_method, mask_init_method, end_sparsity, maskupdate_end_step,
      drop_fraction_anneal: the script's defaults of these flags (the only ones the
      original scripts differ in).
    methods: the training methods the script accepts (default: all).
  """
  fv = flag_values
  flags.DEFINE_enum(
      'training_method', training_method, methods or training_methods.ALL_METHODS,
      'baseline: dense. scratch: a fixed random mask. set, static, momentum (SNFS), rigl: '
      'dynamic sparse training. snip: one-shot pruning at the first step. dnw: dense '
      'gradients, top-|w| masks. prune: gradual magnitude pruning.', flag_values=fv)
  flags.DEFINE_float('end_sparsity', end_sparsity, 'Target sparsity: the fraction of '
                     'zero weights.', flag_values=fv)
  flags.register_validator(
      'end_sparsity', lambda s: 0 <= s < 1,
      message='--end_sparsity must be in [0, 1) (0.9 means 90% of weights are zero).',
      flag_values=fv)
  flags.DEFINE_enum('mask_init_method', mask_init_method,
                    ('', 'random', 'erdos_renyi', 'erdos_renyi_kernel', 'str'),
                    'Distribution of sparsity over the layers: random (uniform), '
                    'erdos_renyi, erdos_renyi_kernel (ERK) or str (ResNet-50 only).',
                    flag_values=fv)
  flags.DEFINE_float('erk_power_scale', 1.0, 'Exponent of the ERK densities (1: ERK, 0: '
                     'uniform).', lower_bound=0, flag_values=fv)
  flags.DEFINE_float('drop_fraction', 0.3, 'Fraction of active connections replaced per '
                     'mask update.', lower_bound=0, upper_bound=1, flag_values=fv)
  flags.DEFINE_string('drop_fraction_anneal', drop_fraction_anneal,
                      'constant, cosine or exponential_<k>.', flag_values=fv)
  flags.DEFINE_string('grow_init', 'zeros', 'Initial value of grown connections: zeros, '
                      'random_normal, random_uniform, initial_dist (rigl also '
                      'grad_scale, grad_sign), optionally _<divisor>.', flag_values=fv)
  flags.DEFINE_float('s_momentum', 0.9, 'Gradient-average decay of SNFS (momentum).',
                     lower_bound=0, upper_bound=1, flag_values=fv)
  flags.DEFINE_float('rigl_acc_scale', 0., 'RigL: the momentum of grown connections '
                     'starts at gradient * this.', flag_values=fv)
  flags.DEFINE_integer('maskupdate_begin_step', 0, 'First step of mask updates.',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('maskupdate_end_step', maskupdate_end_step, 'Last step of mask '
                       'updates; also the end of the drop-fraction anneal.',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('maskupdate_frequency', 100, 'Steps between mask updates.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the weights, masks and random mask updates.',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_string('structure', structure.UNSTRUCTURED, 'Structure of every mask: '
                      'unstructured; constant_fan_in (every active output neuron has the '
                      'same number of inputs, SRigL); or N:M such as 2:4 (at most N of '
                      'every M consecutive inputs of each neuron).', flag_values=fv)
  flags.register_validator('structure', _is_structure,
                           message=f'--structure must be one of {structure.ALLOWED}.',
                           flag_values=fv)
  flags.DEFINE_float('ablation_threshold', structure.DEFAULT_ABLATION_THRESHOLD,
                     'constant_fan_in with set, momentum or rigl: a neuron with fewer '
                     'salient weights than this fraction of the constant fan-in is '
                     'ablated at an update (SRigL\'s gamma_sal); 0: no ablation.',
                     lower_bound=0, upper_bound=1, flag_values=fv)
  finite(fv, 'end_sparsity', 'erk_power_scale', 'drop_fraction', 's_momentum',
         'rigl_acc_scale', 'ablation_threshold')


def _is_structure(value):
  try:
    structure.check(value)
  except ValueError:
    return False
  return True


def define_strategy_flags(flag_values):
  """Where to train: `--use_tpu --tpu=NAME`, `--num_gpus=N`, or several workers."""
  fv = flag_values
  flags.DEFINE_bool('use_tpu', False, 'Train on the TPU named by --tpu (TPUStrategy).',
                    flag_values=fv)
  flags.DEFINE_string('tpu', '', 'TPU name or grpc:// address for --use_tpu; empty is '
                      'the TPU of this Cloud TPU VM.', flag_values=fv)
  flags.DEFINE_string('tpu_job_name', None, 'The TPU worker job name, if not the '
                      'default.', flag_values=fv)
  flags.DEFINE_integer('num_gpus', 0, 'GPUs to train on: MirroredStrategy above 1. Several '
                       'machines: set TF_CONFIG on each (MultiWorkerMirroredStrategy).',
                       lower_bound=0, flag_values=fv)


def define_pruning_schedule_flags(flag_values, begin_step, end_step, frequency):
  """The CIFAR-10 and ImageNet scripts' schedule of `prune` (their own defaults)."""
  flags.DEFINE_integer('sparsity_begin_step', begin_step, 'prune: first pruning step.',
                       lower_bound=0, flag_values=flag_values)
  flags.DEFINE_integer('sparsity_end_step', end_step, 'prune: the step where the sparsity '
                       'reaches --end_sparsity.', lower_bound=0, flag_values=flag_values)
  flags.DEFINE_integer('pruning_frequency', frequency, 'prune: steps between pruning '
                       'updates.', lower_bound=1, flag_values=flag_values)


def define_gin_flags(flag_values):
  flags.DEFINE_multi_string('gin_config', [], 'A gin file setting this script\'s flags '
                            '(repeatable), e.g. configs/imagenet_resnet50_rigl_erk_80_5x.gin.',
                            flag_values=flag_values)
  flags.DEFINE_multi_string('gin_bindings', [], 'A gin binding, e.g. '
                            '"<script>.end_sparsity = 0.8" (repeatable).',
                            flag_values=flag_values)
  flags.DEFINE_bool('dry_run', False, 'Print the effective flags (command line, gin and '
                    'defaults) as JSON and exit.', flag_values=flag_values)


def method_config(flag_values, custom_sparsity_map, training_steps_multiplier=1.0,
                  pruning_begin_step=0, pruning_end_step=-1, pruning_frequency=100,
                  threshold_decay=0.0, initialize_masks=True):
  """The `training_methods.MethodConfig` of a script's flags.

  `training_steps_multiplier` scales the mask-update and pruning steps, as the
  original scripts scale them (the update frequency stays).
  """
  fv = flag_values

  def scaled(step):
    return int(step * training_steps_multiplier)

  return training_methods.MethodConfig(
      training_method=fv.training_method, end_sparsity=fv.end_sparsity,
      mask_init_method=fv.mask_init_method, custom_sparsity_map=dict(custom_sparsity_map),
      erk_power_scale=fv.erk_power_scale, seed=fv.seed,
      maskupdate_begin_step=scaled(fv.maskupdate_begin_step),
      maskupdate_end_step=scaled(fv.maskupdate_end_step),
      maskupdate_frequency=fv.maskupdate_frequency, drop_fraction=fv.drop_fraction,
      drop_fraction_anneal=fv.drop_fraction_anneal, grow_init=fv.grow_init,
      s_momentum=fv.s_momentum, rigl_acc_scale=fv.rigl_acc_scale,
      pruning_begin_step=scaled(pruning_begin_step),
      pruning_end_step=scaled(pruning_end_step), pruning_frequency=pruning_frequency,
      threshold_decay=threshold_decay, structure=fv.structure,
      ablation_threshold=fv.ablation_threshold, initialize_masks=initialize_masks)


def scaled_method_config(flag_values, custom_sparsity_map):
  """The method of the CIFAR-10 and ImageNet scripts' flags.

  Their mask-update and pruning steps (`--sparsity_begin_step`, `--sparsity_end_step`)
  are scaled by `--training_steps_multiplier`, and masks given by `--load_mask_dir` are
  kept rather than drawn.
  """
  fv = flag_values
  loads_masks = bool(fv.load_mask_dir) and (
      fv.training_method not in training_methods.NO_MASK_INIT_METHODS)
  return method_config(
      fv, custom_sparsity_map, fv.training_steps_multiplier,
      pruning_begin_step=fv.sparsity_begin_step, pruning_end_step=fv.sparsity_end_step,
      pruning_frequency=fv.pruning_frequency, initialize_masks=not loads_masks)


# --- gin --------------------------------------------------------------------------------

_CONFIGURABLES = {}


def _configurable(flag_values, script_name):
  """A gin configurable named `script_name` whose parameters are the script's flags."""
  if script_name in _CONFIGURABLES:  # gin registers a name once per process
    return _CONFIGURABLES[script_name]
  names = sorted(n for n in _script_flag_names(flag_values) if n not in GIN_FLAGS)

  def script_flags(**bound):
    return bound

  script_flags.__name__ = script_name
  script_flags.__signature__ = inspect.Signature([
      inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names])
  _CONFIGURABLES[script_name] = gin.external_configurable(script_flags, name=script_name)
  return _CONFIGURABLES[script_name]


def _script_flag_names(flag_values):
  return [name for name, flag in flag_values._flags().items()  # pylint: disable=protected-access
          if name == flag.name]  # not the aliases


class _GinResourceMisses(logging.Filter):
  """Drops gin's `Path not found: <file>` error for an include it then finds.

  gin tries every file first as a resource of a Python package, and logs that error on
  the root logger when there is no such package, before it looks in the search paths,
  where the repository's includes are. A file found nowhere still fails, with gin's own
  error naming it and the paths searched.
  """

  def filter(self, record):
    return not (record.module == 'resource_reader' and
                record.getMessage().startswith('Path not found'))


def apply_gin(flag_values, script_name, present):
  """Sets the flags that gin files and bindings give, unless given on the command line.

  Args:
    flag_values: the parsed flags of the script.
    script_name: the gin name of the script's configurable.
    present: names of the flags given on the command line.

  Raises:
    ValueError: a gin file is missing, or gin rejects a binding (unknown parameter,
      syntax), or a value is not allowed for its flag; the message says which.
  """
  files, bindings = flag_values.gin_config, flag_values.gin_bindings
  if not files and not bindings:
    return
  gin.clear_config(clear_constants=True)
  for path in files:
    if not os.path.isfile(path):
      raise ValueError(f'--gin_config={path!r}: no such file.')
    gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
  configurable = _configurable(flag_values, script_name)
  resource_misses = _GinResourceMisses()
  logging.getLogger().addFilter(resource_misses)
  try:
    gin.parse_config_files_and_bindings(files, bindings)
  except (ValueError, KeyError, SyntaxError, IOError) as error:
    raise ValueError(f'gin ({", ".join(files + bindings)}): {error}') from error
  finally:
    logging.getLogger().removeFilter(resource_misses)
  for name, value in configurable().items():
    if name in present:
      continue
    try:
      flag_values[name].parse(value)
    except flags.IllegalFlagValueError as error:
      raise ValueError(f'gin sets {script_name}.{name} = {value!r}: {error}') from error
  flag_values.validate_all_flags()


def effective_flags(flag_values):
  """`{flag: value}` of every flag of the script (gin's and the run's)."""
  return {name: flag_values[name].value for name in sorted(_script_flag_names(flag_values))
          if name != 'dry_run'}


def write_run_config(flag_values, output_dir, script_name):
  """Writes `operative_config.gin` and `flags.json` into `output_dir`.

  `flags.json` holds every flag's effective value and, under `script`, the script's
  name, so that `rigl.export` can rebuild the run's model.
  """
  tf.io.gfile.makedirs(output_dir)
  with tf.io.gfile.GFile(os.path.join(output_dir, FLAGS_FILE), 'w') as f:
    json.dump({SCRIPT_KEY: script_name, **effective_flags(flag_values)}, f, indent=2,
              sort_keys=True)
  with tf.io.gfile.GFile(os.path.join(output_dir, OPERATIVE_CONFIG_FILE), 'w') as f:
    f.write(gin.operative_config_str())


def read_run_flags(output_dir):
  """(script name or None, {flag: value}) recorded by `write_run_config` in `output_dir`."""
  with tf.io.gfile.GFile(os.path.join(output_dir, FLAGS_FILE)) as f:
    recorded = json.load(f)
  return recorded.pop(SCRIPT_KEY, None), recorded


# --- Runs ---------------------------------------------------------------------------------

TRAINING_MODES = ('train', 'train_and_eval')


def make_run_dir(dir_flag, flag_value, run_dir):
  """Creates the run directory `run_dir`: `--dir_flag`'s value, or a folder stub below it.

  Raises:
    ValueError: naming the flag, when the parent of its value does not exist, or the
      directory cannot be created or written (a file is in the way, no permission, a
      read-only file system).
  """
  local = '://' not in flag_value
  if local:
    parent = os.path.dirname(os.path.abspath(flag_value))
    if not os.path.isdir(parent):
      raise ValueError(f'--{dir_flag}={flag_value!r}: its parent directory {parent!r} '
                       'does not exist.')
    existing = os.path.abspath(run_dir)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise ValueError(f'--{dir_flag}={flag_value!r}: {existing!r} is a file, not a '
                       f'directory; choose another --{dir_flag}.')
  try:
    tf.io.gfile.makedirs(run_dir)
  except (OSError, tf.errors.OpError) as error:
    raise ValueError(f'--{dir_flag}={flag_value!r}: cannot create {run_dir!r} '
                     f'({getattr(error, "message", None) or error}); choose another '
                     f'--{dir_flag}.') from None
  if local and not os.access(run_dir, os.W_OK | os.X_OK):
    raise ValueError(f'--{dir_flag}={flag_value!r}: {run_dir!r} is not writable; choose '
                     f'another --{dir_flag}.')


def _as_recorded(value):
  return json.loads(json.dumps(value))  # tuples become lists, as in flags.json


def check_run_flags(flag_values, script_name, run_dir, dir_flag, free, growing=()):
  """Refuses to resume or evaluate the run in `run_dir` with flags it was not trained with.

  When `run_dir` holds checkpoints and the `flags.json` of the run that wrote them, every
  flag but `free` (where to write, how often to report, which machine) must have its
  recorded value: training would continue another run from these weights and masks and
  rewrite the record to say what never happened, and evaluation would build another
  model. `growing` flags (the length of training) may grow in the training modes, which
  continues a finished run, but not shrink below the record.

  Args:
    flag_values: the parsed flags of the script, with `--mode`.
    script_name: the script's name, as `write_run_config` records it.
    run_dir: the run's directory.
    dir_flag: the flag that chose it, for the message.
    free: names of the flags that may change.
    growing: names of the flags that may grow.

  Raises:
    ValueError: naming every flag that differs, with both values.
  """
  path = os.path.join(run_dir, FLAGS_FILE)
  if not (tf.io.gfile.exists(path) and tf.train.latest_checkpoint(run_dir)):
    return
  recorded_script, recorded = read_run_flags(run_dir)
  mode = flag_values.mode
  training = mode in TRAINING_MODES
  if recorded_script not in (None, script_name):
    raise ValueError(f'--{dir_flag}: {run_dir!r} holds a run of {recorded_script}, not of '
                     f'{script_name}; choose another --{dir_flag}.')
  current = {name: _as_recorded(value) for name, value in effective_flags(flag_values).items()
             if name in recorded and name not in free}
  changed = [f'--{name}={recorded[name]!r} there, {value!r} now'
             for name, value in current.items()
             if name not in growing and value != recorded[name]]
  if training:
    changed += [f'--{name}={recorded[name]!r} there, {value!r} now (it may grow, not shrink)'
                for name, value in current.items()
                if name in growing and value < recorded[name]]
  if not changed:
    return
  if training:
    raise ValueError(f'--{dir_flag}: {run_dir!r} holds the checkpoints of a run with other '
                     f'flags ({"; ".join(changed)}), which this command would resume; give '
                     f'that run\'s flags, another --{dir_flag}, or delete that directory.')
  raise ValueError(f'--{dir_flag}: {run_dir!r} holds a run trained with other flags '
                   f'({"; ".join(changed)}), so --mode={mode} would evaluate another model; '
                   'give that run\'s flags.')


# --- Parsing ------------------------------------------------------------------------------

def parse(flag_values, argv, script_name=None):
  """Parses `argv` into the script's flags and applies its gin configs.

  Args:
    flag_values: the script's flags.
    argv: the command line.
    script_name: the gin name of the script; None for a script without gin flags.

  Returns the remaining arguments (for absl's own flags).
  """
  remaining = flag_values(argv, known_only=True)
  if script_name:
    present = {n for n in _script_flag_names(flag_values) if flag_values[n].present}
    apply_gin(flag_values, script_name, present)
  return remaining


@contextlib.contextmanager
def stdout_reader_may_leave():
  """Within: when stdout's reader has gone (`--help | head`), exit quietly with status 0.

  Python would report the broken pipe with a traceback, or at exit when it flushes
  stdout; what was left to print has nobody to read it.
  """
  try:
    try:
      yield
    finally:
      sys.stdout.flush()
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def absl_parser(argv):
  """absl's own flags parser (`app.run`'s default), quiet when stdout's reader leaves."""
  with stdout_reader_may_leave():
    return app.parse_flags_with_usage(argv)


def parser(flag_values, script_name=None):
  """An `app.run` flags_parser: the script's flags and gin first, absl's own after.

  Errors print absl's one-line "FATAL Flags parsing error" and exit with status 1,
  without a stack trace; --help prints the script's flags; --dry_run prints the
  effective flags and exits.

  Args:
    flag_values: the script's flags.
    script_name: the gin name of the script; None for a script without gin flags.
  """

  def parse_argv(argv):
    with stdout_reader_may_leave():
      if any(arg in _HELP_ARGS for arg in argv[1:]):
        print(flag_values.get_help())
        sys.exit(0)
      try:
        remaining = parse(flag_values, argv, script_name)
        remaining = flags.FLAGS(remaining)
      except (flags.Error, ValueError) as error:
        sys.stderr.write(f'FATAL Flags parsing error: {error}\n'
                         'Pass --help to see the flags.\n')
        sys.exit(1)
      if script_name and flag_values.dry_run:
        print(json.dumps(effective_flags(flag_values), indent=2, sort_keys=True))
        sys.exit(0)
    return remaining

  return parse_argv
