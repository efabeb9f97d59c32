"""The README's commands and code, run as written (smaller where marked), against what it
says they print.

A block marked `<!-- readme-test: NAME -->` is run; the block after
`<!-- readme-output: NAME -->` is what the README says it printed. Timings and trained
accuracies are compared with a tolerance, everything determined by the flags exactly.
"""

import ast
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')


def _block(kind, name):
  text = open(README, encoding='utf-8').read()
  match = re.search(rf'<!-- readme-{kind}: {re.escape(name)} -->\n```[a-z]*\n(.*?)```',
                    text, re.S)
  assert match, f'README has no readme-{kind} block {name!r}'
  return match.group(1)


def _command(name):
  """The block's command, joined over backslash-newlines, without `pip install ... &&`."""
  command = _block('test', name).replace('\\\n', ' ')
  return shlex.split(command.split('&&')[-1])


def _run(args, tmp_path, timeout=900):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _with_output_dir(args, flag, path):
  """`args` with `--<flag>=` pointing into the test's directory."""
  return [f'--{flag}={path}' if a.startswith(f'--{flag}=') else a for a in args]


def _python_args(args):
  """`python -m x` / `python x.py` as this interpreter, paths from the repository."""
  assert args[0] == 'python', args
  rest = args[1:]
  if rest[0] != '-m':
    rest[0] = os.path.join(ROOT, rest[0])
  return [sys.executable] + rest


@pytest.fixture(scope='module')
def mnist_run(tmp_path_factory):
  """The Try-it command, as written but for the output directory."""
  out = tmp_path_factory.mktemp('try_it')
  args = _with_output_dir(_command('try-it'), 'output_dir', out / 'mnist_rigl')
  stdout = _run(_python_args(args), out)
  return out / 'mnist_rigl', stdout


def test_try_it_prints_what_the_readme_shows(mnist_run):
  run_dir, stdout = mnist_run
  printed = stdout.strip().splitlines()
  shown = _block('output', 'try-it').strip().splitlines()
  assert len(printed) == len(shown)
  pattern = r'rigl on mnist_5k: test accuracy ([0-9.]+) at step 4000 \(([0-9.]+) s of training\)'
  accuracy = float(re.fullmatch(pattern, printed[0]).group(1))
  assert accuracy == pytest.approx(float(re.fullmatch(pattern, shown[0]).group(1)), abs=0.01)
  assert printed[1:3] == shown[1:3]  # the sparsities and compressed shapes
  assert printed[3].replace(str(run_dir), '/tmp/mnist_rigl') == shown[3]


def test_export_of_the_try_it_run(mnist_run, tmp_path):
  run_dir, _ = mnist_run
  args = _with_output_dir(_command('export'), 'checkpoint', run_dir)
  args = _with_output_dir(args, 'output', tmp_path / 'mnist_rigl.tflite')
  printed = _run(_python_args(args), tmp_path).strip().splitlines()
  shown = _block('output', 'export').strip().splitlines()
  assert len(printed) == len(shown)
  assert printed[0].replace(str(tmp_path), '/tmp') == shown[0]
  for got, want in zip(printed[1:-1], shown[1:-1]):
    got_cells, want_cells = got.split('|'), want.split('|')
    assert got_cells[1] == want_cells[1]  # the format
    # Sizes of this run's weights: the same but for how well they compress.
    for g, w in zip(got_cells[2:4], want_cells[2:4]):
      if w.strip() and w.strip()[0].isdigit():
        assert int(g.replace(',', '')) == pytest.approx(int(w.replace(',', '')), rel=0.05)
  pattern = (r'Largest difference from the original model\'s outputs on 8 inputs: '
             r'([0-9.e-]+); same top-1 on 8 of 8\.')
  assert re.fullmatch(pattern, shown[-1])
  assert float(re.fullmatch(pattern, printed[-1]).group(1)) < 1e-4
  assert (tmp_path / 'mnist_rigl.tflite').stat().st_size > 0


def _run_python_block(name, tmp_path, replacements=()):
  code = _block('test', name)
  for old, new in replacements:
    assert old in code, old
    code = code.replace(old, new)
  return _run([sys.executable, '-c', code], tmp_path)


def test_keras_quick_start(tmp_path):
  printed = ast.literal_eval(_run_python_block('keras-quick-start', tmp_path).strip()
                             .splitlines()[-1])
  shown = ast.literal_eval(_block('output', 'keras-quick-start').strip())
  assert set(printed) == set(shown)
  for key in ('sparsity/global', 'sparsity/fc1', 'sparsity/fc2', 'drop_fraction'):
    assert printed[key] == shown[key], key
  # How many connections the last update changed depends on the (unseeded) initial weights.
  assert printed['mask_update/changed_connections'] == pytest.approx(
      shown['mask_update/changed_connections'], rel=0.2)


