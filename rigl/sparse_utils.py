"""Sparsity distributions, mask initialisation and sparsity bookkeeping.

The public names and semantics follow the original `rigl/sparse_utils.py`. Masks are
described by anything with a `.shape` (tuple, list or `TensorShape`) and a name: Keras 3
variables are named by their `.path` (e.g. `'dense_1/mask'`, since their `.name` is only
`'mask'`), everything else by `.name` (e.g. the TF1-style `'layer1/mask:0'`). Results are
keyed by that name; summaries by the short `mask_key`.
"""

import math
import re

from absl import logging
import numpy as np
import tensorflow as tf

from rigl import masking

DEFAULT_ERK_SCALE = 1.0
MASK_INIT_METHODS = ('random', 'erdos_renyi', 'erdos_renyi_kernel', 'str')

_MASK_NAME_RE = re.compile(r'(.+)/mask(?::\d+)?$')


def mask_name(mask):
  """The name of a mask: a Keras variable's path, else its `.name`."""
  path = getattr(mask, 'path', None)
  return path if isinstance(path, str) else mask.name


def mask_key(mask):
  """A mask's short name: its kernel's key, or the layer of a `<layer>/mask` name."""
  kernel = masking.kernel_of_mask(mask)
  if kernel is not None and masking.kernel_spec(kernel) is not None:
    return masking.kernel_spec(kernel).key
  return layer_name_of_mask(mask_name(mask))


def _shape(mask):
  return tuple(int(d) for d in mask.shape)


def mask_extract_name_fn(mask_name_str):
  """`'resnet_model/initial_conv/mask:0'` -> `'resnet_model/initial_conv'`."""
  match = _MASK_NAME_RE.match(mask_name_str)
  if match is None:
    raise ValueError(
        f'Mask name {mask_name_str!r} does not have the form "<layer>/mask" or '
        '"<layer>/mask:0".')
  return match.group(1)


def layer_name_of_mask(mask_name_str):
  """The layer's own name: `'model/block/conv1/mask'` -> `'conv1'`.

  Keras 3 paths carry the enclosing model's name, so custom maps and summaries of
  Keras models are keyed by this instead of the full scope.
  """
  return mask_extract_name_fn(mask_name_str).rsplit('/', 1)[-1]


def check_sparsity(sparsity, what='sparsity'):
  """Raises ValueError unless `sparsity` is a number in [0, 1)."""
  if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)):
    raise ValueError(f'{what} must be a number in [0, 1), got {sparsity!r}.')
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f'{what} must be in [0, 1), got {sparsity!r}.')
  return float(sparsity)


def get_n_zeros(size, sparsity):
  """Number of zeros a tensor of `size` elements has at `sparsity`: floor(s * n)."""
  return int(np.floor(sparsity * size))


def calculate_sparsity(masks):
  """Fraction of zeros over all `masks` together, as a float32 scalar tensor."""
  ones = tf.add_n([tf.reduce_sum(tf.cast(m, tf.float32)) for m in masks])
  total = float(sum(int(np.prod(_shape(m))) for m in masks))
  return 1.0 - ones / total


def layer_names_of_masks(masks, extract_name_fn=None):
  """The layer name of each mask, in order; two masks of one name are refused.

  Keras models may nest sub-models that reuse a layer name (two `dense` layers); keyed
  by name, their sparsities and custom-map entries would silently mix.
  """
  names = [extract_name_fn(mask_name(m)) if extract_name_fn else mask_key(m)
           for m in masks]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    paths = sorted(mask_name(m) for m, n in zip(masks, names) if n in repeated)
    raise ValueError(
        f'Masked layers must have unique names, but {repeated} name several masks '
        f'({paths}); give the layers of nested models distinct names.')
  return names


def sparsity_summary(masks):
  """`{'global': s, <layer name>: s}`: fractions of zero entries, float32 tensors."""
  summary = {'global': calculate_sparsity(masks)}
  for name, mask in zip(layer_names_of_masks(masks), masks):
    summary[name] = calculate_sparsity([mask])
  return summary


def check_erk_power_scale(erk_power_scale):
  """Raises ValueError unless `erk_power_scale` is a finite number >= 0."""
  if (isinstance(erk_power_scale, bool) or
      not isinstance(erk_power_scale, (int, float, np.floating, np.integer)) or
      not math.isfinite(erk_power_scale) or erk_power_scale < 0):
    raise ValueError(f'erk_power_scale must be a finite number >= 0 (1 is ERK, 0 is '
                     f'uniform), got {erk_power_scale!r}.')
  return float(erk_power_scale)


