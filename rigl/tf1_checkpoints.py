"""Loading the original's TF1 checkpoints (and this project's) into Keras models by name.

The released checkpoints are TF1 name-based checkpoints: `resnet_model/initial_conv/mask`,
`resnet_model/batch_normalization_3/moving_mean`, `global_step`, optimizer slots
(`.../Momentum`), contrib's `threshold` scalars, ... A model module says which TF1 variable scope each of its
layers had (`scope_of(model, layer)`); `name_candidates` knows how the original named the
variables inside a scope (several forms, depending on how the layer was built), and this
module reads the checkpoint, matches names exactly, checks shapes and mask values, and
refuses a checkpoint that does not fit — with a message that lists what is missing or
unexpected and, from the model module's `hints(missing, unexpected)`, the flags that
would fix it. Nothing is loaded when anything is wrong.

What a load takes (`what`):

- 'all': every variable of the model; the checkpoint may hold no other model variable
  (optimizer slots, thresholds and step counters are training state, not model);
- 'masks': only the masks (the original's `--load_mask_dir`);
- 'initial_values': weights, biases and batch-norm gamma and beta, not the moving
  statistics (the original's `--initial_value_checkpoint`).

This project's own (object-based) checkpoints are accepted where a TF1 one is: the model
is restored into a copy of itself, and the chosen variables are copied over.
"""

import dataclasses
import os
import re

import keras
import numpy as np
import tensorflow as tf

from rigl import layers as masked_layers_lib
from rigl import masking

WHATS = ('all', 'masks', 'initial_values')
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
# Checkpoint entries that are training state, not the model.
_TRAINING_STATE_RE = re.compile(
    r'(^|/)(global_step|last_mask_update_step|is_snipped|beta1_power|beta2_power)$|'
    r'/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1|ExponentialMovingAverage)$|'
    r'/threshold$|^model_pruning/')
_BATCH_NORM_PARTS = {'gamma': 'gamma', 'beta': 'beta', 'moving_mean': 'moving_mean',
                     'moving_variance': 'moving_variance'}


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model built from the flags."""


@dataclasses.dataclass
class LoadReport:
  """What a load did: the checkpoint path, the loaded names, the checkpoint's step."""
  path: str
  loaded: list
  global_step: int


def resolve(path):
  """A checkpoint prefix from a prefix or a directory (its latest checkpoint).

  A directory with exactly one `.index` file and no `checkpoint` state file (as the
  released tarballs unpack) resolves to that file.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    indexes = tf.io.gfile.glob(os.path.join(path, '*.index'))
    if len(indexes) == 1:
      return indexes[0][:-len('.index')]
    raise CheckpointMismatchError(
        f'{path!r} is a directory without a checkpoint state file and with '
        f'{len(indexes)} checkpoint files; give the checkpoint prefix, e.g. '
        f'{os.path.join(path, "model.ckpt-3200000")}.')
  if not tf.io.gfile.exists(path + '.index'):
    raise CheckpointMismatchError(f'There is no checkpoint {path!r} ({path}.index does not '
                                  'exist).')
  return path


def is_tf1_checkpoint(path):
  """Whether `path` is a name-based (TF1) checkpoint rather than an object-based one."""
  return _OBJECT_GRAPH_KEY not in tf.train.load_checkpoint(resolve(path)).get_variable_to_shape_map()


def variable_role(layer, variable):
  """'mask', 'kernel', 'bias', or a batch-norm part; the name of the variable's job."""
  if isinstance(layer, masked_layers_lib.MASKED_LAYERS) and variable is layer.mask:
    return 'mask'
  if isinstance(layer, keras.layers.BatchNormalization):
    return _BATCH_NORM_PARTS[variable.name]
  if variable.name in ('kernel', 'depthwise_kernel'):
    return 'kernel'
  return variable.name


def _wanted(role, what):
  if what == 'masks':
    return role == 'mask'
  if what == 'initial_values':
    return role in ('kernel', 'bias', 'gamma', 'beta')
  return True


def name_candidates(scope, layer, role):
  """The checkpoint names that may hold a layer's variable of `role`, most likely first.

  The original built its layers through contrib's `model_pruning` and its own
  `pruning_layers`: a masked layer (`masked_conv2d`, `masked_fully_connected`) holds
  `<scope>/weights`, `mask`, `threshold` and `biases`; a plain layer is
  `<scope>/<name>/weights` when built by `sparse_conv2d` / `sparse_fully_connected` in
  'baseline' mode (a `tf.layers` layer inside the scope, renamed), `<scope>/kernel` when
  built by `tf.layers` directly, and `<scope>/weights` by contrib's `layers.conv2d`;
  depthwise kernels are `depthwise_weights`; batch norms hold `gamma`, `beta`,
  `moving_mean` and `moving_variance`.

  Args:
    scope: the layer's TF1 variable scope, e.g. 'resnet_model/initial_conv'.
    layer: the Keras layer.
    role: `variable_role` of the variable.
  """
  if isinstance(layer, keras.layers.BatchNormalization) or role == 'mask':
    return [f'{scope}/{role}']
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return [f'{scope}/depthwise_weights']
  if isinstance(layer, masked_layers_lib.MASKED_LAYERS):
    return [f'{scope}/{"weights" if role == "kernel" else "biases"}']
  name = scope.rsplit('/', 1)[-1]
  if role == 'kernel':
    return [f'{scope}/{name}/weights', f'{scope}/kernel', f'{scope}/weights']
  return [f'{scope}/{name}/biases', f'{scope}/bias', f'{scope}/biases']


