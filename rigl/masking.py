"""Which weights of a Keras model are sparse, and the masks that keep them sparse.

A mask belongs to a kernel *variable*, not to a layer class: `sparsify_model` marks the
kernels of any Keras 3 model — Sequential, functional, subclassed, nested, keras_hub
backbones, custom layers — without changing the model, and the sparse optimizer that
trains it creates one 0/1 mask per marked kernel and keeps every inactive weight at
exactly zero (`rigl.sparse_optimizers`). The forward pass is the model's own; because
inactive weights are zero, the ordinary gradient at the sparse point is the dense
gradient with respect to the masked kernel, which is RigL's grow score.

**The rule.** A weight is masked when it is trainable, floating point, of rank >= 2 and
named `kernel` or `*_kernel` — the kernels of `Dense`, `EinsumDense` (so
`MultiHeadAttention` and keras_hub's transformer layers), every convolution (1D/2D/3D,
transposed, depthwise, and both kernels of separable ones), the kernel and recurrent
kernel of `GRU`/`LSTM`/`SimpleRNN` cells (also inside `RNN`, `Bidirectional`), and of
any subclass or custom layer that names its weights that way. LoRA adapters
(`lora_kernel_a/b`), biases, normalisation weights and scalars are never masked;
embeddings (`embeddings`, `reverse_embeddings`) only with `embeddings=True`. `include` and
`exclude` choose by layer name, weight path, glob pattern or predicate.

**Matrix view.** Each masked kernel is also seen as a `(fan_in, fan_out)` matrix whose
columns are output neurons: a convolution's `(kh*kw*c_in, c_out)`, an `EinsumDense`
kernel's contracted axes against the others (a query kernel `(d_model, heads, head_dim)`
is `(d_model, heads*head_dim)`), a transposed convolution's kernel with its channel axes
swapped. ERK's density rule reads the raw shape of convolution kernels (the original's
`sum(shape)/prod(shape)`) and the matrix of `EinsumDense` kernels, whose extra axes only
split a matrix (`erk_shape`); structured sparsity reads the matrix.
"""

import dataclasses
import fnmatch
import math

import keras
import numpy as np

# Attributes of a kernel variable: its `KernelSpec` (set by `sparsify_model` or a masked
# layer) and its mask (set when the mask exists). A mask's attribute names its kernel.
_SPEC_ATTRIBUTE = '_rigl_kernel_spec'
_MASK_ATTRIBUTE = '_rigl_mask'
_KERNEL_ATTRIBUTE = '_rigl_masked_kernel'
# Why `sparsify_model` left a weight dense, for `sparsity_report`.
_DENSE_REASON_ATTRIBUTE = '_rigl_dense_reason'

MASK_SOURCES = ('draw', 'from_weights')
_EMBEDDING_NAMES = ('embeddings', 'reverse_embeddings')
_GLOB_CHARACTERS = '*?['


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """A kernel as a `(fan_in, fan_out)` matrix: transpose by `permutation`, reshape."""
  permutation: tuple
  fan_in: int
  fan_out: int

  def to_matrix(self, kernel):
    return keras.ops.reshape(keras.ops.transpose(kernel, self.permutation),
                             (self.fan_in, self.fan_out))

  def from_matrix(self, matrix, shape):
    """The kernel of `shape` whose matrix view is `matrix`."""
    permuted = keras.ops.reshape(matrix, [shape[i] for i in self.permutation])
    return keras.ops.transpose(permuted, np.argsort(self.permutation).tolist())


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """What the sparse optimizer needs to know of a masked weight.

  Attributes:
    key: a name unique within the model, used in summaries, reports and custom
      sparsity maps: the names of the layers above the weight and its own name,
      without a trailing `/kernel` (`'fc1'`, `'encoder/attention/query'`,
      `'gru/gru_cell/recurrent_kernel'`).
    path: the variable's path.
    kind: 'kernel', 'embedding', or 'chosen' (picked by an include entry).
    shape: the kernel's shape.
    matrix: its `MatrixView`.
    erk_shape: the shape ERK's `sum(shape)/prod(shape)` is taken of.
    from_weights: the mask starts from the kernel's nonzeros instead of a draw.
  """
  key: str
  path: str
  kind: str
  shape: tuple
  matrix: MatrixView
  erk_shape: tuple
  from_weights: bool = False

  def get_config(self):
    """A JSON-ready dict (lists, not tuples); without the path, which a model rebuilt
    from its configuration may name otherwise."""
    config = dataclasses.asdict(self)
    del config['path']
    config['shape'], config['erk_shape'] = list(self.shape), list(self.erk_shape)
    config['matrix'] = dict(dataclasses.asdict(self.matrix),
                            permutation=list(self.matrix.permutation))
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    matrix = dict(config.pop('matrix'))
    matrix['permutation'] = tuple(matrix['permutation'])
    return cls(matrix=MatrixView(**matrix), shape=tuple(config.pop('shape')),
               erk_shape=tuple(config.pop('erk_shape')), path=config.pop('path', ''),
               **config)


