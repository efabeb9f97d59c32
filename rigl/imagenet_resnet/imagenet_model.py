"""The ImageNet architectures of the original script, built from its settings.

`--model_architecture` chooses ResNet (any `--resnet_depth`), MobileNet v1 or v2, or a
VGG. As in the original script every convolution the architecture can mask is a masked
layer (`pruning_method='threshold'`, even for `baseline`, whose masks stay all ones), the
first layer is masked only for ResNet with `first_layer_sparsity != 0`, and the last one
unless `last_layer_sparsity == 0`. The models take [0, 255] RGB images and standardise
them themselves, as the original's model_fn did.
"""

import re

from rigl.imagenet_resnet import mobilenetv1_model
from rigl.imagenet_resnet import mobilenetv2_model
from rigl.imagenet_resnet import resnet_model
from rigl.imagenet_resnet import vgg

ARCHITECTURES = ('resnet', 'mobilenet_v1', 'mobilenet_v2', 'vgg_16', 'vgg_a', 'vgg_19')
# Architectures whose first layer the original never masks.
FIRST_LAYER_NEVER_MASKED = ('mobilenet_v1', 'mobilenet_v2')
# Architectures whose first layer the original always masks.
FIRST_LAYER_ALWAYS_MASKED = ('vgg_16', 'vgg_a', 'vgg_19')


def check_architecture(architecture):
  if architecture not in ARCHITECTURES:
    raise ValueError(f'Unknown model_architecture {architecture!r}; choose one of '
                     f'{ARCHITECTURES}.')


def first_and_last_layer(architecture):
  """The names of the first and the last (logits) layer of `architecture`."""
  check_architecture(architecture)
  if architecture.startswith('vgg'):
    return 'conv1_1', 'fc8'
  return 'initial_conv', 'final_dense'


def check_layer_sparsity(value, which):
  """`--first/last_layer_sparsity`: 0 (unmasked), -1 (the default) or in (0, 1)."""
  if value in (-1, 0) or 0 < value < 1:
    return value
  raise ValueError(f'--{which}_layer_sparsity={value!r} is not allowed; use 0 (unmasked), '
                   '-1 (masked at the distribution\'s sparsity) or a sparsity in (0, 1).')


def custom_sparsity_map(architecture, first_layer_sparsity, last_layer_sparsity):
  """The layers outside the distribution's budget, from the first/last-layer flags.

  Raises:
    ValueError: a first-layer sparsity for an architecture whose first layer the
      original does not mask as asked (the original failed with "No masks are found").
  """
  check_layer_sparsity(first_layer_sparsity, 'first')
  check_layer_sparsity(last_layer_sparsity, 'last')
  first, last = first_and_last_layer(architecture)
  if first_layer_sparsity > 0 and architecture in FIRST_LAYER_NEVER_MASKED:
    raise ValueError(f'--first_layer_sparsity={first_layer_sparsity!r}: {architecture} '
                     f'never masks its first layer ({first}); use 0 or -1.')
  if first_layer_sparsity == 0 and architecture in FIRST_LAYER_ALWAYS_MASKED:
    raise ValueError(f'--first_layer_sparsity=0: {architecture} always masks its first '
                     f'layer ({first}); use -1 (the default sparsity) or a sparsity in '
                     '(0, 1).')
  custom = {}
  if first_layer_sparsity > 0:
    custom[first] = first_layer_sparsity
  if last_layer_sparsity > 0:
    custom[last] = last_layer_sparsity
  return custom


