"""Per-layer ResNet-50 sparsities found by STR (Kusupati et al., 2020).

STR ("Soft Threshold Weight Reparameterization for Learnable Sparsity",
https://arxiv.org/abs/2002.03231) learns a non-uniform sparsity per layer. Its
layer-wise table for ResNet-50 is reproduced here so that RigL and the other methods
can start from the same distribution (`--mask_init_method=str`). The numbers are the
paper's; layers use the PyTorch torchvision names of the paper and are mapped to the
TF1 mask names of the original code (and of its released checkpoints).

Public API, with the original module's names:
  REPORTED_SPARSITIES: the table, an 'Overall' row followed by 54 layer rows.
  _name_map_str(k): PyTorch layer name -> TF1 mask name
    ('conv1' -> 'resnet_model/initial_conv/mask:0').
  read_all(): {overall / 100: {TF1 mask name: layer sparsity in [0, 1]}}.
Additions for the Keras 3 code, whose masks need not carry the TF1 prefix and suffix:
  tf1_layer_name(k), overall_key(sparsity), layer_sparsities(overall),
  sparsity_of_mask(mask_name, overall).
"""

import collections
import re

# One row of the STR table. `sparsities` holds 16 percentages, one per trained STR
# model; column i of every row belongs to the model whose 'Overall' value is column i.
StrRow = collections.namedtuple('StrRow', ['name', 'params', 'flops', 'sparsities'])

