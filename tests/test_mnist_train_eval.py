"""End-to-end tests of `python -m rigl.mnist.mnist_train_eval` on tiny step counts.

Most runs go through the script's own flag parsing and `setup`/`run` in this process
(about a second each); start-up failures and the killed run use real subprocesses.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rigl import datasets
from rigl import layers
from rigl import script_flags
from rigl import train_lib
from rigl import training_history
from rigl.mnist import mnist_model
from rigl.mnist import mnist_train_eval as mte

import tf1_checkpoint_writer  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4,000 training digits at batch 400: 10 steps per epoch.
TINY = ('--dataset=mnist_5k', '--batch_size=400', '--num_epochs=1',
        '--steps_per_execution=3', '--end_sparsity=0.9')
DST_FLAGS = ('--maskupdate_frequency=2', '--maskupdate_end_step=8',
             '--drop_fraction=0.3')
CONFIGURED = {'layer1': 0.9, 'layer2': 0.81, 'layer3': 0.0}
LAYER_SIZES = {'layer1': 784 * 300, 'layer2': 300 * 100, 'layer3': 100 * 10}


def run_script(output_dir, *args):
  """Parses `args` as the script's flags and runs it here; returns summary.json."""
  argv = ['mnist_train_eval', f'--output_dir={output_dir}', *TINY, *args]
  mte.FLAGS.unparse_flags()
  try:
    mte.FLAGS(argv)
    return mte.run(*mte.setup())
  finally:
    mte.FLAGS.unparse_flags()


def script_command(output_dir, *args):
  return [sys.executable, '-m', 'rigl.mnist.mnist_train_eval',
          f'--output_dir={output_dir}', *TINY, *args]


def subprocess_env():
  return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')


def checkpoint_values(output_dir):
  reader = tf.train.load_checkpoint(output_dir)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k not in ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter/.ATTRIBUTES/'
                       'VARIABLE_VALUE')}


@pytest.mark.parametrize('method, extra', [
    ('baseline', ()),
    ('scratch', ()),
    ('set', DST_FLAGS),
    ('static', DST_FLAGS),
    ('momentum', DST_FLAGS),
    ('rigl', DST_FLAGS),
    ('snip', ()),
    ('dnw', ()),
    ('prune', ('--prune_begin_step=0', '--prune_end_step=6', '--pruning_frequency=2')),
])
def test_every_method_reaches_its_sparsity(tmp_path, method, extra):
  summary = run_script(tmp_path / method, f'--training_method={method}', *extra)
  assert summary['training_method'] == method
  assert summary['steps'] == 10
  expected = ({k: 0.0 for k in CONFIGURED} if method == 'baseline' else CONFIGURED)
  for layer, sparsity in summary['per_layer_sparsity'].items():
    # Within one connection of the configured sparsity.
    assert abs(sparsity - expected[layer]) <= 1.0 / LAYER_SIZES[layer], (layer, sparsity)
  assert 0.0 < summary['test_accuracy'] <= 1.0
  written = json.loads((tmp_path / method / 'summary.json').read_text())
  assert written['per_layer_sparsity'] == summary['per_layer_sparsity']
  assert set(written) >= {'test_accuracy', 'global_sparsity', 'per_layer_sparsity',
                          'training_method', 'end_sparsity', 'steps', 'train_seconds'}
  for name in ('training_curves.png', 'model.ckpt-10.index', summary['log_file']):
    assert (tmp_path / method / name).exists(), name
  assert list((tmp_path / method / 'eval').iterdir())
  assert list((tmp_path / method / 'train').iterdir())


