r"""Training FLOPs, inference FLOPs and size of a sparse training run, from its flags.

Counts the project's own Keras 3 models with the MicroNet rules (`rigl.counting`,
`rigl.sparse_utils.get_stats`) and the paper's training accounting (`rigl.training_flops`).
It takes the training scripts' flags, so a run's command line gives its costs:

  python -m rigl.flops --model_architecture=resnet --training_method=rigl \
      --mask_init_method=erdos_renyi_kernel --end_sparsity=0.8 \
      --first_layer_sparsity=-1 --training_steps_multiplier=5

As in the training scripts, `--first_layer_sparsity` / `--last_layer_sparsity` are 0 for an
unmasked (dense) layer, -1 for a masked layer at the distribution's sparsity, and a value in
(0, 1) for a masked layer at that sparsity outside the distribution's budget. MobileNets never
mask their first layer nor their depthwise convolutions; layers that are not masked are
counted dense.

`--model_architecture=char_lm` counts the character-level language model per character
(`rigl.char_lm.char_lm_model.inference_cost`: the GRU's three gates in both kernels, the
readout and the logits; `--embedding_size`, `--gru_units`, `--readout_units`,
`--tie_embedding` give its sizes, the paper's by default); the first and last layer flags
do not apply to it.
"""

import json
import math

from absl import app
from absl import flags
from absl import logging

# The modules that import TensorFlow are imported where they are used, so that a bad flag
# is reported at once.
from rigl import training_flops

# The ImageNet script's (rigl.imagenet_resnet.imagenet_model), then CIFAR's and MNIST's.
ARCHITECTURES = ('resnet', 'mobilenet_v1', 'mobilenet_v2', 'vgg_16', 'vgg_a', 'vgg_19',
                 'wide_resnet', 'mnist_fc', 'char_lm')
DISTRIBUTION_LABELS = {'random': 'Uniform', 'erdos_renyi': 'ER',
                       'erdos_renyi_kernel': 'ERK', 'str': 'STR'}
