"""Every benchmark in bench/ runs in its --quick mode and writes its JSON and table.

Only that they run and report what they promise is checked; their timings are never
asserted (the machine running the tests is shared and noisy).
"""

import json
import os
import subprocess
import sys

import pytest


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(script, tmp_path, *extra):
  out = tmp_path / 'result.json'
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3')
  completed = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', script), '--quick', f'--out={out}',
       *extra], capture_output=True, text=True, env=env, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert '|---|' in completed.stdout  # the markdown table
  assert (tmp_path / 'result.md').read_text().startswith('|')
  return json.loads(out.read_text()), completed.stdout


def test_step_overhead_quick(tmp_path):
  # ResNet's build and trace would double the run; the MLP and transformer take the
  # same timing code.
  result, _ = run_quick('step_overhead.py', tmp_path, '--models=mlp,transformer')
  assert set(result['models']) == {'mlp', 'transformer'}
  for model, variants in (('mlp', 5), ('transformer', 5)):
    numbers = result['models'][model]
    assert len(numbers) == variants + 2  # and the rounds and window
    for variant in ('dense', 'dense_again', 'static', 'set', 'rigl'):
      assert numbers[variant]['ms_amortized'] > 0, variant
      assert numbers[variant]['ratio_amortized'] > 0, variant
    for variant in ('set', 'rigl'):  # one mask update per window was seen and timed
      assert numbers[variant]['update_ms'] > 0, variant


def test_mask_update_scaling_quick(tmp_path):
  result, _ = run_quick('mask_update_scaling.py', tmp_path)
  assert [r['size'] for r in result['single_layer']] == [10**4, 3 * 10**4]
  assert all(r['update_ms'] > 0 for r in result['single_layer'])
  assert isinstance(result['fitted_exponent'], float)
  assert result['resnet50']['update_fraction_of_100_steps'] > 0


def test_accuracy_table_quick(tmp_path):
  plot = tmp_path / 'plot.png'
  result, stdout = run_quick('accuracy_table.py', tmp_path, f'--plot={plot}')
  methods = {run['method'] for run in result['runs']}
  assert methods == {'dense', 'static', 'set', 'snfs', 'rigl', 'rigl_fan_in', 'srigl',
                     'srigl_0.95', 'rigl_2:4', 'snip', 'dnw', 'pruning'}
  for run in result['runs']:
    assert 0.0 <= run['accuracy'] <= 1.0
    if run['method'] in ('rigl_fan_in', 'srigl', 'srigl_0.95'):  # budgets rounded down
      assert 0.9 <= run['measured_sparsity'] < 0.91
  assert plot.read_bytes().startswith(b'\x89PNG')
  assert 'rigl' in stdout and 'Sparsity reached' in stdout


def test_vs_rigl_torch_quick(tmp_path):
  result, _ = run_quick('vs_rigl_torch.py', tmp_path)
  assert set(result['summary']) == {'ours', 'ours_per_step', 'rigl_torch'}
  assert result['time_ratio'] > 0
  for numbers in result['summary'].values():
    assert abs(numbers['sparsity'] - 0.9) < 0.01


@pytest.mark.parametrize('extra', [(), ('--jit_compile',)], ids=['graph', 'xla'])
def test_step_profile_quick(tmp_path, extra):
  result, _ = run_quick('step_profile.py', tmp_path, *extra)
  assert result['config']['jit_compile'] == bool(extra)
  assert set(result['steps']) == {'dense', 'dense_again', 'masked_layers', 'static',
                                  'set_never_due', 'rigl_never_due', 'set_untested',
                                  'rigl_untested'}
  assert all(v['ms'] > 0 and v['ratio'] > 0 for v in result['steps'].values())
  assert result['update']['update_ms'] > 0 and result['update']['layer1_top_mask_ms'] > 0


def test_sparse_execution_quick(tmp_path):
  result, _ = run_quick('sparse_execution.py', tmp_path)
  rows = result['rows']
  assert [(r['model'], r['sparsity']) for r in rows] == [('mnist_mlp', 0.9), ('wide_mlp', 0.9)]
  for row in rows:
    for key in ('dense_ms', 'masked_ms', 'sparse_ms', 'masked_update_ms', 'sparse_update_ms'):
      assert row[key] > 0, key
    # Sparse state is a fraction of the dense weights; masks add to the dense state.
    assert row['sparse_state_bytes'] < 0.5 * row['dense_state_bytes']
    assert row['masked_state_bytes'] > row['dense_state_bytes']
  mnist = rows[0]
  # 10% of the 266,200 weights kept, per layer rounded as the distribution rounds.
  assert abs(mnist['active_weights'] - 26620) <= 3


def test_export_sizes_quick(tmp_path):
  # The MNIST networks only: MobileNet's conversions take most of the time and the same
  # code.
  result, _ = run_quick('export_sizes.py', tmp_path, '--models=mnist_90,mnist_98')
  assert set(result['models']) == {'mnist_90', 'mnist_98'}
  for name, numbers in result['models'].items():
    sizes = numbers['sizes']
    # The sparse flatbuffer holds fewer bytes than the dense one, and more sparsity fewer.
    assert sizes['TFLite sparse']['bytes'] < sizes['TFLite dense']['bytes'], name
    assert numbers['tflite_dense_ms'] > 0 and numbers['tflite_sparse_ms'] > 0
  mnist = [result['models'][m]['sizes']['TFLite sparse']['bytes'] for m in ('mnist_90',
                                                                             'mnist_98')]
  assert mnist[1] < mnist[0]


def test_structured_quick(tmp_path):
  result, _ = run_quick('structured.py', tmp_path)
  rows = result['rows']
  assert [(r['model'], r['sparsity'], r['batch']) for r in rows] == [
      ('layer', 0.9, 1), ('layer', 0.9, 8), ('wide_mlp', 0.9, 1), ('wide_mlp', 0.9, 8)]
  for row in rows:
    assert set(row['tensorflow_ms']) == {'dense', 'masked', 'csr', 'condensed'}
    assert set(row['litert_ms']) == {'dense', 'sparse', 'condensed'}
    assert all(ms > 0 for ms in [*row['tensorflow_ms'].values(), *row['litert_ms'].values()])
    # Every variant computes the masked model's function.
    assert max(row['max_abs_difference_from_masked'].values()) < 1e-4
  for batch in ('1', '8'):
    assert result['choices'][batch]['loop, 8 slots a step, int16 (library: xla_loop)'] > 0
    assert all(ms > 0 for ms in result['choices'][batch].values())
  assert [c['conv'] for c in result['conv']] == ['1x1', '3x3 (patches)']
  assert all(c['tensorflow_ms']['condensed'] > 0 for c in result['conv'])


def test_char_lm_table_quick(tmp_path):
  plot = tmp_path / 'plot.png'
  result, stdout = run_quick('char_lm_table.py', tmp_path, f'--plot={plot}')
  assert {(run['method'], run['multiplier']) for run in result['runs']} == {
      ('rigl', 1.0), ('rigl', 2.0)}
  for run in result['runs']:
    assert 0 < run['valid_bpc'] < 9 and 0 < run['test_bpc'] < 9
    assert run['global_sparsity'] == 0.75
  # --train_steps=20 of the quick flags, times the multiplier.
  assert sorted(r['steps'] for r in result['runs']) == [20, 40]
  assert plot.read_bytes().startswith(b'\x89PNG')
  assert '| rigl | 2x |' in stdout