def build_model(architecture, num_classes=1000, resnet_depth=50, width=1.,
                expansion_factor=6., first_layer_sparsity=0., last_layer_sparsity=-1.,
                pruning_method='threshold', init_method='baseline', end_sparsity=0.,
                weight_decay=0., data_format='channels_last', image_size=224,
                standardize_input=True):
  """The Keras model of `architecture` with the original script's masking.

  Args:
    architecture: one of `ARCHITECTURES`.
    num_classes: classes of the logits.
    resnet_depth: depth of 'resnet'.
    width: channel multiplier (the script's `--width`, <= 0 meaning 1).
    expansion_factor: of 'mobilenet_v2'.
    first_layer_sparsity, last_layer_sparsity: 0 leaves the layer unmasked (for the first
      layer: of ResNet; MobileNets never mask it and VGGs always do).
    pruning_method: 'threshold' (masked layers, the script's) or 'baseline'.
    init_method, end_sparsity, weight_decay, data_format: of the builders.
    image_size: height and width of the input images.
    standardize_input: the model takes [0, 255] images and standardises them.
  """
  check_architecture(architecture)
  custom_sparsity_map(architecture, first_layer_sparsity, last_layer_sparsity)  # checks
  width = 1. if width <= 0 else width
  common = dict(pruning_method=pruning_method, width=width,
                prune_last_layer=last_layer_sparsity != 0, weight_decay=weight_decay,
                input_shape=(image_size, image_size, 3), data_format=data_format,
                standardize_input=standardize_input)
  if architecture == 'resnet':
    return resnet_model.resnet_v1_(
        resnet_depth, num_classes, prune_first_layer=first_layer_sparsity != 0,
        init_method=init_method, end_sparsity=end_sparsity, **common)
  if architecture == 'mobilenet_v1':
    return mobilenetv1_model.mobilenet_v1(num_classes, **common)
  if architecture == 'mobilenet_v2':
    return mobilenetv2_model.mobilenet_v2(num_classes, expansion_factor=expansion_factor,
                                          **common)
  return vgg.vgg(architecture, num_classes, init_method=init_method,
                 end_sparsity=end_sparsity, **common)


# --- The original's TF1 checkpoint names (reference §3.11) --------------------------------

_VGG_CONV_RE = re.compile(r'conv(\d+)_\d+$')


def tf1_scope(model, layer):
  """The TF1 variable scope of `layer`: `resnet_model/<layer>` (ResNet, MobileNets), or
  `vgg_16/conv1/conv1_1` and `vgg_16/fc8` (VGGs)."""
  match = _VGG_CONV_RE.match(layer.name)
  if model.name.startswith('vgg') and match:
    return f'{model.name}/conv{match.group(1)}/{layer.name}'
  return f'{model.name}/{layer.name}'


def checkpoint_hints(architecture):
  """`(missing, unexpected, wrong) -> [advice]` naming the flags that fit a checkpoint."""
  first, last = first_and_last_layer(architecture)
  scope = architecture if architecture.startswith('vgg') else 'resnet_model'

  def hints(missing, unexpected, wrong):
    missing, unexpected = set(missing), set(unexpected)
    advice = []
    if f'{scope}/{first}/mask' in unexpected:
      advice.append('The checkpoint\'s first layer is masked: use '
                    '--first_layer_sparsity=-1 (as the ERK checkpoints).')
    if f'{scope}/{first}/{first}/weights' in unexpected:
      advice.append('The checkpoint\'s first layer is a plain convolution: use '
                    '--first_layer_sparsity=0 (as the uniform checkpoints).')
    if f'{scope}/{last}/mask' in unexpected:
      advice.append('The checkpoint\'s last layer is masked: use --last_layer_sparsity=-1.')
    if {f'{scope}/{last}/{last}/weights', f'{scope}/{last}/kernel'} & unexpected:
      advice.append('The checkpoint\'s last layer is a plain layer: use '
                    '--last_layer_sparsity=0.')
    present = ' '.join(unexpected)
    if architecture != 'mobilenet_v2' and 'expand_1x1' in present:
      advice.append('The checkpoint is a MobileNet v2: use --model_architecture=mobilenet_v2.')
    elif not architecture.startswith('mobilenet') and 'contraction_1x1' in present:
      advice.append('The checkpoint is a MobileNet: use --model_architecture=mobilenet_v1 '
                    '(the released MobileNet checkpoints).')
    elif architecture != 'resnet' and ('bottleneck_' in present or 'residual_' in present):
      advice.append('The checkpoint is a ResNet: use --model_architecture=resnet.')
    elif architecture == 'resnet' and 'block_group' in present and any(
        'block_group' in name for name in missing):
      advice.append('The checkpoint\'s ResNet has other blocks: check --resnet_depth.')
    if wrong:
      advice.append('Shapes differ: check --width, --resnet_depth, --expansion_factor and '
                    '--num_label_classes.')
    return advice

  return hints
