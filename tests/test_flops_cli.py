"""Tests of rigl.flops: published ResNet-50 figures from training flags, and the command."""

import json
import os
import subprocess
import sys

import pytest

from rigl import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resnet_run(**kwargs):
  return flops.count_run(model_architecture='resnet', training_method='rigl', **kwargs)


@pytest.fixture(scope='module')
def erk_80_5x():
  return _resnet_run(mask_init_method='erdos_renyi_kernel', end_sparsity=0.8,
                     first_layer_sparsity=-1, training_steps_multiplier=5)


def test_published_dense_resnet_50(erk_80_5x):
  assert f'{erk_80_5x["dense_inference_flops"]:.1e}' == '8.2e+09'
  assert f'{erk_80_5x["dense_size_mb"]:.3f}' == '102.122'


def test_published_erk_80_5x(erk_80_5x):
  assert f'{erk_80_5x["inference_flops_ratio"]:.2f}' == '0.42'
  assert f'{erk_80_5x["size_mb"]:.3f}' == '23.683'
  assert f'{erk_80_5x["training_flops_ratio"]:.2f}' == '2.09'
  assert f'{erk_80_5x["real_sparsity"]:.3f}' == '0.800'


def test_published_erk_99_40x_with_dense_first_layer():
  stats = _resnet_run(mask_init_method='erdos_renyi_kernel', end_sparsity=0.99,
                      first_layer_sparsity=0, training_steps_multiplier=40)
  assert (f'{stats["training_flops_ratio"]:.2f}', f'{stats["inference_flops_ratio"]:.2f}',
          f'{stats["size_mb"]:.3f}') == ('2.32', '0.05', '4.354')


def test_baseline_is_the_dense_model():
  stats = flops.count_run(model_architecture='mnist_fc', training_method='baseline',
                          training_steps_multiplier=2)
  assert stats['inference_flops'] == stats['dense_inference_flops']
  assert stats['training_flops_ratio'] == 2
  assert stats['real_sparsity'] == 0


def test_mnist_fc_counts_by_hand():
  # 784-300-100-10 at uniform 0.5 with layer3 unmasked (dense):
  # FLOPs = 2 * kept weights + one ReLU per output.
  stats = flops.count_run(model_architecture='mnist_fc', mask_init_method='random',
                          end_sparsity=0.5, first_layer_sparsity=-1,
                          last_layer_sparsity=0, training_method='static')
  kept = 784 * 300 / 2 + 300 * 100 / 2 + 100 * 10
  assert stats['inference_flops'] == 2 * kept + 410
  assert stats['training_flops_ratio'] == stats['inference_flops_ratio']


def test_first_layer_of_mobilenet_is_never_masked():
  # -1 is accepted and changes nothing (the README's ERK MobileNet command gives it).
  dense_first = flops.count_run(model_architecture='mobilenet_v1', first_layer_sparsity=0)
  assert flops.count_run(model_architecture='mobilenet_v1',
                         first_layer_sparsity=-1) == dense_first
  with pytest.raises(ValueError, match='mobilenet_v1 never masks its first layer'):
    flops.count_run(model_architecture='mobilenet_v1', first_layer_sparsity=0.5)


@pytest.mark.parametrize('value', [2., -0.5, 1.])
def test_bad_layer_sparsity_is_a_value_error(value):
  with pytest.raises(ValueError, match=f'--last_layer_sparsity={value!r}.*-1'):
    flops.count_run(model_architecture='mnist_fc', last_layer_sparsity=value)


def test_unknown_architecture_is_a_value_error():
  with pytest.raises(ValueError, match="'vgg_17'.*mobilenet_v1"):
    flops.count_run(model_architecture='vgg_17')


def _command(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'rigl.flops', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_prints_json():
  result = _command('--model_architecture=mnist_fc', '--format=json',
                    '--end_sparsity=0.9', '--mask_init_method=random')
  assert result.returncode == 0, result.stderr
  stats = json.loads(result.stdout)
  assert set(stats) == {'inference_flops', 'dense_inference_flops', 'inference_flops_ratio',
                        'training_flops_ratio', 'size_mb', 'dense_size_mb', 'real_sparsity'}


@pytest.mark.parametrize('args,message', [
    (['--model_architecture=vgg_17'], 'vgg_17'),
    (['--model_architecture=mnist_fc', '--first_layer_sparsity=3'],
     '--first_layer_sparsity=3.0 is not allowed'),
])
def test_command_rejects_bad_flags_without_a_traceback(args, message):
  result = _command(*args)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_help_into_a_pipe_whose_reader_left_is_quiet(run_into_a_closed_pipe):
  result = run_into_a_closed_pipe(
      [sys.executable, '-m', 'rigl.flops', '--help'], cwd=ROOT, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and 'BrokenPipeError' not in result.stderr


def test_table_has_the_readme_columns():
  stats = {'inference_flops': 3.4e9, 'dense_inference_flops': 8.2023e9,
           'inference_flops_ratio': 0.4153, 'training_flops_ratio': 2.0861,
           'size_mb': 23.68342, 'dense_size_mb': 102.121888, 'real_sparsity': 0.8000003}
  table = flops.format_table(stats, 'resnet', 'erdos_renyi_kernel', 0.8, 'rigl', 5.)
  rows = [[cell.strip() for cell in line.strip('|').split('|')]
          for line in table.splitlines()]
  assert rows[0][4:7] == ['Training FLOPs', 'Inference FLOPs', 'Model Size (MB)']
  assert rows[2] == ['resnet', '- (DENSE)', '0', 'dense 1x', '1.00x', '8.20e9', '102.122',
                     '0.000']
  assert rows[3] == ['resnet', 'ERK', '0.8', 'rigl 5x', '2.09x', '0.42x', '23.683', '0.800']


def test_custom_sparsity_map_as_the_mnist_script_sets_it():
  # The MNIST script: layer1 at end_sparsity, layer2 at 0.9 of it, layer3 masked but dense.
  custom = flops.parse_custom_sparsity_map(['layer2:0.5', 'layer3:0'])
  assert custom == {'layer2': 0.5, 'layer3': 0.}
  stats = flops.count_run(model_architecture='mnist_fc', mask_init_method='random',
                          end_sparsity=0.75, first_layer_sparsity=-1, training_method='set',
                          custom_sparsity_map=custom)
  kept = 784 * 300 / 4 + 300 * 100 / 2 + 100 * 10
  assert stats['inference_flops'] == 2 * kept + 410


def test_malformed_custom_sparsity_map_is_a_value_error():
  with pytest.raises(ValueError, match="'layer2=0.5' is not of the form layer:sparsity"):
    flops.parse_custom_sparsity_map(['layer2=0.5'])


@pytest.mark.parametrize('width', [float('nan'), float('inf')])
def test_width_must_be_finite(width):
  with pytest.raises(ValueError, match='--width must be a finite number'):
    flops.count_run(model_architecture='resnet', width=width)


def test_custom_map_cannot_sparsify_a_layer_the_script_keeps_dense():
  # The first layer of resnet is unmasked at --first_layer_sparsity=0.
  with pytest.raises(ValueError, match=r"\['initial_conv'\].*does not mask"):
    flops.count_run(model_architecture='resnet', first_layer_sparsity=0.,
                    custom_sparsity_map={'initial_conv': 0.5})
