"""Tests of the STR ResNet-50 sparsity table and its name mapping."""

import pytest

from rigl import str_sparsities

# Overall sparsities (percent) of the 16 STR ResNet-50 models, as the paper reports.
EXPECTED_OVERALL = (79.55, 81.27, 87.70, 90.23, 90.55, 94.80, 95.03, 95.15, 96.11,
                    96.53, 97.78, 98.05, 98.22, 98.79, 98.98, 99.10)
BLOCKS_PER_GROUP = (3, 4, 6, 3)  # ResNet-50


def _expected_pytorch_names():
  """The 54 masked torchvision ResNet-50 layers, in the paper's order."""
  names = ['conv1']
  for g, n_blocks in enumerate(BLOCKS_PER_GROUP, start=1):
    for b in range(n_blocks):
      names += ['layer%d.%d.conv%d' % (g, b, l) for l in (1, 2, 3)]
      if b == 0:
        names.append('layer%d.0.downsample.0' % g)
  names.append('fc')
  return names


def _kernel_sizes():
  """{PyTorch name: number of kernel weights} of ResNet-50 (no biases)."""
  sizes = {'conv1': 7 * 7 * 3 * 64, 'fc': 2048 * 1000}
  in_channels = 64
  for g, n_blocks in enumerate(BLOCKS_PER_GROUP, start=1):
    width = 64 * 2**(g - 1)
    out = 4 * width
    for b in range(n_blocks):
      block_in = in_channels if b == 0 else out
      sizes['layer%d.%d.conv1' % (g, b)] = block_in * width
      sizes['layer%d.%d.conv2' % (g, b)] = 3 * 3 * width * width
      sizes['layer%d.%d.conv3' % (g, b)] = width * out
    sizes['layer%d.0.downsample.0' % g] = in_channels * out
    in_channels = out
  return sizes


def _tf1_mask_names_in_creation_order():
  """The 54 mask names of the original TF1 ResNet-50 (spec §3.11), built from its rules."""
  names = ['initial_conv']
  for g, n_blocks in enumerate(BLOCKS_PER_GROUP, start=1):
    names.append('bottleneck_projection_block_group_projection_block_group%d' % g)
    names += ['bottleneck_%d_block_group_projection_block_group%d' % (l, g)
              for l in (1, 2, 3)]
    for b in range(1, n_blocks):
      names += ['bottleneck_%d_block_group%d_%d_1' % (l, g, b) for l in (1, 2, 3)]
  names.append('final_dense')
  return ['resnet_model/%s/mask:0' % n for n in names]


def test_table_has_overall_and_54_layers_with_16_columns():
  rows = str_sparsities.REPORTED_SPARSITIES
  assert len(rows) == 55
  assert rows[0].name == 'Overall'
  assert [r.name for r in rows[1:]] == _expected_pytorch_names()
  for row in rows:
    assert len(row.sparsities) == 16, row.name
    assert all(0 < s < 100 for s in row.sparsities), row.name
  assert str_sparsities.OVERALL_SPARSITIES == EXPECTED_OVERALL
  assert len(str_sparsities.LAYER_ROWS) == 54


def test_params_match_resnet50_kernels_and_sum_to_overall():
  sizes = _kernel_sizes()
  layers = str_sparsities.LAYER_ROWS
  for row in layers:
    assert row.params == sizes[row.name], row.name
  overall = str_sparsities.OVERALL_ROW
  assert sum(r.params for r in layers) == overall.params == 25502912
  # The overall #FLOPs also count the global average pool over the 7x7x2048 features.
  assert sum(r.flops for r in layers) + 7 * 7 * 2048 == overall.flops


def test_parameter_weighted_layer_sparsity_matches_overall():
  layers = str_sparsities.LAYER_ROWS
  total = sum(r.params for r in layers)
  for i, overall in enumerate(str_sparsities.OVERALL_SPARSITIES):
    weighted = sum(r.params * r.sparsities[i] for r in layers) / total
    # The table's percentages have two decimals; the largest gap this gives is
    # 0.006 points (the 95.03 column), so 0.01 points is a tight, honest bound.
    assert abs(weighted - overall) < 0.01, (overall, weighted)