def get_mask_random_numpy(mask_shape, sparsity, random_state=None):
  """A 0/1 array of `mask_shape` with exactly n - floor(sparsity * n) ones, shuffled."""
  flat = np.ones(int(np.prod(mask_shape)))
  flat[:get_n_zeros(flat.size, sparsity)] = 0
  (random_state or np.random).shuffle(flat)
  return flat.reshape(mask_shape)


def get_mask_random(mask, sparsity, dtype, random_state=None):
  """`get_mask_random_numpy` for `mask.shape`, as a constant tensor of `dtype`."""
  return tf.constant(
      get_mask_random_numpy(_shape(mask), sparsity, random_state), dtype=dtype)


def get_sparsities_uniform(all_masks, default_sparsity, custom_sparsity_map,
                           extract_name_fn=mask_extract_name_fn):
  """Every mask at `default_sparsity` unless the custom map names its layer."""
  return {
      mask_name(m): custom_sparsity_map.get(
          extract_name_fn(mask_name(m)), default_sparsity)
      for m in all_masks
  }


def get_sparsities_erdos_renyi(all_masks, default_sparsity, custom_sparsity_map,
                               include_kernel,
                               extract_name_fn=mask_extract_name_fn,
                               erk_power_scale=DEFAULT_ERK_SCALE,
                               n_zeros_fn=get_n_zeros):
  """Erdos-Renyi (ER) or Erdos-Renyi-Kernel (ERK) per-layer sparsities.

  Layers outside the custom map share the parameter budget that uniform sparsity would
  give them; each layer's density is proportional to sum(shape)/prod(shape) (ERK) or
  (n_in + n_out)/(n_in * n_out) (ER). A layer whose density would exceed 1 is made dense
  and the rest re-balanced, until every density fits. `n_zeros_fn` counts the zeros of
  the budget (the original used ceil before Oct 2020, floor since).
  """
  dense_layers = set()
  while True:
    divisor = 0.0
    rhs = 0.0
    raw_probabilities = {}
    for mask in all_masks:
      var_name = extract_name_fn(mask_name(mask))
      shape = _shape(mask)
      n_param = int(np.prod(shape))
      n_zeros = n_zeros_fn(n_param, default_sparsity)
      if var_name in dense_layers:
        rhs -= n_zeros
      elif var_name in custom_sparsity_map:
        continue
      else:
        rhs += n_param - n_zeros
        if include_kernel:
          raw = (np.sum(shape) / np.prod(shape))**erk_power_scale
        else:
          n_in, n_out = shape[-2:]
          raw = (n_in + n_out) / (n_in * n_out)
        raw_probabilities[mask_name(mask)] = raw
        divisor += raw * n_param
    if not raw_probabilities:
      eps = 0.0
      break
    eps = rhs / divisor
    max_prob = max(raw_probabilities.values())
    if max_prob * eps <= 1:
      break
    for name, prob in raw_probabilities.items():
      if prob == max_prob:
        logging.info('Sparsity of %s set to 0 (dense).', name)
        dense_layers.add(extract_name_fn(name))

  sparsities = {}
  for mask in all_masks:
    name = mask_name(mask)
    var_name = extract_name_fn(name)
    if var_name in custom_sparsity_map:
      sparsities[name] = custom_sparsity_map[var_name]
    elif var_name in dense_layers:
      sparsities[name] = 0.0
    else:
      sparsities[name] = 1.0 - eps * raw_probabilities[name]
  return sparsities


def get_sparsities_str(all_masks, default_sparsity):
  """Per-layer sparsities of the STR paper's ResNet-50 at overall `default_sparsity`.

  Masks are matched by the layer name before `/mask` (`'resnet_model/initial_conv/mask:0'`
  and `'initial_conv/mask'` both work). The custom map does not apply.
  """
  from rigl import str_sparsities  # pylint: disable=g-import-not-at-top
  return {mask_name(m): str_sparsities.sparsity_of_mask(mask_name(m), default_sparsity)
          for m in all_masks}