def kernel_spec(variable):
  """The `KernelSpec` of a weight chosen for masking, or None."""
  return getattr(variable, _SPEC_ATTRIBUTE, None)


def get_mask(variable):
  """The mask of a kernel variable, or None (not masked, or its optimizer not built)."""
  return getattr(variable, _MASK_ATTRIBUTE, None)


def kernel_of_mask(mask):
  """The kernel variable a mask belongs to, or None."""
  return getattr(mask, _KERNEL_ATTRIBUTE, None)


def mark(variable, spec):
  setattr(variable, _SPEC_ATTRIBUTE, spec)


def attach_mask(variable, mask):
  """Makes `mask` the mask of `variable` (both variables of one shape)."""
  if tuple(mask.shape) != tuple(variable.shape):
    raise ValueError(f'A mask of shape {tuple(mask.shape)} cannot mask {variable.path} of '
                     f'shape {tuple(variable.shape)}.')
  setattr(variable, _MASK_ATTRIBUTE, mask)
  setattr(mask, _KERNEL_ATTRIBUTE, variable)


def set_mask(variable, value):
  """Sets a kernel's mask and zeroes the kernel where the mask is 0."""
  mask = get_mask(variable)
  if mask is None:
    raise ValueError(f'{variable.path} has no mask; masks exist once the model is '
                     'sparsified and its sparse optimizer built.')
  mask.assign(keras.ops.cast(value, mask.dtype))
  apply_mask(variable)


def assign_mask(mask, value):
  """Assigns a mask and, where it knows its kernel, zeroes the inactive weights."""
  mask.assign(value)
  kernel = kernel_of_mask(mask)
  if kernel is not None:
    apply_mask(kernel)


def apply_mask(variable):
  mask = get_mask(variable)
  variable.assign(variable * keras.ops.cast(mask, variable.dtype))


def masked_kernels(model):
  """`[(kernel, mask)]` of every masked weight of `model` (a model or layer)."""
  return [(v, get_mask(v)) for v in _unique(model.weights) if get_mask(v) is not None]


def apply_masks(model):
  """Zeroes every inactive weight of `model`, e.g. after masks were assigned by hand."""
  for kernel, _ in masked_kernels(model):
    apply_mask(kernel)


def _unique(variables):
  seen, unique = set(), []
  for v in variables:
    if id(v) not in seen:
      seen.add(id(v))
      unique.append(v)
  return unique


# --- Choosing the weights ------------------------------------------------------------