# Input, classes, first and last layer of the CIFAR and MNIST architectures.
_SMALL_ARCHITECTURE_IO = {
    'wide_resnet': ((32, 32, 3), 10, 'conv_1', 'logits'),
    'mnist_fc': ((784,), 10, 'layer1', 'layer3'),
}

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags.

  Only when the command runs: the training scripts define flags of the same names, and absl
  refuses a name defined twice in one process.
  """
  flags.DEFINE_enum('model_architecture', 'resnet', ARCHITECTURES, 'Model to count.')
  flags.DEFINE_integer('resnet_depth', None,
                       'Depth of resnet (default 50) or wide_resnet (default 22).')
  flags.DEFINE_integer('resnet_width', 2, 'Width multiplier of wide_resnet (WRN-22-2).')
  flags.DEFINE_float('expansion_factor', 6., 'Expansion of the mobilenet_v2 blocks.')
  flags.DEFINE_enum('mask_init_method', 'erdos_renyi_kernel',
                    ('random', 'erdos_renyi', 'erdos_renyi_kernel', 'str'),
                    'Layer-wise sparsity distribution.')
  flags.DEFINE_float('end_sparsity', 0.9, 'Overall (target) sparsity.')
  flags.DEFINE_float('first_layer_sparsity', 0.,
                     '0: first layer unmasked; -1: masked at the distribution\'s sparsity; '
                     'in (0, 1): masked at this sparsity.')
  flags.DEFINE_float('last_layer_sparsity', -1., 'Same as first_layer_sparsity, for the last '
                     'layer.')
  flags.DEFINE_float('erk_power_scale', 1.0, 'Exponent of the ERK densities.')
  flags.DEFINE_float('width', -1.,
                     'Channel multiplier of resnet and mobilenets; <= 0 means 1.')
  flags.DEFINE_enum('training_method', 'rigl', training_flops.TRAINING_METHODS,
                    'Training method; baseline trains the dense model.')
  flags.DEFINE_float('training_steps_multiplier', 1.0, 'Length of training relative to the '
                     'standard schedule.')
  flags.DEFINE_integer('maskupdate_frequency', 100, 'Steps between RigL mask updates.')
  flags.DEFINE_integer('train_steps', 32000, 'Standard training length, for the pruning '
                       'schedule (32000 steps of 4096 images on ImageNet).')
  flags.DEFINE_integer('sparsity_begin_step', 10000, 'First pruning step (prune).')
  flags.DEFINE_integer('sparsity_end_step', 25000, 'Step at which pruning reaches '
                       'end_sparsity (prune).')
  flags.DEFINE_integer('pruning_frequency', 1000, 'Steps between pruning updates (prune).')
  flags.DEFINE_enum('convention', 'rigl_2020', ('rigl_2020', 'exact'),
                    'rigl_2020 reproduces the published figures; exact counts the real '
                    'arithmetic (see docs/flops.md).')
  flags.DEFINE_list('custom_sparsity_map', [],
                    'layer:sparsity pairs fixing masked layers outside the budget, e.g. '
                    'the MNIST script\'s layer2:0.882,layer3:0.')
  flags.DEFINE_enum('format', 'table', ('table', 'json'), 'Output format.')
  flags.DEFINE_integer('embedding_size', 128, 'char_lm: width of the byte embedding.',
                       lower_bound=1)
  flags.DEFINE_integer('gru_units', 512, 'char_lm: the GRU\'s state size.', lower_bound=1)
  flags.DEFINE_list('readout_units', ['256', '128'], 'char_lm: widths of the readout.')
  flags.register_validator(
      'readout_units', lambda units: bool(units) and all(u.isdigit() and int(u) > 0
                                                         for u in units),
      message='--readout_units must be one or more positive integers, e.g. 256,128.')
  flags.DEFINE_bool('tie_embedding', True, 'char_lm: the logits reuse the embedding.')


def parse_custom_sparsity_map(entries):
  """['layer2:0.882', 'layer3:0'] -> {'layer2': 0.882, 'layer3': 0.0}."""
  parsed = {}
  for entry in entries:
    name, _, value = entry.rpartition(':')
    try:
      parsed[name] = float(value)
    except ValueError:
      name = ''
    if not name:
      raise ValueError(f'--custom_sparsity_map entry {entry!r} is not of the form '
                       'layer:sparsity (e.g. layer2:0.882).')
  return parsed


def build_model(architecture, width=1., first_layer_sparsity=0., last_layer_sparsity=-1.,
                resnet_depth=None, resnet_width=2, expansion_factor=6.):
  """The architecture with masked layers where its training script masks them."""
  if architecture not in _SMALL_ARCHITECTURE_IO:
    from rigl.imagenet_resnet import imagenet_model  # pylint: disable=g-import-not-at-top
    return imagenet_model.build_model(
        architecture, resnet_depth=resnet_depth or 50, width=width,
        expansion_factor=expansion_factor, first_layer_sparsity=first_layer_sparsity,
        last_layer_sparsity=last_layer_sparsity, standardize_input=False)
  input_shape, num_classes, _, _ = _SMALL_ARCHITECTURE_IO[architecture]
  first_layer_masked, last_layer_masked = first_layer_sparsity != 0, last_layer_sparsity != 0
  if architecture == 'wide_resnet':
    from rigl.cifar_resnet import resnet_model  # pylint: disable=g-import-not-at-top
    return resnet_model.wide_resnet(
        resnet_depth or 22, resnet_width, num_classes, pruning_method='threshold',
        prune_first_layer=first_layer_masked, prune_last_layer=last_layer_masked, l2=0.,
        input_shape=input_shape)
  from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
  unmasked = [name for name, masked in (('layer1', first_layer_masked),
                                        ('layer3', last_layer_masked)) if not masked]
  return mnist_model.build_model(masked=True, unmasked=unmasked, l2_scale=0.)


def _first_and_last_layer(architecture):
  if architecture in _SMALL_ARCHITECTURE_IO:
    return _SMALL_ARCHITECTURE_IO[architecture][2:]
  from rigl.imagenet_resnet import imagenet_model  # pylint: disable=g-import-not-at-top
  return imagenet_model.first_and_last_layer(architecture)


def count_run(model_architecture='resnet', mask_init_method='erdos_renyi_kernel',
              end_sparsity=0.9, first_layer_sparsity=0., last_layer_sparsity=-1.,
              erk_power_scale=1.0, width=-1., training_method='rigl',
              training_steps_multiplier=1.0, maskupdate_frequency=100, train_steps=32000,
              sparsity_begin_step=10000, sparsity_end_step=25000, pruning_frequency=1000,
              convention='rigl_2020', resnet_depth=None, resnet_width=2,
              expansion_factor=6., custom_sparsity_map=None, char_lm_sizes=None):
  """Costs of a training run given the training script's settings.

  `custom_sparsity_map` (`{layer name: sparsity}`) fixes the sparsity of masked layers
  outside the distribution's budget, as the MNIST script does for `layer2` and `layer3`.
  `char_lm_sizes` (`embedding_size`, `gru_units`, `readout_units`, `tie_embedding`) sizes
  the `char_lm` model (default: the paper's); its FLOPs are per character.

  Returns:
    A dict with `inference_flops` and `dense_inference_flops` (per example),
    `inference_flops_ratio`, `training_flops_ratio` (relative to dense training of the
    standard length), `size_mb` and `dense_size_mb` (megabytes of 32-bit parameters plus
    masks) and `real_sparsity` (fraction of zero kernel weights).
  """
  from rigl import counting  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl import sparse_utils  # pylint: disable=g-import-not-at-top

  from rigl.imagenet_resnet import imagenet_model  # pylint: disable=g-import-not-at-top

  if model_architecture not in ARCHITECTURES:
    raise ValueError(f'Unknown model_architecture {model_architecture!r}; choose one of '
                     f'{ARCHITECTURES}.')
  if training_method not in training_flops.TRAINING_METHODS:
    raise ValueError(f'Unknown training_method {training_method!r}; choose one of '
                     f'{training_flops.TRAINING_METHODS}.')
  sparse_utils.check_sparsity(end_sparsity, 'end_sparsity')
  if model_architecture == 'char_lm':
    from rigl.char_lm import char_lm_model  # pylint: disable=g-import-not-at-top
    sizes = dict(char_lm_sizes or {})
    shape = {k: sizes[k] for k in ('embedding_size', 'gru_units', 'readout_units')
             if k in sizes}

    def stats_at(sparsity):
      sparsities = char_lm_model.layer_sparsities(
          sparsity, mask_init_method, custom_sparsity_map, erk_power_scale, **shape)
      cost = char_lm_model.inference_cost(sparsities, convention=convention, **sizes)
      return (cost.flops, cost.param_bits / 8e6,
              char_lm_model.zero_fraction(sparsities, **sizes))

    dense_flops, dense_size, _ = stats_at(0.)
    return _run_costs(stats_at, dense_flops, dense_size, end_sparsity, training_method,
                      training_steps_multiplier, maskupdate_frequency, train_steps,
                      sparsity_begin_step, sparsity_end_step, pruning_frequency)
  first_layer, last_layer = _first_and_last_layer(model_architecture)
  imagenet_model.check_layer_sparsity(first_layer_sparsity, 'first')
  imagenet_model.check_layer_sparsity(last_layer_sparsity, 'last')
  if not math.isfinite(width):
    raise ValueError(f'--width must be a finite number (<= 0 means 1), got {width!r}.')
  if width > 0 and width != 1 and model_architecture in _SMALL_ARCHITECTURE_IO:
    raise ValueError(f'--width={width!r} applies to the ImageNet architectures; '
                     f'{model_architecture} has a fixed width (wide_resnet: --resnet_width).')
  model = build_model(model_architecture, width=width if width > 0 else 1.,
                      first_layer_sparsity=first_layer_sparsity,
                      last_layer_sparsity=last_layer_sparsity, resnet_depth=resnet_depth,
                      resnet_width=resnet_width, expansion_factor=expansion_factor)
  countable = [layer for layer in model.layers
               if isinstance(layer, counting.COUNTABLE_LAYER_TYPES)]
  custom_sparsities = {layer.name: 0. for layer in countable
                       if not isinstance(layer, layers.MASKED_LAYERS)}
  for name, value in ((first_layer, first_layer_sparsity),
                      (last_layer, last_layer_sparsity)):
    if value > 0:
      custom_sparsities[name] = value
  unmasked = sorted(set(custom_sparsity_map or {}) & {
      layer.name for layer in countable if not isinstance(layer, layers.MASKED_LAYERS)})
  if unmasked:
    raise ValueError(
        f'--custom_sparsity_map sets {unmasked}, which the {model_architecture} training '
        'script does not mask (see --first_layer_sparsity and --last_layer_sparsity); '
        'a layer trained dense is counted dense.')
  custom_sparsities.update(custom_sparsity_map or {})

  def stats_at(sparsity, method=mask_init_method):
    flops, bits, real = sparse_utils.get_stats(
        countable, sparsity, method, custom_sparsities, width=1.,
        first_layer_name=first_layer, last_layer_name=last_layer,
        erk_power_scale=erk_power_scale, convention=convention)
    return flops, bits / 8e6, real

  dense_flops, dense_size, _ = sparse_utils.get_stats(
      countable, 0., 'random', width=1., first_layer_name=first_layer,
      last_layer_name=last_layer, convention=convention)
  dense_size /= 8e6
  return _run_costs(stats_at, dense_flops, dense_size, end_sparsity, training_method,
                    training_steps_multiplier, maskupdate_frequency, train_steps,
                    sparsity_begin_step, sparsity_end_step, pruning_frequency)


def _run_costs(stats_at, dense_flops, dense_size, end_sparsity, training_method,
               training_steps_multiplier, maskupdate_frequency, train_steps,
               sparsity_begin_step, sparsity_end_step, pruning_frequency):
  """`count_run`'s result from `stats_at(sparsity) -> (flops, MB, real sparsity)`."""
  if training_method == 'baseline':
    flops, size, real_sparsity = dense_flops, dense_size, 0.
  else:
    flops, size, real_sparsity = stats_at(end_sparsity)
  if training_method == 'prune':
    per_step = training_flops.gradual_pruning_flops_per_step(
        lambda sparsity: stats_at(sparsity)[0], end_sparsity, sparsity_begin_step,
        sparsity_end_step, pruning_frequency, train_steps)
  else:
    per_step = training_flops.training_flops_per_step(
        training_method, flops, dense_flops, maskupdate_frequency)
  return {
      'inference_flops': flops,
      'dense_inference_flops': dense_flops,
      'inference_flops_ratio': flops / dense_flops,
      'training_flops_ratio': training_flops.training_flops_ratio(
          per_step, dense_flops, training_steps_multiplier),
      'size_mb': size,
      'dense_size_mb': dense_size,
      'real_sparsity': real_sparsity,
  }


def format_table(stats, model_architecture, mask_init_method, end_sparsity, training_method,
                 training_steps_multiplier):
  """A markdown table like the README's: the dense model, then the run."""
  multiplier = f'{training_steps_multiplier:g}x'
  if training_method == 'baseline':
    distribution, sparsity = '- (DENSE)', '0'
  else:
    distribution = DISTRIBUTION_LABELS[mask_init_method]
    sparsity = f'{end_sparsity:g}'
  rows = [
      ('Model', 'S. Distribution', 'Sparsity', 'Method', 'Training FLOPs',
       'Inference FLOPs', 'Model Size (MB)', 'Real Sparsity'),
      (model_architecture, '- (DENSE)', '0', 'dense 1x', '1.00x',
       _scientific(stats['dense_inference_flops']), f'{stats["dense_size_mb"]:.3f}',
       '0.000'),
      (model_architecture, distribution, sparsity, f'{training_method} {multiplier}',
       f'{stats["training_flops_ratio"]:.2f}x', f'{stats["inference_flops_ratio"]:.2f}x',
       f'{stats["size_mb"]:.3f}', f'{stats["real_sparsity"]:.3f}'),
  ]
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ['| ' + ' | '.join(cell.ljust(w) for cell, w in zip(row, widths)) + ' |'
           for row in rows]
  lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  return '\n'.join(lines)


def _scientific(value):
  """8202340776.0 -> '8.20e9', the README's notation."""
  mantissa, exponent = f'{value:.2e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'rigl.flops: error: unexpected arguments {argv[1:]}; every setting '
                     'is a --flag.')
  if not FLAGS['verbosity'].present:
    # Keep the per-layer ERK notes of get_sparsities out of the way of the result.
    logging.set_verbosity(logging.WARNING)
  try:
    stats = count_run(
        model_architecture=FLAGS.model_architecture,
        mask_init_method=FLAGS.mask_init_method, end_sparsity=FLAGS.end_sparsity,
        first_layer_sparsity=FLAGS.first_layer_sparsity,
        last_layer_sparsity=FLAGS.last_layer_sparsity,
        erk_power_scale=FLAGS.erk_power_scale, width=FLAGS.width,
        training_method=FLAGS.training_method,
        training_steps_multiplier=FLAGS.training_steps_multiplier,
        maskupdate_frequency=FLAGS.maskupdate_frequency, train_steps=FLAGS.train_steps,
        sparsity_begin_step=FLAGS.sparsity_begin_step,
        sparsity_end_step=FLAGS.sparsity_end_step,
        pruning_frequency=FLAGS.pruning_frequency, convention=FLAGS.convention,
        resnet_depth=FLAGS.resnet_depth, resnet_width=FLAGS.resnet_width,
        expansion_factor=FLAGS.expansion_factor,
        custom_sparsity_map=parse_custom_sparsity_map(FLAGS.custom_sparsity_map),
        char_lm_sizes=dict(embedding_size=FLAGS.embedding_size, gru_units=FLAGS.gru_units,
                           readout_units=[int(u) for u in FLAGS.readout_units],
                           tie_embedding=FLAGS.tie_embedding))
  except ValueError as error:
    # The message names the bad value and what is allowed; a traceback would bury it.
    raise SystemExit(f'rigl.flops: error: {error}') from None
  if FLAGS.format == 'json':
    print(json.dumps(stats, indent=2))
  else:
    print(format_table(stats, FLAGS.model_architecture, FLAGS.mask_init_method,
                       FLAGS.end_sparsity, FLAGS.training_method,
                       FLAGS.training_steps_multiplier))


if __name__ == '__main__':
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=script_flags.absl_parser)