# The 'Overall' row first, then the 54 masked layers in the paper's order (a block's
# downsample conv follows its conv3). #params of the layers sum to the overall
# #params; their #FLOPs sum to the overall #FLOPs less the 7*7*2048 of the global
# average pool.
REPORTED_SPARSITIES = tuple(StrRow(*row) for row in (
    ('Overall', 25502912, 4089284608,
     (79.55, 81.27, 87.70, 90.23, 90.55, 94.80, 95.03, 95.15,
      96.11, 96.53, 97.78, 98.05, 98.22, 98.79, 98.98, 99.10)),
    ('conv1', 9408, 118013952,
     (51.46, 51.40, 63.02, 59.80, 59.83, 64.87, 67.36, 66.96,
      72.11, 69.46, 73.29, 73.47, 72.05, 75.12, 76.12, 77.75)),
    ('layer1.0.conv1', 4096, 12845056,
     (69.36, 73.24, 87.57, 83.28, 85.18, 89.60, 91.41, 91.11,
      92.38, 91.75, 94.46, 94.51, 94.60, 95.95, 96.53, 96.51)),
    ('layer1.0.conv2', 36864, 115605504,
     (77.85, 76.26, 90.87, 89.48, 87.31, 94.79, 94.27, 95.04,
      95.69, 96.07, 97.36, 97.77, 98.35, 98.51, 98.59, 98.84)),
    ('layer1.0.conv3', 16384, 51380224,
     (74.81, 74.65, 86.52, 85.80, 85.25, 91.85, 92.78, 93.67,
      94.13, 94.69, 96.61, 97.03, 97.37, 98.04, 98.21, 98.47)),
    ('layer1.0.downsample.0', 16384, 51380224,
     (70.95, 72.96, 83.53, 83.34, 82.56, 89.13, 90.62, 90.17,
      91.83, 92.69, 95.48, 94.89, 95.68, 96.98, 97.56, 97.72)),
    ('layer1.1.conv1', 16384, 51380224,
     (80.27, 79.58, 89.82, 89.89, 88.51, 94.56, 96.64, 95.78,
      95.81, 96.81, 98.79, 98.90, 98.98, 99.13, 99.62, 99.47)),
    ('layer1.1.conv2', 36864, 115605504,
     (81.36, 80.95, 91.75, 90.60, 89.61, 94.70, 95.78, 96.18,
      96.42, 97.26, 98.65, 99.07, 99.40, 99.11, 99.31, 99.56)),
    ('layer1.1.conv3', 16384, 51380224,
     (84.45, 80.11, 91.22, 91.70, 90.21, 95.17, 97.05, 95.81,
      96.34, 97.23, 98.68, 98.76, 98.90, 99.16, 99.57, 99.46)),
    ('layer1.2.conv1', 16384, 51380224,
     (78.23, 79.79, 90.12, 88.07, 89.36, 94.62, 95.94, 94.74,
      96.23, 96.75, 97.96, 98.41, 98.72, 99.38, 99.35, 99.46)),
    ('layer1.2.conv2', 36864, 115605504,
     (76.01, 81.53, 91.06, 87.03, 88.27, 93.90, 95.63, 94.26,
      96.24, 96.11, 97.54, 98.27, 98.44, 99.32, 99.19, 99.39)),
    ('layer1.2.conv3', 16384, 51380224,
     (84.47, 83.28, 94.95, 90.99, 92.64, 95.76, 96.95, 96.01,
      96.87, 97.31, 98.38, 98.60, 98.72, 99.38, 99.27, 99.51)),
    ('layer2.0.conv1', 32768, 102760448,
     (73.74, 73.96, 86.78, 85.95, 85.90, 92.32, 94.79, 93.86,
      94.62, 95.64, 97.19, 98.22, 98.52, 98.48, 98.84, 98.92)),
    ('layer2.0.conv2', 147456, 115605504,
     (82.56, 85.70, 91.31, 93.91, 94.03, 97.54, 97.43, 97.65,
      98.38, 98.62, 99.24, 99.23, 99.40, 99.61, 99.67, 99.63)),
    ('layer2.0.conv3', 65536, 51380224,
     (84.70, 83.55, 93.04, 93.13, 92.13, 96.61, 97.37, 97.21,
      97.59, 98.14, 98.80, 98.95, 99.18, 99.29, 99.47, 99.43)),
    ('layer2.0.downsample.0', 131072, 102760448,
     (85.10, 87.66, 92.78, 94.96, 95.13, 98.07, 97.97, 98.15,
      98.70, 98.88, 99.37, 99.35, 99.40, 99.69, 99.68, 99.71)),
    ('layer2.1.conv1', 65536, 51380224,
     (85.42, 85.79, 94.04, 95.31, 94.94, 97.92, 98.53, 98.21,
      98.84, 99.06, 99.46, 99.53, 99.72, 99.78, 99.81, 99.80)),
    ('layer2.1.conv2', 147456, 115605504,
     (76.95, 82.75, 87.63, 91.50, 91.76, 95.59, 97.22, 96.07,
      97.32, 97.80, 98.24, 98.24, 98.60, 99.24, 99.66, 99.33)),
    ('layer2.1.conv3', 65536, 51380224,
     (84.76, 84.71, 93.10, 93.66, 93.23, 97.00, 98.18, 97.35,
      98.06, 98.41, 98.96, 99.21, 99.32, 99.55, 99.58, 99.59)),
    ('layer2.2.conv1', 65536, 51380224,
     (84.30, 85.34, 92.70, 94.61, 94.76, 97.72, 97.91, 98.21,
      98.54, 98.98, 99.24, 99.35, 99.50, 99.62, 99.63, 99.77)),
    ('layer2.2.conv2', 147456, 115605504,
     (84.28, 85.43, 92.99, 94.86, 94.90, 97.52, 97.21, 98.11,
      98.19, 99.04, 99.28, 99.37, 99.46, 99.63, 99.59, 99.72)),
    ('layer2.2.conv3', 65536, 51380224,
     (82.19, 84.21, 91.12, 93.38, 93.53, 96.89, 97.14, 97.59,
      97.77, 98.66, 98.96, 99.15, 99.25, 99.49, 99.51, 99.57)),
    ('layer2.3.conv1', 65536, 51380224,
     (83.37, 84.41, 90.46, 93.26, 93.50, 96.71, 97.89, 96.99,
      98.14, 98.36, 99.10, 99.23, 99.33, 99.53, 99.75, 99.60)),
    ('layer2.3.conv2', 147456, 115605504,
     (82.83, 84.03, 91.44, 93.21, 93.25, 96.83, 98.02, 96.96,
      98.45, 98.30, 98.97, 99.06, 99.26, 99.31, 99.81, 99.68)),
    ('layer2.3.conv3', 65536, 51380224,
     (82.93, 85.65, 91.02, 94.14, 93.56, 97.20, 97.97, 97.04,
      98.16, 98.36, 98.88, 98.97, 99.20, 99.32, 99.67, 99.62)),
    ('layer3.0.conv1', 131072, 102760448,
     (76.63, 77.98, 85.99, 88.85, 88.60, 94.26, 95.07, 94.97,
      96.21, 96.59, 97.75, 98.04, 98.30, 98.72, 99.11, 99.06)),
    ('layer3.0.conv2', 589824, 115605504,
     (87.35, 88.68, 94.39, 96.14, 96.19, 98.51, 98.77, 98.72,
      99.11, 99.23, 99.53, 99.59, 99.64, 99.73, 99.80, 99.81)),
    ('layer3.0.conv3', 262144, 51380224,
     (81.22, 83.22, 90.58, 93.19, 93.05, 96.82, 97.38, 97.32,
      97.98, 98.28, 98.88, 99.03, 99.16, 99.39, 99.55, 99.53)),
    ('layer3.0.downsample.0', 524288, 102760448,
     (89.75, 90.99, 96.05, 97.20, 97.16, 98.96, 99.21, 99.20,
      99.50, 99.58, 99.78, 99.82, 99.86, 99.91, 99.94, 99.93)),
    ('layer3.1.conv1', 262144, 51380224,
     (85.88, 87.35, 93.43, 95.36, 96.12, 98.64, 98.77, 98.87,
      99.22, 99.33, 99.64, 99.67, 99.72, 99.82, 99.88, 99.84)),
    ('layer3.1.conv2', 589824, 115605504,
     (85.06, 86.24, 92.74, 95.06, 95.30, 98.09, 98.28, 98.36,
      98.75, 99.08, 99.46, 99.48, 99.54, 99.69, 99.76, 99.76)),
    ('layer3.1.conv3', 262144, 51380224,
     (84.34, 86.79, 92.15, 94.84, 94.90, 97.75, 98.15, 98.11,
      98.56, 98.94, 99.30, 99.36, 99.45, 99.65, 99.79, 99.70)),
    ('layer3.2.conv1', 262144, 51380224,
     (87.51, 89.15, 94.15, 96.77, 96.46, 98.81, 98.83, 98.96,
      99.19, 99.44, 99.67, 99.71, 99.74, 99.82, 99.85, 99.89)),
    ('layer3.2.conv2', 589824, 115605504,
     (87.15, 88.67, 94.09, 95.59, 96.14, 98.86, 98.69, 98.91,
      99.21, 99.20, 99.64, 99.72, 99.76, 99.85, 99.84, 99.90)),
    ('layer3.2.conv3', 262144, 51380224,
     (84.86, 86.90, 92.40, 94.99, 94.99, 98.19, 98.19, 98.42,
      98.76, 98.97, 99.42, 99.56, 99.62, 99.76, 99.75, 99.88)),
    ('layer3.3.conv1', 262144, 51380224,
     (86.62, 89.46, 94.06, 96.08, 95.88, 98.70, 98.71, 98.77,
      99.01, 99.27, 99.58, 99.66, 99.69, 99.83, 99.87, 99.87)),
    ('layer3.3.conv2', 589824, 115605504,
     (86.52, 87.97, 93.56, 96.10, 96.11, 98.70, 98.82, 98.89,
      99.19, 99.31, 99.68, 99.73, 99.77, 99.88, 99.87, 99.93)),
    ('layer3.3.conv3', 262144, 51380224,
     (84.19, 86.81, 92.32, 94.94, 94.91, 98.20, 98.37, 98.43,
      98.82, 99.00, 99.51, 99.57, 99.64, 99.81, 99.81, 99.87)),
    ('layer3.4.conv1', 262144, 51380224,
     (85.85, 88.40, 93.55, 95.49, 95.86, 98.35, 98.44, 98.55,
      98.79, 98.96, 99.54, 99.59, 99.60, 99.82, 99.86, 99.87)),
    ('layer3.4.conv2', 589824, 115605504,
     (85.96, 87.38, 93.27, 95.66, 95.63, 98.41, 98.58, 98.56,
      99.19, 99.26, 99.64, 99.69, 99.67, 99.87, 99.90, 99.92)),
    ('layer3.4.conv3', 262144, 51380224,
     (83.45, 85.76, 91.75, 94.49, 94.35, 97.67, 98.09, 97.99,
      98.65, 98.94, 99.49, 99.52, 99.48, 99.77, 99.86, 99.85)),
    ('layer3.5.conv1', 262144, 51380224,
     (83.33, 85.77, 91.79, 95.09, 94.24, 97.46, 97.89, 97.92,
      98.71, 98.90, 99.35, 99.52, 99.58, 99.76, 99.79, 99.83)),
    ('layer3.5.conv2', 589824, 115605504,
     (84.98, 86.67, 92.48, 94.92, 95.13, 97.88, 98.14, 98.32,
      98.91, 99.00, 99.44, 99.58, 99.69, 99.80, 99.83, 99.87)),
    ('layer3.5.conv3', 262144, 51380224,
     (79.78, 82.23, 89.39, 93.14, 92.76, 96.59, 97.04, 97.30,
      98.10, 98.41, 99.03, 99.25, 99.44, 99.61, 99.71, 99.75)),
    ('layer4.0.conv1', 524288, 102760448,
     (77.83, 79.61, 87.11, 90.32, 90.64, 95.39, 95.84, 95.92,
      97.17, 97.35, 98.36, 98.60, 98.83, 99.20, 99.37, 99.42)),
    ('layer4.0.conv2', 2359296, 115605504,
     (86.18, 88.00, 93.53, 95.66, 95.78, 98.31, 98.47, 98.55,
      99.08, 99.16, 99.54, 99.63, 99.69, 99.81, 99.85, 99.86)),
    ('layer4.0.conv3', 1048576, 51380224,
     (78.43, 80.48, 87.85, 91.14, 91.27, 96.00, 96.40, 96.47,
      97.53, 97.92, 98.81, 99.00, 99.15, 99.45, 99.57, 99.61)),
    ('layer4.0.downsample.0', 2097152, 102760448,
     (88.49, 89.98, 95.03, 96.79, 96.90, 98.91, 99.06, 99.11,
      99.45, 99.51, 99.77, 99.82, 99.85, 99.92, 99.94, 99.94)),
    ('layer4.1.conv1', 1048576, 51380224,
     (82.07, 84.02, 90.34, 93.69, 93.72, 97.15, 97.56, 97.76,
      98.45, 98.75, 99.27, 99.36, 99.54, 99.67, 99.76, 99.80)),
    ('layer4.1.conv2', 2359296, 115605504,
     (83.42, 85.23, 91.16, 93.98, 93.93, 97.26, 97.58, 97.71,
      98.36, 98.67, 99.25, 99.34, 99.50, 99.68, 99.76, 99.80)),
    ('layer4.1.conv3', 1048576, 51380224,
     (78.08, 79.96, 86.66, 90.48, 90.22, 95.22, 95.76, 95.89,
      96.88, 97.65, 98.70, 98.85, 99.13, 99.45, 99.58, 99.66)),
    ('layer4.2.conv1', 1048576, 51380224,
     (76.34, 77.93, 84.98, 87.57, 88.47, 93.90, 93.87, 94.16,
      95.55, 95.91, 97.66, 97.97, 98.15, 98.88, 99.08, 99.22)),
    ('layer4.2.conv2', 2359296, 115605504,
     (73.57, 74.97, 82.32, 84.37, 86.01, 91.92, 91.66, 92.22,
      94.02, 94.16, 96.65, 97.13, 97.29, 98.44, 98.74, 99.00)),
    ('layer4.2.conv3', 1048576, 51380224,
     (68.78, 70.38, 78.11, 80.29, 81.73, 89.64, 89.43, 89.65,
      91.40, 92.65, 96.02, 96.72, 96.93, 98.47, 98.83, 99.15)),
    ('fc', 2048000, 2048000,
     (50.65, 52.46, 60.48, 64.50, 65.12, 75.20, 75.73, 75.80,
      78.57, 80.69, 85.96, 87.26, 88.03, 91.11, 92.15, 92.87)),
))