def test_rigl_moves_connections_and_records_masks(tmp_path):
  out = tmp_path / 'rigl'
  run_script(out, '--training_method=rigl', *DST_FLAGS, '--mask_record_frequency=5')
  records = np.load(out / 'mask_records.npy', allow_pickle=True).item()
  assert sorted(records) == [0, 5]
  first, last = records[0][0], np.asarray(
      tf.train.load_checkpoint(str(out)).get_tensor(
          'optimizer/_masks/0/.ATTRIBUTES/VARIABLE_VALUE')) > 0.5
  assert first.shape == (784, 300)
  # Drop-and-grow kept the count but changed the connections.
  assert first.sum() == last.sum()
  assert (first != last).any()
  rewired = json.loads((out / training_history.HISTORY_FILE).read_text())[-1]['rewired']
  assert rewired['layer1'] == pytest.approx((last & ~first).sum() / last.sum())
  assert rewired['layer1'] > 0 and rewired['layer3'] == 0


def unread_checkpoint_value_warnings(caplog):
  return [r for r in caplog.records if 'could not be found in the restored' in r.getMessage()
          or 'being deleted with unrestored values' in r.getMessage()]


def test_eval_once_reproduces_training_accuracy(tmp_path, caplog):
  out = tmp_path / 'run'
  trained = run_script(out, '--training_method=set', *DST_FLAGS)
  history = json.loads((out / training_history.HISTORY_FILE).read_text())
  caplog.clear()
  evaluated = run_script(out, '--training_method=set', *DST_FLAGS, '--mode=eval_once',
                         '--eval_once_ckpt_prefix=model.ckpt-10')
  # Evaluation reads only the model from a checkpoint that also holds the optimizer.
  assert not unread_checkpoint_value_warnings(caplog)
  assert 'train_seconds' not in evaluated
  assert evaluated['test_accuracy'] == trained['test_accuracy']
  assert evaluated['test_accuracy'] == history[-1]['accuracy']
  assert evaluated['per_layer_sparsity'] == trained['per_layer_sparsity']
  assert json.loads((out / 'eval_once_summary.json').read_text())['steps'] == 10


def test_eval_mode_follows_checkpoints(tmp_path, caplog):
  out = tmp_path / 'run'
  trained = run_script(out, '--training_method=rigl', *DST_FLAGS,
                       '--steps_per_checkpoint=5', '--mode=train')
  caplog.clear()
  evaluated = run_script(out, '--training_method=rigl', *DST_FLAGS, '--mode=eval')
  assert not unread_checkpoint_value_warnings(caplog)
  assert evaluated['steps'] == 10
  assert evaluated['test_accuracy'] == trained['test_accuracy']


def test_killed_run_resumes_to_the_same_result(tmp_path):
  # 20 steps per epoch; masks change every 7 steps, so RigL's updates (which consume a
  # batch without a step) fall inside the chunks between checkpoints.
  args = ('--training_method=rigl', '--batch_size=200', '--num_epochs=3',
          '--maskupdate_frequency=7', '--maskupdate_end_step=50',
          '--steps_per_checkpoint=5', '--steps_per_execution=2',
          '--mask_record_frequency=10')
  # The last of repeated flags wins, so these override TINY's batch and epochs.
  uninterrupted = run_script(tmp_path / 'straight', *args)

  killed = tmp_path / 'killed'
  process = subprocess.Popen(script_command(killed, *args), env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not (killed / 'checkpoint').exists() and process.poll() is None:
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / 'summary.json').exists(), 'the run finished before the kill'

  resumed = run_script(killed, *args)
  assert resumed['resumed_from_step'] > 0
  assert resumed['test_accuracy'] == uninterrupted['test_accuracy']
  straight_values = checkpoint_values(tmp_path / 'straight')
  resumed_values = checkpoint_values(killed)
  assert straight_values.keys() == resumed_values.keys()
  for key, value in straight_values.items():
    np.testing.assert_array_equal(resumed_values[key], value, err_msg=key)
  assert (killed / resumed['log_file']).read_text() == (
      tmp_path / 'straight' / resumed['log_file']).read_text()

  def history(run):
    # Everything but the timings.
    return [{k: v for k, v in h.items() if k != 'train_seconds'}
            for h in json.loads((run / training_history.HISTORY_FILE).read_text())]

  assert history(killed) == history(tmp_path / 'straight')
  straight_records = np.load(tmp_path / 'straight' / 'mask_records.npy',
                             allow_pickle=True).item()
  resumed_records = np.load(killed / 'mask_records.npy', allow_pickle=True).item()
  assert sorted(resumed_records) == sorted(straight_records)


