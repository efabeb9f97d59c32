"""The README's commands and code, run as written (smaller where marked), against what it
says they print.

A block marked `<!-- readme-test: NAME -->` is run; the block after
`<!-- readme-output: NAME -->` is what the README says it printed. Timings and trained
accuracies are compared with a tolerance, everything determined by the flags exactly.
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagenet_data  # pylint: disable=g-import-not-at-top,wrong-import-position
import tf1_checkpoint_writer  # pylint: disable=g-import-not-at-top,wrong-import-position


def _readme():
  return open(README, encoding='utf-8').read()


def _block(kind, name):
  match = re.search(rf'<!-- readme-{kind}: {re.escape(name)} -->\n```[a-z]*\n(.*?)```',
                    _readme(), re.S)
  assert match, f'README has no readme-{kind} block {name!r}'
  return match.group(1)


def _commands(name):
  """The block's commands, each joined over backslash-newlines, without `pip ... &&`."""
  lines = _block('test', name).replace('\\\n', ' ').strip().splitlines()
  return [shlex.split(line.split('&&')[-1]) for line in lines]


def _command(name):
  command, = _commands(name)
  return command


def _run(args, tmp_path, timeout=900):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


# Blocks of commands the tests do not run, by their first words, and why.
NOT_RUN = {
    'bash run.sh': 'runs this test suite',
    'pip install -e': 'installs packages from the network',
    'python rigl/imagenet_resnet/imagenet_train_eval.py --use_tpu': 'needs a Cloud TPU',
    'python rigl/imagenet_resnet/imagenet_train_eval.py --num_gpus=8': 'needs 8 GPUs',
    'python bench/structured.py': 'takes 13 minutes; test_bench_quick.py runs it --quick',
}


def test_every_command_block_runs_in_these_tests():
  """Each bash or python block is marked `readme-test` and run below, or named above."""
  blocks = re.findall(r'(<!-- readme-test: ([\w-]+) -->\n)?```(?:bash|python)\n(.*?)```',
                      _readme(), re.S)
  assert len(blocks) > 10
  tests = open(__file__, encoding='utf-8').read().split('\ndef test_', 1)[1]
  for marker, name, code in blocks:
    if marker:
      assert f"'{name}'" in tests, f'readme-test block {name!r} is run by no test'
    else:
      assert any(code.startswith(first) for first in NOT_RUN), code[:200]


def test_contents_link_every_top_level_section():
  text = _readme()
  contents = text.split('<!-- readme-toc -->\n', 1)[1].split('\n\n', 1)[0]
  anchors = re.findall(r'\]\(#([\w-]+)\)', contents)
  # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
  sections = [re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-')
              for h in re.findall(r'^## (.+)$', text, re.M)]
  assert anchors == sections


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


def _run_shorter(name, output_dir, tmp_path, *shorter):
  """The lines block `name`'s command prints with `--output_dir` and the `shorter` flags
  added, and the lines the README shows; as many of each."""
  args = _with_output_dir(_command(name), 'output_dir', output_dir)
  printed = _run(_python_args(args) + list(shorter), tmp_path).strip().splitlines()
  shown = _block('output', name).strip().splitlines()
  assert len(printed) == len(shown)
  return printed, shown


def test_constant_fan_in_command(tmp_path):
  # Shorter: the layers' fan-ins, and so the sparsities printed, do not depend on it.
  printed, shown = _run_shorter('srigl', tmp_path / 'mnist_srigl', tmp_path,
                                '--num_epochs=3', '--maskupdate_end_step=100')
  assert re.fullmatch(r'rigl on mnist_5k: test accuracy [0-9.]+ at step 120 '
                      r'\([0-9.]+ s of training\)', printed[0])
  assert printed[1:3] == shown[1:3]
  # 78 of 784 inputs per neuron in layer1, 57 of 300 in layer2: the structure's rounding.
  assert '0.9005' in shown[1] and '[0.9005, 0.81, 0.0]' in shown[2]


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


_SUMMARY_KEYS = ('sparsity/masked_weights', 'sparsity/all_weights', 'sparsity/fc1',
                 'sparsity/fc2', 'drop_fraction', 'mask_update/drop_fraction')