def test_sparse_layers_example(tmp_path):
  printed = _run_python_block('sparse-layers', tmp_path).strip().splitlines()
  shown = _block('output', 'sparse-layers').strip().splitlines()
  assert printed[-2] == shown[0]  # layer shapes and active weights: fixed by ERK
  accuracy = float(printed[-1].split()[-1])
  assert accuracy == pytest.approx(float(shown[1].split()[-1]), abs=0.03)


def test_custom_loop_example(tmp_path):
  printed = _run_python_block('custom-loop', tmp_path).strip().splitlines()
  shown = _block('output', 'custom-loop').strip().splitlines()
  assert printed[-2] == shown[0]  # the step count and the last update: fixed by the schedule
  printed_summaries, shown_summaries = (ast.literal_eval(lines[-1])
                                        for lines in (printed, shown))
  assert set(printed_summaries) == set(shown_summaries)
  for key in ('sparsity/global', 'sparsity/fc1', 'sparsity/fc2', 'drop_fraction'):
    assert printed_summaries[key] == shown_summaries[key], key
  assert printed_summaries['mask_update/changed_connections'] == pytest.approx(
      shown_summaries['mask_update/changed_connections'], rel=0.2)


def test_imagenet_smoke_run(tmp_path):
  args = _with_output_dir(_command('imagenet-smoke'), 'output_dir', tmp_path / 'smoke')
  printed = _run(_python_args(args), tmp_path).strip().splitlines()
  shown = _block('output', 'imagenet-smoke').strip().splitlines()
  assert len(printed) == len(shown)
  for got, want in zip(printed, shown):
    # Synthetic data: every number but the timings is fixed by the flags and seeds.
    strip = lambda line: re.sub(r'[0-9.]+ (s|examples/s|steps/s)\b', 'T',
                                line.replace(str(tmp_path / 'smoke'), '/tmp/imagenet_smoke'))
    assert strip(got) == strip(want)


def test_flops_command(tmp_path):
  printed = _run(_python_args(_command('flops')), tmp_path).strip()
  assert printed == _block('output', 'flops').strip()


def test_released_checkpoint_flops_table():
  """Every row of the table of released checkpoints, from `rigl.flops.count_run`."""
  from rigl import flops  # pylint: disable=g-import-not-at-top
  text = open(README, encoding='utf-8').read()
  table = text.split('<!-- readme-output: released-flops -->\n', 1)[1].split('\n\n', 1)[0]
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in table.splitlines()[2:]]
  assert len(rows) == 17
  for distribution, sparsity, training, train_flops, inference, size, real, _ in rows:
    sparsity, multiplier = float(sparsity), float(training.rstrip('x'))
    if distribution == '- (DENSE)':
      settings = dict(training_method='baseline', end_sparsity=0.0)
    else:
      erk = distribution == 'ERK'
      settings = dict(training_method='rigl', end_sparsity=sparsity,
                      mask_init_method='erdos_renyi_kernel' if erk else 'random',
                      first_layer_sparsity=-1.0 if erk and sparsity < 0.99 else 0.0)
    stats = flops.count_run(model_architecture='resnet',
                            training_steps_multiplier=multiplier, **settings)
    row = (distribution, sparsity, training)
    assert f"{stats['training_flops_ratio']:.2f}x" == train_flops, row
    if distribution == '- (DENSE)':
      assert f"{stats['inference_flops']:.2e}".replace('+0', '') == inference, row
    else:
      assert f"{stats['inference_flops_ratio']:.2f}x" == inference, row
    assert f"{stats['size_mb']:.3f}" == size, row
    assert f"{stats['real_sparsity']:.3f}" == real, row


def test_eval_once_command_on_a_tf1_resnet50_checkpoint(tmp_path):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import imagenet_data  # pylint: disable=g-import-not-at-top
  import tf1_checkpoint_writer  # pylint: disable=g-import-not-at-top
  folder, records = tmp_path / 'ckpt', tmp_path / 'records'
  folder.mkdir()
  arrays, _ = tf1_checkpoint_writer.resnet(50, 1.0, 1000, True, True)
  tf1_checkpoint_writer.write(arrays, str(folder / 'model.ckpt-3200000'), slots=False,
                              extra={'global_step': np.int64(3200000)},
                              state_file=False)
  imagenet_data.write_imagenet(str(records), train_files=1, train_per_file=1,
                               validation=12, classes=1000)
  args = _with_output_dir(_command('eval-once'), 'output_dir', folder)
  args = _with_output_dir(args, 'data_directory', records)
  args += ['--num_eval_images=12', '--eval_batch_size=4']
  printed = _run(_python_args(args), tmp_path).strip().splitlines()
  shown = _block('output', 'eval-once').strip().splitlines()
  assert [line.replace(str(folder), 'path/to/ckpt/folder') for line in printed] == shown