def test_a_run_continues_only_with_its_own_flags(tmp_path):
  out = tmp_path / 'run'
  run_script(out, '--training_method=rigl', *DST_FLAGS)
  with pytest.raises(ValueError, match="--training_method='rigl' there, 'set' now"):
    run_script(out, '--training_method=set', *DST_FLAGS)
  # More epochs continue the same run.
  longer = run_script(out, '--training_method=rigl', *DST_FLAGS, '--num_epochs=2')
  assert longer['resumed_from_step'] == 10
  assert longer['steps'] == 20


class _Interrupt(Exception):
  pass


def test_the_record_stays_true_over_resumes_and_reruns(tmp_path, monkeypatch):
  # A clock that advances one second per global step: a run's training time is then the
  # number of steps it trained, however many invocations that took.
  loops = []
  original_train = train_lib.TrainLoop.train

  def train(loop, *args, **kwargs):
    loops.append(loop)
    return original_train(loop, *args, **kwargs)

  monkeypatch.setattr(train_lib.TrainLoop, 'train', train)
  monkeypatch.setattr(train_lib, 'time',
                      types.SimpleNamespace(time=lambda: float(loops[-1].global_step)))
  original_save = train_lib.TrainLoop.save

  def save_then_die(loop):
    original_save(loop)
    raise _Interrupt()

  out = tmp_path / 'run'
  args = ('--training_method=set', *DST_FLAGS, '--steps_per_checkpoint=5')
  monkeypatch.setattr(train_lib.TrainLoop, 'save', save_then_die)
  with pytest.raises(_Interrupt):
    run_script(out, *args)
  monkeypatch.setattr(train_lib.TrainLoop, 'save', original_save)
  resumed = run_script(out, *args)
  assert resumed['resumed_from_step'] == 5 and resumed['steps'] == 10
  assert resumed['train_seconds'] == 10.0
  history = json.loads((out / training_history.HISTORY_FILE).read_text())
  assert [(h['step'], h['train_seconds']) for h in history] == [(10, 10.0)]
  # Rerun as it was: nothing more to train, and the record keeps its time.
  again = run_script(out, *args)
  assert again['resumed_from_step'] == 10 and again['train_seconds'] == 10.0
  assert json.loads((out / 'summary.json').read_text())['train_seconds'] == 10.0
  longer = run_script(out, *args, '--num_epochs=2')
  assert longer['steps'] == 20 and longer['train_seconds'] == 20.0
  # Fewer epochs than the run has trained would leave a record that contradicts the
  # checkpoint.
  record = (out / 'summary.json').read_text()
  with pytest.raises(ValueError, match=r'--num_epochs=2 there, 1 now \(it may grow'):
    run_script(out, *args, '--num_epochs=1')
  assert (out / 'summary.json').read_text() == record


def test_tfds_path_with_mock_data(tmp_path, monkeypatch):
  # The mock serves the data; the script's network probe is tested separately.
  monkeypatch.setattr(datasets, 'download_host_reachable', lambda: True)
  with tfds.testing.mock_data(num_examples=40):
    summary = run_script(tmp_path / 'tfds', '--dataset=mnist', '--batch_size=8',
                         '--training_method=rigl', *DST_FLAGS)
  assert summary['train_examples'] == 40
  assert summary['test_examples'] == 40
  assert summary['steps'] == 5