def test_keras_quick_start(tmp_path):
  lines = _run_python_block('keras-quick-start', tmp_path).strip().splitlines()
  shown_lines = _block('output', 'keras-quick-start').strip().splitlines()
  assert lines[0] == shown_lines[0]  # what sparsify_model masked
  printed = ast.literal_eval(lines[-1])
  shown = ast.literal_eval(shown_lines[-1])
  assert set(printed) == set(shown)
  for key in _SUMMARY_KEYS:
    assert printed[key] == shown[key], key
  # How many connections the last update changed depends on the (unseeded) initial weights.
  assert printed['mask_update/changed_connections'] == pytest.approx(
      shown['mask_update/changed_connections'], rel=0.2)


def test_transformer_example(tmp_path):
  printed = _run_python_block('transformer', tmp_path).strip().splitlines()
  shown = _block('output', 'transformer').strip().splitlines()
  assert len(printed) == len(shown)
  assert printed[0] == shown[0]  # what sparsify_model masked
  accuracy = float(printed[1].split()[2])
  assert accuracy == pytest.approx(float(shown[1].split()[2]), abs=0.05)
  assert printed[1].split('|')[1:] == shown[1].split('|')[1:]  # the sparsities: exact
  # The report: every weight, its target and actual sparsity, fixed by ERK.
  report = slice(2, shown.index('same predictions: True'))
  assert printed[report] == shown[report]
  assert 'same predictions: True' in printed
  # Sizes: exact where they count parameters, close where they encode a random pattern.
  table = lambda lines: lines[lines.index('|---|---|---|') + 1:]
  sizes = lambda lines: {row.split('|')[1].strip(): [
      int(v.replace(',', '')) for v in row.split('|')[2:4] if v.strip()]
                         for row in table(lines)}
  printed_sizes, shown_sizes = sizes(printed), sizes(shown)
  assert set(printed_sizes) == set(shown_sizes)
  for name, values in shown_sizes.items():
    if name.startswith('parameters'):
      assert printed_sizes[name] == values, name
    else:
      assert printed_sizes[name] == pytest.approx(values, rel=0.05), name


def test_sparse_layers_example(tmp_path):
  printed = _run_python_block('sparse-layers', tmp_path).strip().splitlines()
  shown = _block('output', 'sparse-layers').strip().splitlines()
  assert printed[-2] == shown[0]  # layer shapes and active weights: fixed by ERK
  accuracy = float(printed[-1].split()[-1])
  assert accuracy == pytest.approx(float(shown[1].split()[-1]), abs=0.03)


def test_condensed_example(tmp_path):
  printed = _run_python_block('condensed', tmp_path).strip().splitlines()
  shown = _block('output', 'condensed').strip().splitlines()
  assert len(printed) == len(shown)
  # Which neurons SRigL ablated depends on the training run; the structure does not.
  pattern = (r'to_condensed\(mlp\): 3 condensed layers; ([0-9]+) ablated neurons removed, '
             r'0 kept as constant outputs\.')
  removed = int(re.fullmatch(pattern, printed[0]).group(1))
  assert removed == pytest.approx(int(re.fullmatch(pattern, shown[0]).group(1)), rel=0.2)
  (_, units1, k1), (_, units2, k2), logits = ast.literal_eval(printed[1])
  assert logits[:2] == ('logits', 10) and removed == 2000 - units1 - units2
  # Each layer's budget of 10% of its weights is shared by its active neurons; fc2's
  # inputs are what fc1 kept.
  assert 78400 - units1 < units1 * k1 <= 78400 and k2 <= units1
  assert float(printed[2].split()[-1]) < 1e-4  # the condensed model computes the same
  accuracies = [float(line.split()[-1]) for line in printed[3:]]
  assert accuracies[0] == pytest.approx(float(shown[3].split()[-1]), abs=0.03)
  assert accuracies[1] == pytest.approx(accuracies[0], abs=0.002)  # TFLite: the same


def test_custom_loop_example(tmp_path):
  printed = _run_python_block('custom-loop', tmp_path).strip().splitlines()
  shown = _block('output', 'custom-loop').strip().splitlines()
  assert printed[-2] == shown[0]  # the step count and the last update: fixed by the schedule
  printed_summaries, shown_summaries = (ast.literal_eval(lines[-1])
                                        for lines in (printed, shown))
  assert set(printed_summaries) == set(shown_summaries)
  for key in _SUMMARY_KEYS:
    assert printed_summaries[key] == shown_summaries[key], key
  assert printed_summaries['mask_update/changed_connections'] == pytest.approx(
      shown_summaries['mask_update/changed_connections'], rel=0.2)