def get_sparsities(all_masks, method, default_sparsity, custom_sparsity_map=None,
                   extract_name_fn=mask_extract_name_fn,
                   erk_power_scale=DEFAULT_ERK_SCALE, n_zeros_fn=get_n_zeros):
  """Per-mask sparsities `{mask name: sparsity}` for a distribution `method`.

  Args:
    all_masks: masks (anything with a name and a `.shape`).
    method: 'random' (uniform), 'erdos_renyi', 'erdos_renyi_kernel' or 'str'.
    default_sparsity: overall sparsity in [0, 1).
    custom_sparsity_map: `{layer name: sparsity}`, layers kept out of the budget.
    extract_name_fn: mask name -> layer name (the key of the custom map).
    erk_power_scale: exponent of the ERK densities (0 is uniform, 1 is ERK).
    n_zeros_fn: how many zeros a layer of n weights has at sparsity s.
  """
  custom_sparsity_map = dict(custom_sparsity_map or {})
  if method not in MASK_INIT_METHODS:
    raise ValueError(
        f'Method: {method!r} is not a valid mask initialization method; '
        f'choose one of {MASK_INIT_METHODS}.')
  check_sparsity(default_sparsity, 'default_sparsity')
  check_erk_power_scale(erk_power_scale)
  for layer, sparsity in custom_sparsity_map.items():
    check_sparsity(sparsity, f'custom_sparsity_map[{layer!r}]')
  layer_names = set(layer_names_of_masks(all_masks, extract_name_fn))
  unknown = sorted(set(custom_sparsity_map) - layer_names)
  if unknown:
    raise ValueError(
        f'No masks are found for the following names: {unknown}; '
        f'masked layers are {sorted(layer_names)}.')

  if method == 'erdos_renyi':
    return get_sparsities_erdos_renyi(
        all_masks, default_sparsity, custom_sparsity_map, include_kernel=False,
        extract_name_fn=extract_name_fn, n_zeros_fn=n_zeros_fn)
  if method == 'erdos_renyi_kernel':
    return get_sparsities_erdos_renyi(
        all_masks, default_sparsity, custom_sparsity_map, include_kernel=True,
        extract_name_fn=extract_name_fn, erk_power_scale=erk_power_scale,
        n_zeros_fn=n_zeros_fn)
  if method == 'str':
    return get_sparsities_str(all_masks, default_sparsity)
  return get_sparsities_uniform(all_masks, default_sparsity, custom_sparsity_map,
                                extract_name_fn=extract_name_fn)


def get_mask_init_fn(all_masks, method, default_sparsity, custom_sparsity_map=None,
                     mask_fn=get_mask_random, erk_power_scale=DEFAULT_ERK_SCALE,
                     extract_name_fn=mask_extract_name_fn):
  """Returns a function that assigns `mask_fn(mask, sparsity, mask.dtype)` to each mask.

  The sparsities are computed (and validated) now; the masks are written when the
  returned function is called, which works eagerly and inside a `tf.function`; a
  mask that knows its kernel (`rigl.masking`) also zeroes the kernel where it is 0.
  """
  sparsities = get_sparsities(
      all_masks, method, default_sparsity, custom_sparsity_map,
      extract_name_fn=extract_name_fn, erk_power_scale=erk_power_scale)
  for name, sparsity in sparsities.items():
    logging.info('Mask %s: sparsity %.4f', name, sparsity)

  def init_masks():
    for mask in all_masks:
      masking.assign_mask(mask, mask_fn(mask, sparsities[mask_name(mask)], mask.dtype))

  return init_masks


def seeded_mask_random(seed):
  """A `mask_fn` drawing random masks from one `np.random.RandomState(seed)` in order."""
  random_state = np.random.RandomState(seed)
  return lambda mask, sparsity, dtype: get_mask_random(mask, sparsity, dtype, random_state)


_KERNEL_VARIABLE_SUFFIX_RE = re.compile(r'/(?:depthwise_)?kernel(?::\d+)?$')


def _layer_name_of_key(key):
  """`'conv1'`, `'conv1/kernel:0'` and `'conv_dw_1/depthwise_kernel:0'` name layers."""
  return _KERNEL_VARIABLE_SUFFIX_RE.sub('', key)


def _ceil_n_zeros(size, sparsity):
  """Zero count of the original code before Oct 2020, which the published figures used."""
  return int(np.ceil(sparsity * size))


