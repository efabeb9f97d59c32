"""Every gin file in configs/ parses and sets the flags its name promises; gin errors."""

import glob
import logging
import os
import re
import subprocess
import sys

import pytest

from rigl import script_flags
from rigl.char_lm import char_lm_train_eval
from rigl.cifar_resnet import resnet_train_eval
from rigl.imagenet_resnet import imagenet_train_eval
from rigl.mnist import mnist_train_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '*.gin'))
                 if not p.endswith('_base.gin'))
METHODS = {'rigl': 'rigl', 'set': 'set', 'snfs': 'momentum', 'static': 'scratch',
           'snip': 'snip', 'prune': 'prune'}
SPARSITIES = {'50': 0.5, '80': 0.8, '90': 0.9, '95': 0.95, '965': 0.965, '99': 0.99,
              '98': 0.98}
DISTRIBUTIONS = {'erk': 'erdos_renyi_kernel', 'uniform': 'random'}


def expected_flags(name):
  """(script module, {flag: value}) that a config's file name promises."""
  match = re.fullmatch(r'imagenet_resnet50_(\w+?)_(erk|uniform)_(\d+)_(\d+)x', name)
  if match:
    method, dist, s, mult = match.groups()
    return imagenet_train_eval, {
        'model_architecture': 'resnet', 'resnet_depth': 50, 'train_batch_size': 4096,
        'train_steps': 32000, 'training_method': METHODS[method],
        'mask_init_method': DISTRIBUTIONS[dist], 'end_sparsity': SPARSITIES[s],
        # The README: uniform keeps the first layer dense, and so does ERK at 99%.
        'first_layer_sparsity': 0. if dist == 'uniform' or s == '99' else -1.,
        'training_steps_multiplier': float(mult), 'drop_fraction': 0.3,
        'drop_fraction_anneal': 'cosine', 'maskupdate_frequency': 100,
        'maskupdate_end_step': 25000, 'label_smoothing': 0.1}
  match = re.fullmatch(r'imagenet_(mobilenet_v[12])_rigl_(erk|uniform)_90_(\d+)x', name)
  if match:
    arch, dist, mult = match.groups()
    return imagenet_train_eval, {
        'model_architecture': arch, 'training_method': 'rigl', 'end_sparsity': 0.9,
        'mask_init_method': DISTRIBUTIONS[dist], 'train_batch_size': 4096,
        'training_steps_multiplier': float(mult), 'train_steps': 32000}
  match = re.fullmatch(r'cifar_wrn22_2_(\w+?)_erk_(\d+)(_2x)?', name)
  if match:
    method, s, twice = match.groups()
    return resnet_train_eval, {
        'resnet_depth': 22, 'resnet_width': 2, 'training_method': METHODS[method],
        'end_sparsity': SPARSITIES[s], 'mask_init_method': 'erdos_renyi_kernel',
        'training_steps_multiplier': 2. if twice else 1., 'max_steps': 97656,
        'batch_size': 128, 'drop_fraction_anneal': 'cosine', 'maskupdate_end_step': 75000}
  match = re.fullmatch(r'char_lm_(dense|static|set|snfs|rigl|prune)_75_(\d)x', name)
  if match:
    method, mult = match.groups()
    # Appendix I of the paper, and its extended runs.
    return char_lm_train_eval, {
        'training_method': 'baseline' if method == 'dense' else METHODS[method],
        'end_sparsity': 0.75, 'mask_init_method': 'random', 'embedding_size': 128,
        'gru_units': 512, 'readout_units': ['256', '128'], 'tie_embedding': True,
        'sequence_length': 512, 'batch_size': 32, 'learning_rate': 7e-4, 'l2': 5e-4,
        'clip_norm': 10.0, 'train_steps': 200000, 'training_steps_multiplier': float(mult),
        'maskupdate_frequency': 100, 'maskupdate_end_step': 200000, 'drop_fraction': 0.1,
        'drop_fraction_anneal': 'cosine', 'sparsity_begin_step': 50000,
        'sparsity_end_step': 150000, 'pruning_frequency': 1000}
  if name == 'char_lm_offline':
    return char_lm_train_eval, {
        'embedding_size': 32, 'gru_units': 128, 'readout_units': ['64', '32'],
        'sequence_length': 64, 'batch_size': 16, 'train_steps': 2000, 'end_sparsity': 0.75,
        'mask_init_method': 'random', 'drop_fraction': 0.1, 'maskupdate_end_step': 2000}
  match = re.fullmatch(r'mnist_(\w+)_98', name)
  if match:
    return mnist_train_eval, {'training_method': METHODS[match.group(1)],
                              'end_sparsity': 0.98, 'num_epochs': 200}
  raise AssertionError(f'configs/{name}.gin follows no known naming pattern')