def test_imagenet_smoke_run(tmp_path):
  # A quarter of the steps (ResNet-50 on 2 cores): the same lines, at step 10.
  printed, shown = _run_shorter('imagenet-smoke', tmp_path / 'smoke', tmp_path,
                                '--train_steps=10', '--steps_per_eval=10')
  assert printed[0] == shown[0].replace('global step 40', 'global step 10').replace(
      '/tmp/imagenet_smoke', str(tmp_path / 'smoke'))
  number = r'[0-9]\.[0-9]{4}'
  assert re.fullmatch(rf'top-1 {number}, top-5 {number}, cross_loss {number}', printed[1])


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


def test_released_mobilenet_flops_table():
  """Every row of the MobileNet-v1 table, from `rigl.flops.count_run`."""
  from rigl import flops  # pylint: disable=g-import-not-at-top
  text = _readme().split('MobileNet-v1 (`--model_architecture=mobilenet_v1`', 1)[1]
  table = text.split('\n\n', 2)[1]
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in table.splitlines()[2:]]
  assert len(rows) == 5
  for distribution, sparsity, training, train_flops, inference, size, real in rows:
    erk = distribution == 'ERK'
    stats = flops.count_run(
        model_architecture='mobilenet_v1', training_method='rigl', end_sparsity=float(sparsity),
        mask_init_method='erdos_renyi_kernel' if erk else 'random',
        first_layer_sparsity=-1.0 if erk else 0.0,
        training_steps_multiplier=float(training.rstrip('x')))
    assert (f"{stats['training_flops_ratio']:.2f}x", f"{stats['inference_flops_ratio']:.2f}x",
            f"{stats['size_mb']:.3f}", f"{stats['real_sparsity']:.3f}") == (
                train_flops, inference, size, real), (distribution, training)


def test_eval_once_command_on_a_tf1_resnet50_checkpoint(tmp_path):
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


def test_mask_records_commands(tmp_path):
  train, visualize = _commands('mask-records')
  out = tmp_path / 'mnist_rigl_masks'
  _run(_python_args(_with_output_dir(train, 'output_dir', out)), tmp_path)
  records = _with_output_dir(visualize, 'records_path', out / 'mask_records.npy')
  printed = _run(_python_args(records), tmp_path).strip()
  assert printed.replace(str(out), '/tmp/mnist_rigl_masks') == (
      _block('output', 'mask-records').strip())
  assert (out / 'mask_records.gif').stat().st_size > 0
  assert (out / 'mask_records.png').stat().st_size > 0


# TensorFlow Datasets' mock CIFAR-10 (the real one needs the network) under the script.
_MOCK_CIFAR = """
import runpy, sys
import tensorflow_datasets as tfds
from rigl import datasets
datasets.download_host_reachable = lambda: True
sys.argv = sys.argv[1:]
with tfds.testing.mock_data(num_examples=10):
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def test_cifar_command_on_mock_data(tmp_path):
  args = _with_output_dir(_command('cifar'), 'train_dir', tmp_path / 'cifar_rigl_90')
  args = [f'--gin_config={os.path.join(ROOT, a.split("=", 1)[1])}'
          if a.startswith('--gin_config=') else a for a in args]
  assert args[:3] == ['python', '-m', 'rigl.cifar_resnet.resnet_train_eval']
  smaller = ['--batch_size=4', '--max_steps=4', '--checkpoint_steps=2',
             '--steps_per_execution=2']
  printed = _run([sys.executable, '-c', _MOCK_CIFAR, *args[2:], *smaller], tmp_path)
  shown = _block('output', 'cifar').strip()
  pattern = re.escape(shown.replace('/tmp/cifar_rigl_90', str(tmp_path / 'cifar_rigl_90'))
                      .replace('97656', '4')).replace('<a>', '[0-9.]+').replace(
                          '<b>', '[0-9.]+')
  assert re.fullmatch(pattern, printed.strip().splitlines()[-1])
  assert (tmp_path / 'cifar_rigl_90' / 'rigl' / '0.9' / '0' / '75000' / '100' /
          'summary.json').exists()


def test_folder_stub_of_the_imagenet_tpu_command():
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  from rigl.imagenet_resnet import imagenet_train_eval as ite  # pylint: disable=g-import-not-at-top
  shown = _block('output', 'folder-stub').strip()
  ite.FLAGS.unparse_flags()
  try:
    script_flags.parse(ite.FLAGS, [
        'imagenet_train_eval', '--output_dir=gs://$BUCKET/resnet50_rigl_erk_80_5x',
        f'--gin_config={ROOT}/configs/imagenet_resnet50_rigl_erk_80_5x.gin'], ite.SCRIPT_NAME)
    assert ite.output_dir() == shown
  finally:
    ite.FLAGS.unparse_flags()


def _released_checkpoints():
  """The rows of the README's table of released checkpoints, as dicts."""
  table = _readme().split('<!-- readme-table: released-checkpoints -->\n', 1)[1]
  lines = table.split('\n\n', 1)[0].splitlines()
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  return [dict(zip(header, (c.strip() for c in line.strip('|').split('|'))))
          for line in lines[2:]]


