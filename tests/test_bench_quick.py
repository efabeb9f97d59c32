"""Every benchmark in bench/ runs in its --quick mode and writes its JSON and table.

Only that they run and report what they promise is checked; their timings are never
asserted (the machine running the tests is shared and noisy).
"""

import json
import os
import subprocess
import sys


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
  result, _ = run_quick('step_overhead.py', tmp_path)
  for model in ('mlp', 'resnet50'):
    numbers = result['models'][model]
    for key in ('dense_ms', 'static_ms', 'rigl_ms_median', 'rigl_update_ms',
                'rigl_ms_amortized', 'ratio_amortized'):
      assert numbers[key] > 0, key


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
  assert methods == {'dense', 'static', 'set', 'snfs', 'rigl', 'snip', 'dnw', 'pruning'}
  for run in result['runs']:
    assert 0.0 <= run['accuracy'] <= 1.0
  assert plot.read_bytes().startswith(b'\x89PNG')
  assert 'rigl' in stdout


def test_vs_rigl_torch_quick(tmp_path):
  result, _ = run_quick('vs_rigl_torch.py', tmp_path)
  assert set(result['summary']) == {'ours', 'ours_per_step', 'rigl_torch'}
  assert result['time_ratio'] > 0
  for numbers in result['summary'].values():
    assert abs(numbers['sparsity'] - 0.9) < 0.01