def _owned_weights(model):
  """`[(variable, owning layer, names of the layers above it)]`, each variable once.

  Variables are attributed to the first layer (in Keras' tracking order, depth first)
  that holds them, so a tied or shared weight has one owner.
  """
  found, seen_layers, seen_variables = [], set(), set()

  def walk(layer, names):
    if id(layer) in seen_layers:
      return
    seen_layers.add(id(layer))
    own = list(layer._trainable_variables) + list(layer._non_trainable_variables)  # pylint: disable=protected-access
    for variable in own:
      if id(variable) not in seen_variables and kernel_of_mask(variable) is None:
        seen_variables.add(id(variable))
        found.append((variable, layer, names))
    for child in layer._flatten_layers(include_self=False, recursive=False):  # pylint: disable=protected-access
      walk(child, names + (child.name,))

  walk(model, ())
  return found


def _einsum_view(layer, shape):
  """Contracted kernel axes (fan-in) against the others (fan-out)."""
  equation = layer.equation.replace(' ', '')
  operands, output = equation.split('->')
  kernel_letters = operands.split(',')[1]
  contracted = [i for i, letter in enumerate(kernel_letters) if letter not in output]
  others = [i for i in range(len(kernel_letters)) if i not in contracted]
  permutation = tuple(contracted + others)
  fan_in = math.prod(shape[i] for i in contracted)
  return MatrixView(permutation, int(fan_in), int(math.prod(shape) // max(fan_in, 1)))


_CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                   keras.layers.Conv3DTranspose)


def matrix_view(layer, variable):
  """The `(fan_in, fan_out)` view of a weight (see the module docstring)."""
  shape = tuple(int(d) for d in variable.shape)
  if isinstance(layer, keras.layers.EinsumDense) and variable.name == 'kernel':
    return _einsum_view(layer, shape)
  permutation = tuple(range(len(shape)))
  if isinstance(layer, _CONV_TRANSPOSE) and variable.name == 'kernel':
    # Transposed convolutions store (..., output channels, input channels).
    permutation = permutation[:-2] + (permutation[-1], permutation[-2])
  permuted = [shape[i] for i in permutation]
  return MatrixView(permutation, int(math.prod(permuted[:-1])), int(permuted[-1]))


def spec_by_the_rule(variable):
  """The `KernelSpec` the rule gives a variable seen without its layer, or None.

  For an optimizer built over variables that `sparsify_model` did not mark (a model
  compiled, saved and loaded before its optimizer was built): the rule's default
  choice, each kernel seen as `(prod(shape[:-1]), shape[-1])`.
  """
  kind, _ = _rule(variable, embeddings=False)
  if kind is None:
    return None
  view = matrix_view(None, variable)
  return KernelSpec(key=_key_of(variable.path), path=variable.path, kind=kind,
                    shape=tuple(int(d) for d in variable.shape), matrix=view,
                    erk_shape=tuple(int(d) for d in variable.shape))


def _erk_shape(layer, variable, view):
  if isinstance(layer, keras.layers.EinsumDense):
    return (view.fan_in, view.fan_out)
  return tuple(int(d) for d in variable.shape)


def _is_float(variable):
  return 'float' in str(variable.dtype)


def _rule(variable, embeddings):
  """`(kind, None)` if the rule masks `variable`, else `(None, why it stays dense)`."""
  name = variable.name
  if not variable.trainable:
    return None, 'not trainable'
  if not _is_float(variable):
    return None, f'{variable.dtype} weight'
  if len(variable.shape) < 2 or name == 'bias' or name.endswith('_bias'):
    return None, 'bias, normalisation or scale'
  if name.startswith('lora_'):
    return None, 'LoRA adapter'
  if name in _EMBEDDING_NAMES:
    return ('embedding', None) if embeddings else (None, 'embedding (embeddings=False)')
  if name == 'kernel' or name.endswith('_kernel'):
    return 'kernel', None
  return None, 'not named like a kernel'


class _Matcher:
  """Entries of `include`/`exclude`: layer names, weight paths, globs, predicates."""

  def __init__(self, entries, argument):
    if isinstance(entries, str) or callable(entries):
      entries = [entries]
    self.entries = list(entries)
    self.argument = argument
    for entry in self.entries:
      if not (isinstance(entry, str) or callable(entry)):
        raise ValueError(f'{argument} entries are layer names, weight paths, glob '
                         f'patterns or predicates `(variable) -> bool`; got {entry!r}.')
    self._used = set()

  def match(self, variable, names, key):
    """'weight' (a path, glob or predicate names this weight), 'layer' (a layer above
    it is named), or None."""
    found = None
    for i, entry in enumerate(self.entries):
      if callable(entry):
        hit = 'weight' if entry(variable) else None
      elif any(c in entry for c in _GLOB_CHARACTERS):
        hit = 'weight' if (fnmatch.fnmatchcase(variable.path, entry) or
                           fnmatch.fnmatchcase(key, entry)) else None
      elif entry in (variable.path, key, _full_name(variable, names)):
        hit = 'weight'
      else:
        hit = 'layer' if entry in names else None
      if hit:
        self._used.add(i)
        found = 'weight' if 'weight' in (found, hit) else hit
    return found

  def check_all_used(self, choices):
    unused = [e for i, e in enumerate(self.entries) if i not in self._used]
    if unused:
      raise ValueError(
          f'{self.argument} entries {unused} match no weight of rank >= 2 in this model; '
          'give layer names, weight paths or glob patterns, e.g. '
          f'{sorted(choices)[:8]}.')


def _key_of(path):
  return path[:-len('/kernel')] if path.endswith('/kernel') else path


def _full_name(variable, names):
  """The names of the layers above a weight and its own name: unique in the model,
  where paths may repeat (nested models, two backbones)."""
  return '/'.join(names + (variable.name,))


def _unique_keys(chosen):
  """Keys from the names of the layers above each weight (the model's own name left
  out), made unique with a `#n` suffix where layers share a name."""
  keys = [_key_of(_full_name(variable, names)) for variable, names in chosen]
  counts, unique = {}, []
  for key in keys:
    counts[key] = counts.get(key, 0) + 1
    unique.append(key if keys.count(key) == 1 else f'{key}#{counts[key]}')
  return unique


def keys_matching(entry, named):
  """The keys of `named` (`[(key, path)]`) that a map entry names: a key or path, the
  name of a layer in a key, or a glob pattern on keys and paths."""
  if any(c in entry for c in _GLOB_CHARACTERS):
    return [key for key, path in named
            if fnmatch.fnmatchcase(key, entry) or fnmatch.fnmatchcase(path, entry)]
  exact = [key for key, path in named if entry in (key, path)]
  return exact or [key for key, _ in named if entry in key.split('/')]


def _is_layer_mask(layer, variable):
  """Whether `variable`'s mask is a weight of its own layer (`rigl.layers`' masked
  layers), rather than one its sparse optimizer made."""
  mask = get_mask(variable)
  return mask is not None and getattr(layer, 'mask', None) is mask


def sparsify_model(model, include=None, exclude=(), embeddings=False, masks='draw',
                   verbose=True):
  """Marks the weights of `model` that its sparse optimizer will mask; returns `model`.

  The model is not copied or changed: Sequential, functional, subclassed and nested
  models, custom layers and keras_hub backbones all keep their own layers and forward
  pass. Masks are created (and drawn, see `masks`) when the sparse optimizer is built;
  it keeps every inactive weight at zero.

  Args:
    model: a built Keras model or layer (call it on data or give it an `Input` first).
    include: None (every weight the rule picks; see the module docstring), or entries:
      a layer name picks the rule's weights under that layer; a weight path, a glob
      pattern on paths or a predicate `variable -> bool` picks that weight even outside
      the rule (any trainable weight of rank >= 2).
    exclude: entries of the same kinds that stay dense (e.g. `['logits']`).
    embeddings: also mask embedding tables (`Embedding`, keras_hub's
      `ReversibleEmbedding`; a tied output projection shares that mask).
    masks: 'draw' (the optimizer draws them from its sparsity distribution) or
      'from_weights' (they start from the kernels' nonzeros: for a model whose weights
      come from a sparse run, e.g. a `.keras` file loaded with `compile=False`).
    verbose: print one line saying what is masked and what stays dense.

  Returns:
    `model`.

  Raises:
    ValueError: the model is not built, an entry matches nothing, nothing would be
      masked, or the masks already exist (its sparse optimizer is built).
  """
  if masks not in MASK_SOURCES:
    raise ValueError(f'masks must be one of {MASK_SOURCES}, got {masks!r}.')
  if not isinstance(model, keras.layers.Layer):
    raise ValueError(f'sparsify_model needs a Keras model or layer, got {model!r}.')
  if not model.built or not model.weights:
    raise ValueError(
        f'Model {model.name!r} has no weights yet; build it first (give it a '
        'keras.Input, call it on a batch, or call model.build(input_shape)).')
  owned = _owned_weights(model)
  built = [v.path for v, layer, _ in owned
           if get_mask(v) is not None and not _is_layer_mask(layer, v)]
  if built:
    raise ValueError(
        f'The masks of {model.name!r} exist already ({built[:3]}): its sparse optimizer '
        'is built, so the masked set can no longer change.')
  include_matcher = None if include is None else _Matcher(include, 'include')
  exclude_matcher = _Matcher(exclude, 'exclude')
  chosen, dense, choices = [], [], set()
  for variable, layer, names in owned:
    kind, reason = _rule(variable, embeddings)
    if variable.trainable and _is_float(variable) and len(variable.shape) >= 2:
      key = _key_of(_full_name(variable, names))
      choices.update(names + (variable.path,))
      if include_matcher is not None:
        hit = include_matcher.match(variable, names, key)
        if hit is None or (hit == 'layer' and kind is None):
          kind, reason = None, reason or 'not in include'
        elif kind is None:
          kind, reason = 'chosen', None
      if kind is not None and exclude_matcher.match(variable, names, key):
        kind, reason = None, 'excluded'
    if kind is None:
      dense.append((variable, layer, reason))
    else:
      chosen.append((variable, layer, names, kind))
  exclude_matcher.check_all_used(choices)
  if include_matcher is not None:
    include_matcher.check_all_used(choices)
  if not chosen:
    raise ValueError(
        f'sparsify_model found nothing to mask in {model.name!r}: its weights are '
        f'{_count_reasons(dense)}. Masked are trainable weights of rank >= 2 named '
        '"kernel" or "*_kernel" (Dense, EinsumDense, convolutions, recurrent cells), and '
        'embeddings with embeddings=True; include=[weight path or predicate] picks '
        'others.')
  for variable, layer, reason in dense:
    mark(variable, None)
    setattr(variable, _DENSE_REASON_ATTRIBUTE, reason)
    if _is_layer_mask(layer, variable):
      setattr(variable, _MASK_ATTRIBUTE, None)
  keys = _unique_keys([(v, names) for v, _, names, _ in chosen])
  for (variable, layer, _, kind), key in zip(chosen, keys):
    view = matrix_view(layer, variable)
    mark(variable, KernelSpec(
        key=key, path=variable.path, kind=kind,
        shape=tuple(int(d) for d in variable.shape), matrix=view,
        erk_shape=_erk_shape(layer, variable, view),
        from_weights=masks == 'from_weights'))
  if verbose:
    print(_summary_line(model, chosen, dense))
  return model


def _count_reasons(dense):
  counts = {}
  for variable, _, reason in dense:
    count, params = counts.get(reason, (0, 0))
    counts[reason] = (count + 1, params + math.prod(variable.shape))
  return ', '.join(f'{count} {reason} ({params:,} parameters)'
                   for reason, (count, params) in sorted(counts.items()))


def _summary_line(model, chosen, dense):
  masked = sum(math.prod(v.shape) for v, _, _, _ in chosen)
  trainable = masked + sum(math.prod(v.shape) for v, _, _ in dense if v.trainable)
  line = (f'sparsify_model({model.name}): {len(chosen)} weights masked, '
          f'{masked:,} of {trainable:,} trainable parameters '
          f'({100.0 * masked / max(trainable, 1):.1f}%)')
  trainable_dense = [entry for entry in dense if entry[0].trainable]
  if trainable_dense:
    line += f'; dense: {_count_reasons(trainable_dense)}'
  return line + '.'


# --- Reporting -----------------------------------------------------------------------

def sparsity_report(model, optimizer=None):
  """One row per weight of `model`: masked or not, shape, target and actual sparsity.

  Args:
    model: a model whose weights may be masked.
    optimizer: its built sparse optimizer (or a LossScaleOptimizer around it), for the
      target sparsities; without it the target column is empty.

  Returns:
    A list of dicts with `weight` (the names of the layers above it and its own; unique
    in the model, where paths may repeat), `shape`, `parameters`, `masked` (True, or why
    it stays dense), `target` (the distribution's sparsity, or None), `sparsity` (of the
    mask for masked weights, else the fraction of zero entries), `zeros` (zero entries)
    and `trainable`.
  """
  sparse = getattr(optimizer, 'inner_optimizer', None)
  if not hasattr(optimizer, 'target_sparsities'):
    optimizer = sparse
  targets = optimizer.target_sparsities() if hasattr(
      optimizer, 'target_sparsities') and optimizer.built else {}
  rows = []
  for variable, _, names in _owned_weights(model):
    mask, spec = get_mask(variable), kernel_spec(variable)
    values = np.asarray(variable)
    if mask is not None:
      status = True
    elif spec is not None:
      status = CHOSEN
    else:
      status = (getattr(variable, _DENSE_REASON_ATTRIBUTE, None) or
                _rule(variable, embeddings=False)[1] or 'not chosen')
    size = int(values.size)
    zeros = int(np.sum(values == 0))
    rows.append({
        'weight': _full_name(variable, names),
        'shape': tuple(int(d) for d in variable.shape), 'parameters': size,
        'masked': status, 'target': targets.get(spec.key) if spec is not None else None,
        'sparsity': (float(np.mean(np.asarray(mask) == 0)) if mask is not None
                     else zeros / max(size, 1)),
        'zeros': zeros, 'trainable': bool(variable.trainable),
    })
  return rows


# The status of a weight `sparsify_model` chose whose mask does not exist yet.
CHOSEN = 'chosen; its mask is made when the sparse optimizer is built'


def format_sparsity_report(rows):
  """The rows of `sparsity_report` as a text table and a total line."""
  width = max([len(r['weight']) for r in rows] + [6])
  lines = [f'{"weight":<{width}}  {"shape":<16} {"params":>10} {"target":>7} '
           f'{"actual":>7}  masked']
  for row in rows:
    target = '' if row['target'] is None else f'{row["target"]:.3f}'
    masked = 'yes' if row['masked'] is True else f'no: {row["masked"]}'
    lines.append(f'{row["weight"]:<{width}}  {str(row["shape"]):<16} '
                 f'{row["parameters"]:>10,} {target:>7} {row["sparsity"]:>7.3f}  {masked}')
  masked = [r for r in rows if r['masked'] is True]
  chosen = [r for r in rows if r['masked'] == CHOSEN]
  masked_params = sum(r['parameters'] for r in masked)
  trainable = [r for r in rows if r['trainable']]
  total = sum(r['parameters'] for r in trainable)
  inactive = sum(r['sparsity'] * r['parameters'] for r in masked)
  line = (f'masked: {len(masked)} weights, {masked_params:,} parameters, sparsity '
          f'{inactive / max(masked_params, 1):.4f}')
  if chosen:
    line += f' ({len(chosen)} more chosen, masked once the sparse optimizer is built)'
  # As the optimizer's `sparsity/all_weights`: zero entries of every trainable weight.
  lines.append(f'{line}; all trainable weights: {total:,} parameters, '
               f'{sum(r["zeros"] for r in trainable) / max(total, 1):.4f} zeros')
  return '\n'.join(lines)