def _flops_table_sizes():
  """{(model, distribution, sparsity): MB} of the FLOPs tables of the released runs."""
  section = _readme().split('<!-- readme-output: released-flops -->\n', 1)[1]
  resnet, mobilenet = section.split('MobileNet-v1 (`--model_architecture=mobilenet_v1`', 1)
  sizes = {}
  for model, text in (('ResNet-50', resnet), ('MobileNet-v1', mobilenet)):
    for line in text.split('\n## ', 1)[0].splitlines():
      if line.startswith(('| ERK', '| Uniform')):
        cells = [c.strip() for c in line.strip('|').split('|')]
        sizes[(model, cells[0], cells[1])] = cells[5]
  return sizes


def test_released_checkpoints_table():
  """Every row: the file's link, and the original README's flags for its kind of model."""
  rows = _released_checkpoints()
  # The reference's 16 ResNet-50 and 5 MobileNet-v1 checkpoints, with their accuracies.
  published = {
      ('ResNet-50', 'ERK', '0.8', '5x'): '77.17', ('ResNet-50', 'Uniform', '0.8', '5x'): '76.71',
      ('ResNet-50', 'ERK', '0.9', '5x'): '76.42', ('ResNet-50', 'Uniform', '0.9', '5x'): '75.73',
      ('ResNet-50', 'ERK', '0.95', '5x'): '74.63',
      ('ResNet-50', 'Uniform', '0.95', '5x'): '73.22',
      ('ResNet-50', 'ERK', '0.965', '5x'): '72.77',
      ('ResNet-50', 'Uniform', '0.965', '5x'): '71.31',
      ('ResNet-50', 'ERK', '0.99', '5x'): '61.86', ('ResNet-50', 'ERK', '0.99', '10x'): '63.89',
      ('ResNet-50', 'ERK', '0.99', '40x'): '66.94',
      ('ResNet-50', 'ERK', '0.99', '100x'): '68.15',
      ('ResNet-50', 'ERK', '0.8', '1x'): '75.12', ('ResNet-50', 'Uniform', '0.8', '1x'): '74.60',
      ('ResNet-50', 'ERK', '0.9', '1x'): '73.07', ('ResNet-50', 'Uniform', '0.9', '1x'): '72.02',
      ('MobileNet-v1', 'ERK', '0.9', '10x'): '69.31',
      ('MobileNet-v1', 'ERK', '0.9', '50x'): '70.63',
      ('MobileNet-v1', 'Uniform', '0.9', '10x'): '69.28',
      ('MobileNet-v1', 'Uniform', '0.9', '50x'): '70.25',
      ('MobileNet-v1', 'Uniform', '0.9', '100x'): '70.59',
  }
  assert {(r['model'], r['distribution'], r['sparsity'], r['training']): r['top-1 (%)']
          for r in rows} == published
  sizes = _flops_table_sizes()
  for row in rows:
    model, distribution, sparsity, training = (
        row['model'], row['distribution'], row['sparsity'], row['training'])
    name = (('mbv1_s90_' if model == 'MobileNet-v1' else f's{sparsity[2:].ljust(2, "0")}') +
            f'{distribution.lower()}{training}')
    assert row['checkpoint'] == (
        f'[{name}.tar.gz](https://storage.googleapis.com/gresearch/rigl/{name}.tar.gz)')
    assert row['size (MB)'] == sizes[(model, distribution, sparsity)], row
    command = shlex.split(row['evaluation command'].strip('`'))
    assert command[:2] == ['python', 'rigl/imagenet_resnet/imagenet_train_eval.py']
    # The original README: ERK masks every layer (but the 99% models' dense first layer),
    # uniform keeps the first layer dense; MobileNets say so.
    first_layer = '0' if distribution == 'Uniform' or sparsity == '0.99' else '-1'
    expected = {'--mode=eval_once', f'--output_dir={name}', '--use_folder_stub=False',
                '--training_method=rigl', f'--first_layer_sparsity={first_layer}',
                '--mask_init_method=' + ('erdos_renyi_kernel' if distribution == 'ERK'
                                         else 'random'),
                '--data_directory=$IMAGENET'}
    if model == 'MobileNet-v1':
      expected.add('--model_architecture=mobilenet_v1')
    assert set(command[2:]) == expected, row