def test_tfds_failure_names_the_embedded_dataset(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise ConnectionError('cannot reach storage.googleapis.com')

  monkeypatch.setattr(datasets, 'download_host_reachable', lambda: True)
  monkeypatch.setattr(tfds, 'load', no_network)
  with pytest.raises(mte.DataError, match='--dataset=mnist_5k'):
    run_script(tmp_path / 'tfds', '--dataset=mnist', f'--data_dir={tmp_path / "data"}')


def test_without_network_tfds_is_not_even_tried(tmp_path, monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError('tfds.load would retry the download for minutes')

  monkeypatch.setattr(datasets, 'download_host_reachable', lambda: False)
  monkeypatch.setattr(tfds, 'load', must_not_run)
  started = time.time()
  with pytest.raises(mte.DataError, match='unreachable.*--dataset=mnist_5k'):
    run_script(tmp_path / 'tfds', '--dataset=mnist', f'--data_dir={tmp_path / "data"}')
  assert time.time() - started < 10


def test_input_mask_path_drops_unconnected_pixels(tmp_path):
  source = tmp_path / 'source'
  run_script(source, '--training_method=scratch', '--end_sparsity=0.995')
  summary = run_script(tmp_path / 'masked', '--training_method=baseline',
                       f'--input_mask_path={source}')
  pixels = mte.input_pixels_from_checkpoint(str(source))
  assert 0 < pixels.sum() < 784
  assert summary['steps'] == 10


def test_input_mask_path_reads_the_originals_tf1_checkpoint(tmp_path):
  rng = np.random.RandomState(0)
  layer1 = (rng.rand(784, 300) < 0.002).astype(np.float32)  # some pixels unconnected
  masks = {'layer1/mask': layer1, 'layer2/mask': np.ones((300, 100), np.float32),
           'layer3/mask': np.ones((100, 10), np.float32)}
  prefix = tf1_checkpoint_writer.write(masks, str(tmp_path / 'model.ckpt'))
  pixels = mte.input_pixels_from_checkpoint(prefix)
  np.testing.assert_array_equal(pixels, layer1.sum(axis=1) > 0)
  assert 0 < pixels.sum() < 784


def _other_models_checkpoint(directory, model):
  tf.train.Checkpoint(model=model).write(str(directory / 'ckpt-1'))
  return str(directory / 'ckpt-1')


@pytest.mark.parametrize('source', ['dense_run', 'other_model', 'fewer_pixels'])
def test_input_mask_path_needs_a_layer1_mask_of_all_pixels(tmp_path, source):
  if source == 'dense_run':
    run_script(tmp_path / 'source', '--training_method=baseline')
    path = str(tmp_path / 'source')
  elif source == 'other_model':  # e.g. the checkpoint of an ImageNet run
    path = _other_models_checkpoint(tmp_path, keras.Sequential([
        keras.Input((8, 8, 3)), layers.MaskedConv2D(4, 3, name='initial_conv'),
        keras.layers.Flatten(), layers.MaskedDense(10, name='final_dense')]))
  else:  # a run that itself had --input_mask_path: layer1 takes 100 pixels
    path = _other_models_checkpoint(tmp_path, mnist_model.build_model(True, 100))
  with pytest.raises(ValueError, match=r'--input_mask_path=.* holds no layer1 mask of '
                     r'shape 784x300'):
    run_script(tmp_path / 'run', '--training_method=baseline', f'--input_mask_path={path}')


def test_sparse_execution_trains_the_masked_run(tmp_path):
  # With the momentum of grown connections set from the gradient, which the script's
  # momentum optimizer has (issue 19: it was refused as "SGD has no momentum").
  rigl = ('--training_method=rigl', '--rigl_acc_scale=0.5', *DST_FLAGS)
  masked = run_script(tmp_path / 'masked', *rigl)
  sparse = run_script(tmp_path / 'sparse', *rigl, '--sparse_execution')
  assert sparse['per_layer_sparsity'] == masked['per_layer_sparsity']
  assert sparse['test_accuracy'] == pytest.approx(masked['test_accuracy'], abs=0.005)
  masks = {}
  for run in ('masked', 'sparse'):
    mte.FLAGS.unparse_flags()
    mte.FLAGS(['mnist_train_eval', f'--output_dir={tmp_path / run}', *TINY, *rigl,
               '--mode=eval_once',
               '--eval_once_ckpt_prefix=model.ckpt-10'] +
              (['--sparse_execution'] if run == 'sparse' else []))
    try:
      loop, _, _ = mte.setup()
      loop.run('eval_once')
      masks[run] = [np.asarray(m) > 0.5 for m in mte.sparse_layers.all_masks(loop.model)]
    finally:
      mte.FLAGS.unparse_flags()
  # The same connections after four RigL updates, and they did move.
  initial = np.load(tmp_path / 'sparse' / mte.INITIAL_MASKS_FILE)
  for i, (m, s) in enumerate(zip(masks['masked'], masks['sparse'])):
    np.testing.assert_array_equal(s, m)
    if i < 2:
      assert (s != initial[f'arr_{i}']).any()
  reader = tf.train.load_checkpoint(str(tmp_path / 'sparse'))
  stored = [reader.get_variable_to_shape_map()[k] for k in reader.get_variable_to_shape_map()
            if k.endswith('/indices/.ATTRIBUTES/VARIABLE_VALUE')]
  assert sorted(n for (n,) in stored) == sorted(int(m.sum()) for m in masks['sparse'])


def checkpoint_masks(output_dir):
  reader = tf.train.load_checkpoint(str(output_dir))
  return [reader.get_tensor(f'optimizer/_masks/{i}/.ATTRIBUTES/VARIABLE_VALUE') > 0.5
          for i in range(3)]


def test_structure_flag_trains_constant_fan_in_masks(tmp_path):
  summary = run_script(tmp_path / 'run', '--training_method=rigl', *DST_FLAGS,
                       '--structure=constant_fan_in', '--ablation_threshold=0.3')
  masks = checkpoint_masks(tmp_path / 'run')
  # Budgets at 0.9 and 0.81: 23520 of 784x300 and 5700 of 300x100 weights; layer3 dense.
  for mask, budget, name in ((masks[0], 23520, 'layer1'), (masks[1], 5700, 'layer2')):
    fan_ins = mask.sum(0)
    active = int((fan_ins > 0).sum())
    assert set(fan_ins[fan_ins > 0]) == {budget // active}, name
    assert summary['per_layer_sparsity'][name] == pytest.approx(
        1 - budget // active * active / mask.size, abs=1e-6)
  assert masks[2].all()


def test_structure_is_set_by_gin_and_checked_when_parsed(tmp_path):
  argv = ['mnist_train_eval', f'--output_dir={tmp_path / "run"}', *TINY,
          '--training_method=set', *DST_FLAGS,
          f"--gin_bindings={mte.SCRIPT_NAME}.structure = '2:4'"]
  mte.FLAGS.unparse_flags()
  try:
    script_flags.parse(mte.FLAGS, argv, mte.SCRIPT_NAME)
    assert mte.FLAGS.structure == '2:4'
    mte.run(*mte.setup())
  finally:
    mte.FLAGS.unparse_flags()
  for mask in checkpoint_masks(tmp_path / 'run')[:2]:
    assert mask.reshape(-1, 4, mask.shape[1]).sum(1).max() <= 2
  with pytest.raises(flags.IllegalFlagValueError, match="--structure=2:5:3.*'N:M'"):
    mte.FLAGS(['mnist_train_eval', '--output_dir=/tmp/x', *TINY, '--structure=2:5:3'])
  mte.FLAGS.unparse_flags()


def test_sparse_execution_refuses_methods_that_need_dense_state(tmp_path):
  mte.FLAGS.unparse_flags()
  with pytest.raises(flags.IllegalFlagValueError, match='sparse_execution'):
    mte.FLAGS(['mnist_train_eval', f'--output_dir={tmp_path}', *TINY,
               '--training_method=momentum', '--sparse_execution'])
  mte.FLAGS.unparse_flags()


def test_compressed_fc_removes_dead_units():
  layer1 = np.zeros((4, 3))
  layer1[0, 0] = layer1[1, 1] = 1  # Input 2 and 3 have no outgoing connection.
  layer2 = np.zeros((3, 2))
  layer2[0, 0] = layer2[2, 1] = 1  # Hidden 1 has no outgoing, hidden 2 no incoming.
  compressed = mte.compressed_fc([layer1, layer2])
  # Hidden 1 and 2 die, then input 1 (it only fed hidden 1).
  assert compressed['shapes'] == [[1, 1], [1, 2]]
  assert compressed['sparsities'] == [0.0, 0.5]


def test_output_dir_that_is_a_file_or_cannot_be_created_is_one_clear_error(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  with pytest.raises(ValueError, match=r"--output_dir=.*a_file'.* is a file, not a "
                     'directory'):
    run_script(a_file)
  with pytest.raises(ValueError, match=r"--output_dir='/proc/rigl_run': cannot create"):
    run_script('/proc/rigl_run')


BAD_FLAGS = [
    ('--training_method=magic', 'training_method'),
    ('--end_sparsity=1.5', 'end_sparsity'),
    ('--num_epochs=-3', 'num_epochs'),
    ('--output_dir=/no/such/parent/run', 'output_dir'),
    ('--learning_rate=nan', 'learning_rate'),
    ('--rigl_acc_scale=nan', 'rigl_acc_scale'),
    ('--erk_power_scale=-1', 'erk_power_scale'),
]


@pytest.mark.parametrize('bad_flag, message', BAD_FLAGS)
def test_bad_flags_are_rejected_when_parsed(bad_flag, message):
  mte.FLAGS.unparse_flags()
  with pytest.raises(flags.IllegalFlagValueError) as error:
    mte.FLAGS(['mnist_train_eval', '--output_dir=/tmp/x', *TINY, bad_flag])
  mte.FLAGS.unparse_flags()
  assert message in str(error.value)
  assert bad_flag.split('=')[1] in str(error.value)


def test_bad_flags_fail_at_start_up_without_a_stack_trace(tmp_path):
  # One real start-up per failure kind would cost a TensorFlow import each; absl
  # reports every flag error the same way, which one run shows.
  for bad_flag, message in BAD_FLAGS[1:2]:
    result = subprocess.run(script_command(tmp_path / 'run', bad_flag),
                            env=subprocess_env(), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0
    assert message in result.stderr and bad_flag.split('=')[1] in result.stderr
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'run').exists()


def test_invalid_combination_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='drop_fraction_anneal'):
    run_script(tmp_path / 'run', '--training_method=set', '--drop_fraction_anneal=sine')


@pytest.mark.parametrize('mode', ['eval_once', 'eval'])
def test_eval_modes_refuse_the_flags_of_another_run(tmp_path, mode):
  out = tmp_path / 'run'
  run_script(out, '--training_method=rigl', *DST_FLAGS)
  with pytest.raises(ValueError, match="--training_method='rigl' there, 'baseline' now"):
    run_script(out, '--training_method=baseline', f'--mode={mode}')


def test_without_a_dataset_flag_and_network_the_embedded_digits_are_used(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(datasets, 'download_host_reachable', lambda: False)
  argv = ['mnist_train_eval', f'--output_dir={tmp_path / "run"}', '--batch_size=400',
          '--num_epochs=1', f'--data_dir={tmp_path / "data"}']
  mte.FLAGS.unparse_flags()
  try:
    mte.FLAGS(argv)
    summary = mte.run(*mte.setup())
  finally:
    mte.FLAGS.unparse_flags()
  assert summary['dataset'] == 'mnist_5k'
  assert summary['train_examples'] == 4000
  printed = capsys.readouterr().out
  assert printed.count('--dataset=mnist_5k') == 1
  assert 'with network access --dataset=mnist' in printed