@pytest.mark.parametrize('pytorch_name, tf1_name', [
    ('conv1', 'resnet_model/initial_conv/mask:0'),
    ('fc', 'resnet_model/final_dense/mask:0'),
    ('layer1.0.downsample.0',
     'resnet_model/bottleneck_projection_block_group_projection_block_group1/mask:0'),
    ('layer4.0.downsample.0',
     'resnet_model/bottleneck_projection_block_group_projection_block_group4/mask:0'),
    ('layer1.0.conv1',
     'resnet_model/bottleneck_1_block_group_projection_block_group1/mask:0'),
    ('layer3.0.conv2',
     'resnet_model/bottleneck_2_block_group_projection_block_group3/mask:0'),
    ('layer1.1.conv1', 'resnet_model/bottleneck_1_block_group1_1_1/mask:0'),
    ('layer3.5.conv3', 'resnet_model/bottleneck_3_block_group3_5_1/mask:0'),
    ('layer4.2.conv2', 'resnet_model/bottleneck_2_block_group4_2_1/mask:0'),
])
def test_name_map_examples(pytorch_name, tf1_name):
  assert str_sparsities._name_map_str(pytorch_name) == tf1_name
  assert str_sparsities.tf1_layer_name(pytorch_name) == (
      tf1_name[len('resnet_model/'):-len('/mask:0')])


def test_name_map_covers_the_tf1_resnet50_masks():
  mapped = [str_sparsities._name_map_str(r.name) for r in str_sparsities.LAYER_ROWS]
  assert len(set(mapped)) == 54
  assert set(mapped) == set(_tf1_mask_names_in_creation_order())


@pytest.mark.parametrize('bad', ['conv2', 'layer1.0.conv4x', 'layer1.0.downsample.1',
                                 'layer5'])
def test_name_map_rejects_unknown_layers(bad):
  with pytest.raises(ValueError):
    str_sparsities.tf1_layer_name(bad)


def test_read_all_keys_are_overall_over_100():
  table = str_sparsities.read_all()
  # Same float keys as the original (percentage / 100), e.g. 0.9804999999999999.
  assert set(table) == {p / 100 for p in EXPECTED_OVERALL}
  assert 0.7955 in table and 0.991 in table
  expected_names = set(_tf1_mask_names_in_creation_order())
  for key, layers in table.items():
    assert set(layers) == expected_names, key
    assert all(0 < s < 1 for s in layers.values())


def test_read_all_values():
  table = str_sparsities.read_all()
  assert table[0.7955]['resnet_model/initial_conv/mask:0'] == pytest.approx(0.5146)
  assert table[0.991]['resnet_model/final_dense/mask:0'] == pytest.approx(0.9287)
  assert table[0.877][
      'resnet_model/bottleneck_2_block_group_projection_block_group3/mask:0'] == (
          pytest.approx(0.9439))
  assert table[0.9611]['resnet_model/bottleneck_3_block_group4_2_1/mask:0'] == (
      pytest.approx(0.9140))


def test_overall_key_absorbs_float_round_off():
  table = str_sparsities.read_all()
  # 98.05 / 100 != 0.9805 in floating point, so an exact lookup of the flag value
  # misses; overall_key finds the column's key.
  assert 0.9805 not in table
  assert str_sparsities.overall_key(0.9805) in table
  for p in EXPECTED_OVERALL:
    assert str_sparsities.overall_key(round(p / 100, 4)) == p / 100
  with pytest.raises(ValueError, match='not defined'):
    str_sparsities.overall_key(0.9)


def test_layer_sparsities_match_read_all_without_prefix_and_suffix():
  table = str_sparsities.read_all()
  for p in EXPECTED_OVERALL:
    bare = str_sparsities.layer_sparsities(round(p / 100, 4))
    assert len(bare) == 54
    assert {'resnet_model/%s/mask:0' % k: v for k, v in bare.items()} == table[p / 100]
  assert str_sparsities.layer_sparsities(0.9805)['initial_conv'] == pytest.approx(0.7347)
  with pytest.raises(ValueError):
    str_sparsities.layer_sparsities(0.5)


@pytest.mark.parametrize('mask_name', [
    'resnet_model/bottleneck_1_block_group2_3_1/mask:0',
    'bottleneck_1_block_group2_3_1/mask',
    'resnet50/bottleneck_1_block_group2_3_1/mask',
    'bottleneck_1_block_group2_3_1',
])
def test_sparsity_of_mask_accepts_tf1_and_keras_names(mask_name):
  # layer2.3.conv1 in the 90.23 column.
  assert str_sparsities.sparsity_of_mask(mask_name, 0.9023) == pytest.approx(0.9326)


def test_sparsity_of_mask_rejects_unknown_layer():
  with pytest.raises(ValueError):
    str_sparsities.sparsity_of_mask('resnet_model/conv_preds/mask:0', 0.9023)