def get_stats(masked_layers, default_sparsity=0.8, method='erdos_renyi',
              custom_sparsities=None, is_debug=False, width=1.,
              first_layer_name='conv1', last_layer_name='conv_preds', param_size=32,
              erk_power_scale=DEFAULT_ERK_SCALE, convention='rigl_2020'):
  """Inference FLOPs and size of Keras layers at a sparsity distribution.

  Layer-wise sparsities come from `get_sparsities` on the layers' kernel shapes; every
  layer is then counted with the MicroNet rules of `rigl.counting` (bias and ReLU always
  counted, a 1-bit mask per weight of a sparse kernel).

  Args:
    masked_layers: built Keras Conv2D, DepthwiseConv2D and Dense layers (masked or not),
      connected in a model built on a `keras.Input`.
    default_sparsity: overall sparsity handed to `get_sparsities`.
    method: 'random', 'erdos_renyi', 'erdos_renyi_kernel' or 'str' (ResNet-50 layers).
    custom_sparsities: `{layer: sparsity}` for layers kept out of the budget; a layer is
      named by its Keras name (`'conv1'`) or by the TF1 variable name of its kernel
      (`'conv1/kernel:0'`, `'conv_dw_1/depthwise_kernel:0'`).
    is_debug: print one line per layer.
    width: multiplier of the channel counts, applied to the kernel shapes after the
      sparsities are computed; the input channels of the first layer, the output channels
      of the last layer and dimensions of size 1 are not scaled.
    first_layer_name, last_layer_name: layers whose name starts with these are the first
      and the last layer.
    param_size: bits per parameter.
    erk_power_scale: exponent of the ERK densities.
    convention: 'rigl_2020' (the published figures: zero counts rounded up in the ERK
      budget, and the geometry rules of `rigl.counting`) or 'exact'.

  Returns:
    `(total_flops, total_param_bits, real_sparsity)`, where real_sparsity is the fraction
    of zeros over the (width-scaled) kernels, biases omitted.
  """
  from rigl import counting  # pylint: disable=g-import-not-at-top

  counting.check_convention(convention)
  if not width > 0:
    raise ValueError(f'width must be a positive number, got {width!r}.')
  layers = list(masked_layers)
  names = [layer.name for layer in layers]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise ValueError(f'Layer names must be unique to key their sparsities; repeated: '
                     f'{repeated}.')
  for layer in layers:
    counting.layer_kind(layer)  # Raises for a layer the rules cannot count.
  kernel_shapes = {layer.name: tuple(int(d) for d in counting.layer_kernel(layer).shape)
                   for layer in layers}
  custom = {_layer_name_of_key(key): sparsity
            for key, sparsity in (custom_sparsities or {}).items()}
  # Named like masks so that every method, 'str' included, finds its layers.
  kernels = [NamedShape(f'{name}/mask', kernel_shapes[name]) for name in names]
  sparsities = get_sparsities(
      kernels, method, default_sparsity, custom, erk_power_scale=erk_power_scale,
      n_zeros_fn=_ceil_n_zeros if convention == 'rigl_2020' else get_n_zeros)
  # 'str' reads every layer from its table; the layers named in the custom map still keep
  # their own sparsity (an unmasked layer is dense whatever the table says).
  sparsities.update({f'{name}/mask': sparsity for name, sparsity in custom.items()})

  total_flops = total_param_bits = 0.0
  total_weights = total_zeros = 0
  for layer in layers:
    shape = list(kernel_shapes[layer.name])
    d_in, d_out = (0, 1) if len(shape) == 2 else (2, 3)
    is_first = layer.name.startswith(first_layer_name)
    if not is_first and shape[d_in] != 1:
      shape[d_in] = int(shape[d_in] * width)
    if not layer.name.startswith(last_layer_name) and shape[d_out] != 1:
      shape[d_out] = int(shape[d_out] * width)
    geometry = counting.layer_geometry(layer, convention, is_first_layer=is_first,
                                       kernel_shape=tuple(shape))
    sparsity = sparsities[f'{layer.name}/mask']
    cost = counting.count_layer(geometry, sparsity, param_size, convention)
    if is_debug:
      print(f'{layer.name}: kernel {tuple(shape)}, {geometry.output_positions} positions, '
            f'sparsity {sparsity:.4f}, {cost.flops / 1e6:.3f} MFLOPs, '
            f'{cost.param_bits / 8e6:.4f} MB')
    total_flops += cost.flops
    total_param_bits += cost.param_bits
    n_weights = math.prod(shape)
    total_weights += n_weights
    total_zeros += get_n_zeros(n_weights, sparsity)
  return total_flops, total_param_bits, total_zeros / total_weights


class NamedShape:
  """A kernel as `get_sparsities` sees it: a name and a shape."""

  def __init__(self, name, shape):
    self.name = name
    self.shape = shape