def resolve(module, *argv):
  module.FLAGS.unparse_flags()
  try:
    script_flags.parse(module.FLAGS, ['script', *argv], module.SCRIPT_NAME)
    return script_flags.effective_flags(module.FLAGS)
  finally:
    module.FLAGS.unparse_flags()


def test_the_papers_setups_are_there():
  names = {os.path.basename(p)[:-4] for p in CONFIGS}
  for method in METHODS:
    for dist in DISTRIBUTIONS:
      for s in ('80', '90'):
        assert f'imagenet_resnet50_{method}_{dist}_{s}_1x' in names
    for s in ('50', '80', '90', '95'):
      assert {f'cifar_wrn22_2_{method}_erk_{s}', f'cifar_wrn22_2_{method}_erk_{s}_2x'} <= names
  for dist in DISTRIBUTIONS:
    for s in ('80', '90', '95', '965'):
      assert f'imagenet_resnet50_rigl_{dist}_{s}_5x' in names
  assert {f'imagenet_resnet50_rigl_erk_99_{m}x' for m in (5, 10, 40, 100)} <= names
  assert {'imagenet_mobilenet_v1_rigl_erk_90_10x', 'imagenet_mobilenet_v1_rigl_erk_90_50x',
          'imagenet_mobilenet_v1_rigl_uniform_90_100x', 'mnist_rigl_98'} <= names
  assert any(n.startswith('imagenet_mobilenet_v2') for n in names)
  assert {f'char_lm_{method}_75_{m}x' for method in ('dense', 'static', 'set', 'snfs', 'rigl',
                                                      'prune') for m in (1, 2, 3)} <= names


CHAR_LM_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'char_lm_*_75_*x.gin')))


@pytest.mark.parametrize('path', CHAR_LM_CONFIGS, ids=os.path.basename)
def test_char_lm_configs_say_the_paper_published_a_plot_only(path):
  header = open(path, encoding='utf-8').read().split('include', 1)[0]
  assert 'published its results as a plot only' in header.replace('\n# ', ' ')


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-4])
def test_config_resolves_to_the_flags_its_name_promises(path):
  module, expected = expected_flags(os.path.basename(path)[:-4])
  resolved = resolve(module, f'--gin_config={path}')
  for flag, value in expected.items():
    assert resolved[flag] == value, flag


def test_command_line_beats_gin_which_beats_the_default():
  path = os.path.join(ROOT, 'configs', 'cifar_wrn22_2_rigl_erk_90.gin')
  resolved = resolve(resnet_train_eval, f'--gin_config={path}', '--end_sparsity=0.5')
  assert resolved['end_sparsity'] == 0.5  # command line over gin's 0.9
  assert resolved['resnet_depth'] == 22  # gin over the default 16
  assert resolved['batch_size'] == 128 and resolved['seed'] == 0  # defaults
  bound = resolve(resnet_train_eval, f'--gin_config={path}',
                  '--gin_bindings=resnet_train_eval.seed = 7')
  assert bound['seed'] == 7


@pytest.mark.parametrize('argv, message', [
    (['--gin_config=configs/no_such.gin'], "'configs/no_such.gin': no such file"),
    (['--gin_bindings=resnet_train_eval.end_sparsty = 0.5'],
     "doesn't have a parameter named 'end_sparsty'"),
    (['--gin_bindings=resnet_train_eval.end_sparsity = = 0.5'], 'gin'),
    (['--gin_bindings=resnet_train_eval.training_method = "lottery"'],
     'training_method.*lottery'),
])
def test_bad_gin_fails_at_start_up_with_gins_message(argv, message):
  with pytest.raises(ValueError, match=message):
    resolve(resnet_train_eval, *argv)


def test_an_include_found_beside_the_config_logs_nothing(caplog):
  with caplog.at_level(logging.INFO):
    resolved = resolve(mnist_train_eval,
                       f'--gin_config={os.path.join(ROOT, "configs", "mnist_rigl_98.gin")}')
  assert resolved['batch_size'] == 100  # from the included mnist_base.gin
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_include_found_nowhere_is_named(tmp_path):
  config = tmp_path / 'run.gin'
  config.write_text("include 'no_such_base.gin'\n")
  with pytest.raises(ValueError, match=r'Unable to open file: no_such_base.gin\. Searched '
                     r'config paths: .*' + re.escape(str(tmp_path))):
    resolve(mnist_train_eval, f'--gin_config={config}')


def test_dry_run_prints_the_effective_flags_and_exits(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'rigl.cifar_resnet.resnet_train_eval',
       '--gin_config=configs/cifar_wrn22_2_set_erk_80_2x.gin', '--dry_run',
       f'--train_dir={tmp_path / "never"}'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3'),
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  printed = result.stdout[result.stdout.index('{'):]
  assert '"training_method": "set"' in printed and '"training_steps_multiplier": 2.0' in printed
  assert not (tmp_path / 'never').exists()