def load(model, path, what, scope_of, hints=None):
  """Loads `what` of the checkpoint `path` into `model`.

  Args:
    model: the built Keras model.
    path: a checkpoint prefix or a directory.
    what: 'all', 'masks' or 'initial_values' (see the module docstring).
    scope_of: `(model, layer) -> TF1 variable scope` of a layer.
    hints: `(missing, unexpected, wrong) -> [sentences]`, advice on the flags.

  Returns:
    A `LoadReport`.

  Raises:
    CheckpointMismatchError: a variable is missing, has another shape, a mask is not
      0/1, or (with 'all') the checkpoint holds model variables the model does not have.
  """
  if what not in WHATS:
    raise ValueError(f'what must be one of {WHATS}, got {what!r}.')
  path = resolve(path)
  if not is_tf1_checkpoint(path):
    return _load_own(model, path, what)
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  assignments, missing, wrong = [], [], []
  used = set()
  for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
    if not layer.weights or _is_graph_model(layer):
      continue
    for variable in layer.weights:
      role = variable_role(layer, variable)
      if not _wanted(role, what):
        continue
      names = name_candidates(scope_of(model, layer), layer, role)
      found = next((n for n in names if n in shapes), None)
      if found is None:
        missing.append(names[0])
        continue
      used.add(found)
      if tuple(shapes[found]) != tuple(variable.shape):
        wrong.append(f'{found}: {tuple(shapes[found])} in the checkpoint, '
                     f'{tuple(variable.shape)} in the model')
        continue
      value = reader.get_tensor(found)
      if role == 'mask' and not np.isin(value, (0.0, 1.0)).all():
        wrong.append(f'{found}: a mask must hold only 0 and 1')
        continue
      assignments.append((variable, value, found))
  unexpected = []
  if what == 'all':
    unexpected = sorted(n for n in shapes
                        if n not in used and not _TRAINING_STATE_RE.search(n) and
                        n != _OBJECT_GRAPH_KEY)
  if missing or wrong or unexpected:
    raise CheckpointMismatchError(_mismatch_message(
        path, missing, unexpected, wrong,
        hints(missing, unexpected, wrong) if hints else []))
  for variable, value, _ in assignments:
    variable.assign(value.astype(variable.dtype))
  # The original's inactive weights hold stale values its forward pass masked away;
  # here inactive weights are zero.
  masking.apply_masks(model)
  step = int(reader.get_tensor('global_step')) if 'global_step' in shapes else 0
  return LoadReport(path, [name for _, _, name in assignments], step)


def restore_model(model, path, scope_of, hints=None):
  """Restores every variable of `model` from a TF1 checkpoint or one of this project's.

  Returns:
    The checkpoint's global step.

  Raises:
    CheckpointMismatchError: the checkpoint does not fit the model.
  """
  path = resolve(path)
  if is_tf1_checkpoint(path):
    return load(model, path, 'all', scope_of, hints).global_step
  _read_own(model, path)
  return _own_step(path)


def _read_own(model, path):
  """Reads `model`'s variables from one of this project's checkpoints, all or none."""
  # The checkpoint also holds the optimizer and the input position, which are not read;
  # saying so before the check keeps TensorFlow from warning about each of them (hundreds
  # for ResNet-50), also when the check fails.
  status = tf.train.Checkpoint(model=model).read(path).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as error:
    raise CheckpointMismatchError(
        f'The checkpoint {path!r} was written for another model than the one the flags '
        f'build ({str(error)[:300]}); check the architecture flags.') from error


# The iteration counter of the training loop's optimizer, or of the optimizer it wraps
# (a sparse optimizer's step is its inner optimizer's; Keras' own counter is
# `_iterations`).
_ITERATIONS_KEY_RE = re.compile(
    r'^optimizer/((inner_optimizer/)*)_iterations/\.ATTRIBUTES/VARIABLE_VALUE$')


def _own_step(path):
  """The global step of one of this project's checkpoints: the innermost optimizer's."""
  reader = tf.train.load_checkpoint(path)
  counters = {}
  for key in reader.get_variable_to_shape_map():
    match = _ITERATIONS_KEY_RE.match(key)
    if match:
      counters[match.group(1).count('inner_optimizer/')] = key
  return int(reader.get_tensor(counters[max(counters)])) if counters else 0


def _is_graph_model(layer):
  return isinstance(layer, keras.Model)


def _mismatch_message(path, missing, unexpected, wrong, hints):
  def listing(names, limit=8):
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')

  parts = [f'The checkpoint {path!r} does not fit the model built from the flags.']
  if missing:
    parts.append(f'Missing in the checkpoint ({len(missing)}): {listing(missing)}.')
  if unexpected:
    parts.append(f'In the checkpoint but not in the model ({len(unexpected)}): '
                 f'{listing(unexpected)}.')
  if wrong:
    parts.append(f'Not loadable ({len(wrong)}): {listing(wrong, 4)}.')
  parts.extend(hints)
  return ' '.join(parts)


def _load_own(model, path, what):
  """Loads from one of this project's checkpoints through a copy of the model."""
  copy = keras.models.clone_model(model)
  _read_own(copy, path)
  loaded = []
  for layer, source in zip(model._flatten_layers(include_self=False),  # pylint: disable=protected-access
                           copy._flatten_layers(include_self=False)):  # pylint: disable=protected-access
    if _is_graph_model(layer):
      continue
    for variable, value in zip(layer.weights, source.weights):
      if _wanted(variable_role(layer, variable), what):
        variable.assign(value)
        loaded.append(variable.path)
  return LoadReport(path, loaded, _own_step(path))