def test_a_released_checkpoint_unpacked_and_evaluated_as_the_readme_says(tmp_path):
  """The MobileNet-v1 ERK row on a TF1 checkpoint of its names, from a tarball."""
  row = next(r for r in _released_checkpoints()
             if r['model'] == 'MobileNet-v1' and r['distribution'] == 'ERK')
  name = re.match(r'\[(\w+)\.tar\.gz\]', row['checkpoint']).group(1)
  arrays, _ = tf1_checkpoint_writer.mobilenet_v1(1.0, 1000, True)
  written = tmp_path / 'written'
  tf1_checkpoint_writer.write(arrays, str(written / 'model.ckpt-1600000'), slots=False,
                              extra={'global_step': np.int64(1600000)}, state_file=False)
  with tarfile.open(tmp_path / f'{name}.tar.gz', 'w:gz', compresslevel=1) as archive:
    for path in written.iterdir():
      archive.add(path, arcname=path.name)
  unpack = _block('test', 'unpack').strip().replace('s80erk5x', name)
  subprocess.run(unpack, shell=True, cwd=tmp_path, check=True)
  validation = tmp_path / 'imagenet'
  imagenet_data.write_imagenet(str(validation), train_files=0, validation=4, classes=1000)
  command = [a.replace('$IMAGENET', str(validation))
             for a in shlex.split(row['evaluation command'].strip('`'))]
  printed = _run(_python_args(command) + ['--num_eval_images=4', '--eval_batch_size=4'],
                 tmp_path).strip().splitlines()[-1]
  masks = [v for k, v in arrays.items() if k.endswith('/mask')]
  sparsity = 1 - sum(m.sum() for m in masks) / sum(m.size for m in masks)
  assert re.fullmatch(rf'model\.ckpt-1600000: top-1 [0-9.]+, top-5 [0-9.]+, cross_loss '
                      rf'[0-9.]+, global step 1600000, global sparsity {sparsity:.4f} '
                      rf'\(4 images\)', printed), printed
  assert (tmp_path / name / 'eval_once_model.ckpt-1600000.json').exists()


# --- The character-level language model ---------------------------------------------

# The README's offline command runs 2,000 steps; the tests run it for 200 (as the CIFAR
# command runs on mock data) and check what does not depend on the length exactly.
CHAR_LM_STEPS = 200


@pytest.fixture(scope='module')
def char_lm_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('char_lm')
  args = _with_output_dir(_command('char-lm'), 'output_dir', out / 'char_lm_rigl')
  args = [f'--gin_config={os.path.join(ROOT, a.split("=", 1)[1])}'
          if a.startswith('--gin_config=') else a for a in args]
  stdout = _run(_python_args(args) + [f'--train_steps={CHAR_LM_STEPS}',
                                      f'--steps_per_eval={CHAR_LM_STEPS}'], out)
  return out / 'char_lm_rigl', stdout


def test_char_lm_command_prints_what_the_readme_shows(char_lm_run):
  run_dir, stdout = char_lm_run
  printed = stdout.strip().splitlines()
  shown = _block('output', 'char-lm').strip().splitlines()
  assert len(printed) == len(shown) == 5
  # The embedded corpus: its sizes are those of this Python's reference manual.
  corpus = r'No --data_directory: training on the CPython reference manual .*pydoc_data.*'
  assert re.fullmatch(corpus, printed[0]) and re.fullmatch(corpus, shown[0])
  result = (r'rigl char LM on pydoc_data: ([0-9.]+) bits per character on valid, ([0-9.]+) '
            r'on test, at step (\d+) \([0-9.]+ s of training\)')
  shown_bits = [float(b) for b in re.fullmatch(result, shown[1]).groups()[:2]]
  assert re.fullmatch(result, shown[1]).group(3) == '2000'
  match = re.fullmatch(result, printed[1])
  assert match.group(3) == str(CHAR_LM_STEPS)
  # Well below the 8 bits of uniform bytes already at 200 steps, above the full run's.
  for got, full in zip((float(b) for b in match.groups()[:2]), shown_bits):
    assert full < got < 6
  assert printed[2] == shown[2]  # 75% of every masked kernel
  assert printed[3] == shown[3]  # the FLOPs: fixed by the model and method
  assert printed[4].replace(str(run_dir), '/tmp/char_lm_rigl').replace(
      f'model.ckpt-{CHAR_LM_STEPS}', 'model.ckpt-2000') == shown[4]
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert summary['per_kernel_sparsity'] == {
      'gru/gru_cell': 0.75, 'gru/gru_cell/recurrent_kernel': 0.75, 'readout_1': 0.75,
      'readout_2': 0.75}
  assert (run_dir / 'training_curves.png').read_bytes().startswith(b'\x89PNG')