OVERALL_ROW = REPORTED_SPARSITIES[0]
LAYER_ROWS = REPORTED_SPARSITIES[1:]
# Overall sparsity (percent) of each of the 16 columns.
OVERALL_SPARSITIES = OVERALL_ROW.sparsities

# Two columns differ by at least 0.12 points, so this only absorbs float round-off:
# 98.05 / 100 is 0.9804999999999999, not the literal 0.9805.
_KEY_TOLERANCE = 1e-6

_DOWNSAMPLE_RE = re.compile(r'layer(\d)\.0\.downsample\.0')
_CONV_RE = re.compile(r'layer(\d)\.(\d)\.conv(\d)')
_MASK_SUFFIX_RE = re.compile(r'/mask(?::\d+)?$')


def tf1_layer_name(k):
  """Bare TF1 layer name (no prefix or mask suffix) of PyTorch layer `k`.

  For example 'layer1.0.conv1' -> 'bottleneck_1_block_group_projection_block_group1'.
  The original ResNet builder names a group's first (projection) block
  'block_group_projection_block_group{g}' and the others 'block_group{g}_{b}_1'.
  """
  if k == 'conv1':
    return 'initial_conv'
  if k == 'fc':
    return 'final_dense'
  match = _DOWNSAMPLE_RE.fullmatch(k)
  if match:
    return 'bottleneck_projection_block_group_projection_block_group%s' % (
        match.group(1))
  match = _CONV_RE.fullmatch(k)
  if match is None:
    # Fail loudly: a silently unmatched name would leave a mask without sparsity.
    raise ValueError('Not a ResNet-50 layer of the STR table: %r' % (k,))
  group, block, conv = match.groups()
  if block == '0':
    return 'bottleneck_%s_block_group_projection_block_group%s' % (conv, group)
  return 'bottleneck_%s_block_group%s_%s_1' % (conv, group, block)