def test_char_lm_sample_command(char_lm_run, tmp_path):
  run_dir, _ = char_lm_run
  args = _with_output_dir(_command('char-lm-sample'), 'output_dir', run_dir)
  args = [f'--gin_config={os.path.join(ROOT, a.split("=", 1)[1])}'
          if a.startswith('--gin_config=') else a for a in args]
  prompt = next(a.split('=', 1)[1] for a in args if a.startswith('--prompt='))
  length = int(next(a.split('=', 1)[1] for a in args if a.startswith('--num_characters=')))
  printed = _run(_python_args(args), tmp_path)
  shown = _block('output', 'char-lm-sample')
  for text in (printed, shown):
    assert text.startswith(prompt)
    # The prompt and `length` bytes (an invalid UTF-8 sequence prints as one U+FFFD).
    assert len(text.rstrip('\n').encode('utf-8')) >= len(prompt) + length - 8


def test_char_lm_paper_command_sets_the_papers_recipe():
  """The full-scale command, parsed as the script parses it (training it takes days)."""
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  from rigl.char_lm import char_lm_train_eval  # pylint: disable=g-import-not-at-top
  args = _command('char-lm-paper')
  assert args[:3] == ['python', '-m', 'rigl.char_lm.char_lm_train_eval']
  args = [f'--gin_config={os.path.join(ROOT, a.split("=", 1)[1])}'
          if a.startswith('--gin_config=') else a for a in args]
  flag_values = char_lm_train_eval.FLAGS
  flag_values.unparse_flags()
  try:
    script_flags.parse(flag_values, ['char_lm_train_eval'] + args[3:],
                       char_lm_train_eval.SCRIPT_NAME)
    # Appendix I of the paper, from the gin file.
    assert flag_values.data_directory and flag_values.mode == 'train_and_eval'
    assert (flag_values.training_method, flag_values.end_sparsity,
            flag_values.mask_init_method) == ('rigl', 0.75, 'random')
    assert (flag_values.embedding_size, flag_values.gru_units, flag_values.readout_units,
            flag_values.tie_embedding) == (128, 512, ['256', '128'], True)
    assert (flag_values.learning_rate, flag_values.l2, flag_values.clip_norm,
            flag_values.sequence_length, flag_values.batch_size,
            flag_values.train_steps) == (7e-4, 5e-4, 10.0, 512, 32, 200000)
    assert (flag_values.maskupdate_frequency, flag_values.maskupdate_end_step,
            flag_values.drop_fraction, flag_values.drop_fraction_anneal) == (
                100, 200000, 0.1, 'cosine')
  finally:
    flag_values.unparse_flags()


def test_char_lm_flops_of_every_method():
  """The README's table of the paper's model, from `rigl.flops.count_run`."""
  from rigl import flops  # pylint: disable=g-import-not-at-top
  table = _readme().split('<!-- readme-table: char-lm-flops -->\n', 1)[1].split('\n\n', 1)[0]
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in table.splitlines()[2:]]
  methods = {'dense': 'baseline', 'static': 'scratch', 'SET': 'set', 'SNFS': 'momentum',
             'RigL': 'rigl', 'pruning': 'prune'}
  assert [row[0] for row in rows] == list(methods)
  for name, training, inference in rows:
    stats = flops.count_run(
        model_architecture='char_lm', training_method=methods[name],
        mask_init_method='random', end_sparsity=0.75, train_steps=200000,
        sparsity_begin_step=50000, sparsity_end_step=150000, pruning_frequency=1000)
    assert (f"{stats['training_flops_ratio']:.2f}x",
            f"{stats['inference_flops_ratio']:.2f}x") == (training, inference), name


def test_char_lm_table_is_the_benchmarks():
  table = _readme().split('<!-- readme-table: char-lm-bench -->\n', 1)[1].split('\n\n', 1)[0]
  committed = open(os.path.join(ROOT, 'bench', 'results', 'char_lm_table.md'),
                   encoding='utf-8').read()
  assert table.strip() == committed.strip()