def _name_map_str(k):
  """TF1 mask name of PyTorch layer `k`: 'conv1' -> 'resnet_model/initial_conv/mask:0'."""
  return 'resnet_model/%s/mask:0' % tf1_layer_name(k)


def read_all():
  """All 16 distributions, as the original code exposes them.

  Returns:
    A `defaultdict(dict)` keyed by overall sparsity / 100 (computed as the percentage
    divided by 100, so 98.05 gives 0.9804999999999999, the same float as the original
    code); each value maps TF1 mask names to layer sparsity / 100.
  """
  table = collections.defaultdict(dict)
  for i, overall in enumerate(OVERALL_SPARSITIES):
    for row in LAYER_ROWS:
      table[overall / 100][_name_map_str(row.name)] = row.sparsities[i] / 100
  return table


def _column(overall):
  """Index of the column whose overall sparsity (a fraction) is `overall`."""
  for i, pct in enumerate(OVERALL_SPARSITIES):
    if abs(pct / 100 - overall) <= _KEY_TOLERANCE:
      return i
  raise ValueError(
      'sparsity: %s is not defined in the STR table; defined overall sparsities are '
      '%s.' % (overall, ', '.join('%.4f' % (p / 100) for p in OVERALL_SPARSITIES)))


def overall_key(sparsity):
  """The `read_all()` key for an overall sparsity given as a fraction, e.g. 0.9805.

  Lets callers that hold a flag value like 0.9805 index `read_all()`, whose key for
  that column is 98.05 / 100. Raises ValueError for a sparsity not in the table.
  """
  return OVERALL_SPARSITIES[_column(sparsity)] / 100


def layer_sparsities(overall):
  """{bare TF1 layer name: sparsity in [0, 1]} of the column at `overall` (a fraction).

  Keys have no 'resnet_model/' prefix and no '/mask:0' suffix (e.g. 'initial_conv'),
  so they match Keras 3 layers named after the TF1 scopes. Raises ValueError for an
  overall sparsity not in the table.
  """
  i = _column(overall)
  return {tf1_layer_name(row.name): row.sparsities[i] / 100 for row in LAYER_ROWS}


def sparsity_of_mask(mask_name, overall):
  """STR sparsity of a mask named '<...>/<layer>/mask[:N]' or just '<layer>'.

  Only the layer's own name counts, so 'resnet_model/initial_conv/mask:0' (TF1) and a
  Keras path such as 'resnet50/initial_conv/mask' both give the 'initial_conv' value.
  Raises ValueError for a layer the table does not cover.
  """
  layer = _MASK_SUFFIX_RE.sub('', mask_name).rsplit('/', 1)[-1]
  table = layer_sparsities(overall)
  if layer not in table:
    raise ValueError('The STR table has no ResNet-50 layer %r (from mask %r).' %
                   (layer, mask_name))
  return table[layer]
