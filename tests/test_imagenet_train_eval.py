"""End-to-end tests of `rigl.imagenet_resnet.imagenet_train_eval` on tiny models and data.

Runs go through the script's own flag parsing (gin included) and `setup`/`run` in this
process; start-up failures, two workers and the file form of the script use subprocesses.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rigl import datasets
from rigl import layers
from rigl import script_flags
from rigl import sparse_utils
from rigl import tf1_checkpoints
from rigl import train_lib
from rigl.imagenet_resnet import imagenet_model
from rigl.imagenet_resnet import imagenet_train_eval as ite

import imagenet_data  # pylint: disable=g-bad-import-order
import tf1_checkpoint_writer  # pylint: disable=g-bad-import-order
from test_multi_worker import _free_ports  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('--model_architecture=resnet', '--resnet_depth=18', '--width=0.125',
        '--image_size=32', '--num_label_classes=10', '--train_batch_size=4',
        '--eval_batch_size=4', '--num_eval_images=6', '--iterations_per_loop=2',
        '--train_steps=4', '--steps_per_eval=2', '--steps_per_checkpoint=2',
        '--summary_steps=2', '--use_folder_stub=False', '--maskupdate_frequency=2',
        '--end_sparsity=0.8', '--mask_init_method=erdos_renyi_kernel')


def parse(output_dir, *args):
  ite.FLAGS.unparse_flags()
  script_flags.parse(ite.FLAGS, ['imagenet_train_eval', f'--output_dir={output_dir}',
                                 *TINY, *args], ite.SCRIPT_NAME)


def run_script(output_dir, *args):
  """Runs the script with TINY and `args` in this process; returns (record, loop)."""
  parse(output_dir, *args)
  try:
    loop = ite.setup()
    return ite.run(loop), loop
  finally:
    ite.FLAGS.unparse_flags()


def script_env(**extra):
  return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3', **extra)


def mask_zero_counts(model):
  return {m.path.split('/')[-2]: int(np.sum(m.numpy() == 0))
          for m in layers.get_masks(model)}


def checkpoint_values(directory):
  reader = tf.train.load_checkpoint(str(directory))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k != '_CHECKPOINTABLE_OBJECT_GRAPH' and 'save_counter' not in k}


@pytest.fixture(scope='module')
def tfrecord_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('imagenet')
  imagenet_data.write_imagenet(str(directory), train_files=2, train_per_file=6,
                               validation=6)
  return str(directory)


@pytest.fixture(scope='module')
def validation_only_dir(tmp_path_factory):
  """What people who download a released checkpoint keep: the validation files only."""
  directory = tmp_path_factory.mktemp('imagenet_validation')
  imagenet_data.write_imagenet(str(directory), train_files=0, validation=6)
  return str(directory)


def event_steps(directory):
  """{tag: [steps]} of the TensorBoard events in `directory`."""
  steps = {}
  for path in tf.io.gfile.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(event.step)
  return steps


# --- Every method, on synthetic data ----------------------------------------------------

METHOD_FLAGS = {
    'baseline': (), 'rigl': (), 'snip': (), 'dnw': (),
    'prune': ('--sparsity_begin_step=0', '--sparsity_end_step=2', '--pruning_frequency=1'),
}


# The method -> optimizer dispatch is shared by the scripts (rigl.training_methods) and
# every method runs through it in the MNIST and char-LM scripts' tests; here, the methods
# whose runs take paths of their own in a script: no sparse optimizer, a one-shot mask,
# dense kernels, a pruning schedule, and drop-and-grow updates.
@pytest.mark.parametrize('method', sorted(METHOD_FLAGS))
def test_methods_of_their_own_paths_train_to_their_sparsity(tmp_path, method):
  record, loop = run_script(tmp_path, f'--training_method={method}', '--mode=train',
                            *METHOD_FLAGS[method])
  assert record is None
  assert loop.global_step == 4
  measured = sparse_utils.sparsity_summary(layers.get_masks(loop.model))
  if method == 'baseline':
    assert float(measured['global']) == 0.0  # masked layers, all-ones masks
  else:
    assert float(measured['global']) == pytest.approx(0.8, abs=0.01)
  assert (tmp_path / 'model.ckpt-4.index').exists()
  assert json.loads((tmp_path / 'flags.json').read_text())['training_method'] == method


# --- Real JPEGs, evaluation, eval_once ----------------------------------------------------

def test_train_and_eval_on_tfrecords_then_eval_once(tmp_path, tfrecord_dir):
  record, loop = run_script(tmp_path, '--training_method=rigl', '--mode=train_and_eval',
                            f'--data_directory={tfrecord_dir}', '--first_layer_sparsity=-1')
  assert loop.global_step == 4
  for step in (2, 4):
    written = json.loads((tmp_path / f'eval_{step}.json').read_text())
    assert set(written) >= {'eval_accuracy', 'top_5_eval_accuracy', 'cross_loss',
                            'global_step', 'per_layer_sparsity'}
  assert written == record
  assert 0 <= record['eval_accuracy'] <= record['top_5_eval_accuracy'] <= 1
  assert record['per_layer_sparsity']['initial_conv'] > 0  # --first_layer_sparsity=-1
  again, _ = run_script(tmp_path, '--training_method=rigl', '--mode=eval_once',
                        f'--data_directory={tfrecord_dir}', '--first_layer_sparsity=-1',
                        '--eval_once_ckpt_prefix=model.ckpt-4')
  # The checkpoint of the 4th and last step, evaluated again: the same record.
  assert again == record and again['global_step'] == 4
  assert json.loads((tmp_path / 'eval_once_model.ckpt-4.json').read_text()) == again
  assert event_steps(tmp_path / 'eval_model.ckpt-4')['accuracy'] == [4]


def test_evaluation_needs_only_the_validation_files(tmp_path, validation_only_dir, caplog):
  trained, _ = run_script(tmp_path, '--training_method=rigl', '--mode=train_and_eval')
  caplog.clear()
  for mode in ('eval_once', 'eval'):
    evaluated, _ = run_script(tmp_path, '--training_method=rigl', f'--mode={mode}',
                              f'--data_directory={validation_only_dir}')
    assert evaluated['global_step'] == trained['global_step'] == 4
  # Evaluation reads only the model out of checkpoints that also hold the optimizer.
  assert not [r for r in caplog.records if 'could not be found' in r.getMessage()]
  with pytest.raises(datasets.DataError, match=r'has no train-\* files'):
    run_script(tmp_path / 'again', '--training_method=rigl', '--mode=train',
               f'--data_directory={validation_only_dir}')


def test_folder_stub_and_gin_config(tmp_path):
  config = tmp_path / 'run.gin'
  config.write_text("imagenet_train_eval.training_method = 'set'\n"
                    'imagenet_train_eval.drop_fraction = 0.5\n'
                    'imagenet_train_eval.train_steps = 3\n')
  _, loop = run_script(tmp_path, f'--gin_config={config}', '--use_folder_stub=True',
                       '--mode=train', '--train_steps=2', '--maskupdate_end_step=100',
                       '--training_steps_multiplier=2')
  # The stub of the original, with the multiplied steps; the command line beat gin's
  # train_steps, gin beat the default drop_fraction.
  expected = tmp_path / 'set' / '0.8' / '0' / '200' / '2' / '0.5' / '0.1' / '0.0001'
  assert loop.config.output_dir == str(expected)
  assert loop.global_step == 4
  flags_json = json.loads((expected / 'flags.json').read_text())
  assert flags_json['drop_fraction'] == 0.5 and flags_json['train_steps'] == 2
  assert 'drop_fraction = 0.5' in (expected / 'operative_config.gin').read_text()


# --- Resuming, strategies, precision, export ------------------------------------------------

class _Interrupt(Exception):
  pass


def test_interrupted_run_resumes_to_the_same_weights_and_masks(tmp_path, monkeypatch):
  args = ('--training_method=rigl', '--mode=train', '--train_steps=6')
  run_script(tmp_path / 'straight', *args)

  original_save = train_lib.TrainLoop.save

  def save_then_die(loop):
    path = original_save(loop)
    if loop.global_step >= 2:
      raise _Interrupt()
    return path

  monkeypatch.setattr(train_lib.TrainLoop, 'save', save_then_die)
  with pytest.raises(_Interrupt):
    run_script(tmp_path / 'resumed', *args)
  monkeypatch.setattr(train_lib.TrainLoop, 'save', original_save)
  _, loop = run_script(tmp_path / 'resumed', *args)
  assert loop.initial_step == 2 and loop.global_step == 6
  straight, resumed = (checkpoint_values(tmp_path / d) for d in ('straight', 'resumed'))
  assert straight.keys() == resumed.keys()
  for key, value in straight.items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_a_run_is_resumed_only_with_its_own_flags(tmp_path):
  args = ('--training_method=rigl', '--mode=train')
  run_script(tmp_path, *args)
  recorded = (tmp_path / 'flags.json').read_text()
  with pytest.raises(ValueError, match=r'--end_sparsity=0.8 there, 0.9 now.*would resume'):
    run_script(tmp_path, *args, '--end_sparsity=0.9')
  with pytest.raises(ValueError, match=r'--train_steps=4 there, 2 now \(it may grow'):
    run_script(tmp_path, *args, '--train_steps=2')
  with pytest.raises(ValueError, match=r'--training_method=.rigl. there, .set. now.*'
                     r'--mode=eval_once would evaluate another model'):
    run_script(tmp_path, '--training_method=set', '--mode=eval_once')
  assert (tmp_path / 'flags.json').read_text() == recorded
  # More steps continue the run; where the summaries go and how often may change.
  _, loop = run_script(tmp_path, *args, '--train_steps=6', '--summary_steps=3')
  assert loop.initial_step == 4 and loop.global_step == 6
  assert json.loads((tmp_path / 'flags.json').read_text())['train_steps'] == 6


@pytest.mark.parametrize('output_dir, message', [
    ('{file}', r"--output_dir=.*a_file'.* is a file, not a directory"),
    ('/proc/rigl_run', r"--output_dir='/proc/rigl_run': cannot create"),
])
def test_an_output_dir_that_cannot_be_written_is_one_clear_error(tmp_path, output_dir,
                                                                 message):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(ValueError, match=message):
    run_script(output_dir.format(file=tmp_path / 'a_file'), '--mode=train')


def test_mirrored_strategy_keeps_replicas_identical(tmp_path, monkeypatch,
                                                    mirrored_strategy):
  monkeypatch.setattr(train_lib, 'make_strategy', lambda *args: mirrored_strategy)
  _, loop = run_script(tmp_path, '--training_method=rigl', '--mode=train')
  assert loop.strategy is mirrored_strategy and loop.global_step == 4
  for mask in layers.get_masks(loop.model):
    first, second = (v.numpy() for v in mask.value.values)
    np.testing.assert_array_equal(first, second)


def test_two_workers_over_loopback_end_with_identical_masks(tmp_path, tfrecord_dir):
  cluster = {'worker': [f'localhost:{port}' for port in _free_ports(2)]}
  out = tmp_path / 'run'
  workers = []
  for index in range(2):
    tf_config = json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
    workers.append(subprocess.Popen(
        [sys.executable, '-m', 'rigl.imagenet_resnet.imagenet_train_eval',
         f'--output_dir={out}', *TINY, '--training_method=rigl', '--mode=train',
         f'--data_directory={tfrecord_dir}'],
        env=script_env(TF_CONFIG=tf_config), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  for worker in workers:
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output[-3000:]
  chief, other = checkpoint_values(out), checkpoint_values(out / 'worker_1')
  masks = [k for k in chief if '/_masks/' in k]
  assert len(masks) == 21  # every conv of ResNet-18 but the first, and final_dense
  for key in masks + [k for k in chief if '/kernel/' in k]:
    np.testing.assert_array_equal(other[key], chief[key], err_msg=key)


def test_bfloat16_trains_with_exact_binary_masks(tmp_path):
  _, loop = run_script(tmp_path, '--training_method=rigl', '--mode=train',
                       '--precision=bfloat16')
  assert loop.model.get_layer('initial_conv').compute_dtype == 'bfloat16'
  assert loop.model.output.dtype == 'float32' or loop.model.outputs[0].dtype in (
      'float32', 'bfloat16')
  for mask in layers.get_masks(loop.model):
    assert mask.dtype == 'float32'
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
  assert float(sparse_utils.calculate_sparsity(layers.get_masks(loop.model))) == (
      pytest.approx(0.8, abs=0.01))


def test_exported_saved_model_predicts_what_the_model_predicts(tmp_path):
  _, loop = run_script(tmp_path, '--training_method=set', '--mode=train',
                       '--export_model_freq=2')
  exported = sorted(os.listdir(tmp_path / ite.EXPORT_DIR))
  assert exported == ['2', '4']
  serving = tf.saved_model.load(str(tmp_path / ite.EXPORT_DIR / '4'))
  images = np.random.RandomState(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
  outputs = serving.signatures['serving_default'](inputs=tf.constant(images))
  expected = loop.model(images, training=False).numpy()
  np.testing.assert_allclose(outputs['logits'].numpy(), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(outputs['classes'].numpy(), expected.argmax(-1))


# --- ERK on ResNet-50, as the original computes it ------------------------------------------

# The reference's table of ResNet-50's masked layers (§3.11), in creation order: the TF1
# scope below `resnet_model/` and the kernel shape.
RESNET_50_LAYERS = (
    ('initial_conv', (7, 7, 3, 64)),
    ('bottleneck_projection_block_group_projection_block_group1', (1, 1, 64, 256)),
    ('bottleneck_1_block_group_projection_block_group1', (1, 1, 64, 64)),
    ('bottleneck_2_block_group_projection_block_group1', (3, 3, 64, 64)),
    ('bottleneck_3_block_group_projection_block_group1', (1, 1, 64, 256)),
    ('bottleneck_1_block_group1_1_1', (1, 1, 256, 64)),
    ('bottleneck_2_block_group1_1_1', (3, 3, 64, 64)),
    ('bottleneck_3_block_group1_1_1', (1, 1, 64, 256)),
    ('bottleneck_1_block_group1_2_1', (1, 1, 256, 64)),
    ('bottleneck_2_block_group1_2_1', (3, 3, 64, 64)),
    ('bottleneck_3_block_group1_2_1', (1, 1, 64, 256)),
    ('bottleneck_projection_block_group_projection_block_group2', (1, 1, 256, 512)),
    ('bottleneck_1_block_group_projection_block_group2', (1, 1, 256, 128)),
    ('bottleneck_2_block_group_projection_block_group2', (3, 3, 128, 128)),
    ('bottleneck_3_block_group_projection_block_group2', (1, 1, 128, 512)),
    ('bottleneck_1_block_group2_1_1', (1, 1, 512, 128)),
    ('bottleneck_2_block_group2_1_1', (3, 3, 128, 128)),
    ('bottleneck_3_block_group2_1_1', (1, 1, 128, 512)),
    ('bottleneck_1_block_group2_2_1', (1, 1, 512, 128)),
    ('bottleneck_2_block_group2_2_1', (3, 3, 128, 128)),
    ('bottleneck_3_block_group2_2_1', (1, 1, 128, 512)),
    ('bottleneck_1_block_group2_3_1', (1, 1, 512, 128)),
    ('bottleneck_2_block_group2_3_1', (3, 3, 128, 128)),
    ('bottleneck_3_block_group2_3_1', (1, 1, 128, 512)),
    ('bottleneck_projection_block_group_projection_block_group3', (1, 1, 512, 1024)),
    ('bottleneck_1_block_group_projection_block_group3', (1, 1, 512, 256)),
    ('bottleneck_2_block_group_projection_block_group3', (3, 3, 256, 256)),
    ('bottleneck_3_block_group_projection_block_group3', (1, 1, 256, 1024)),
    ('bottleneck_1_block_group3_1_1', (1, 1, 1024, 256)),
    ('bottleneck_2_block_group3_1_1', (3, 3, 256, 256)),
    ('bottleneck_3_block_group3_1_1', (1, 1, 256, 1024)),
    ('bottleneck_1_block_group3_2_1', (1, 1, 1024, 256)),
    ('bottleneck_2_block_group3_2_1', (3, 3, 256, 256)),
    ('bottleneck_3_block_group3_2_1', (1, 1, 256, 1024)),
    ('bottleneck_1_block_group3_3_1', (1, 1, 1024, 256)),
    ('bottleneck_2_block_group3_3_1', (3, 3, 256, 256)),
    ('bottleneck_3_block_group3_3_1', (1, 1, 256, 1024)),
    ('bottleneck_1_block_group3_4_1', (1, 1, 1024, 256)),
    ('bottleneck_2_block_group3_4_1', (3, 3, 256, 256)),
    ('bottleneck_3_block_group3_4_1', (1, 1, 256, 1024)),
    ('bottleneck_1_block_group3_5_1', (1, 1, 1024, 256)),
    ('bottleneck_2_block_group3_5_1', (3, 3, 256, 256)),
    ('bottleneck_3_block_group3_5_1', (1, 1, 256, 1024)),
    ('bottleneck_projection_block_group_projection_block_group4', (1, 1, 1024, 2048)),
    ('bottleneck_1_block_group_projection_block_group4', (1, 1, 1024, 512)),
    ('bottleneck_2_block_group_projection_block_group4', (3, 3, 512, 512)),
    ('bottleneck_3_block_group_projection_block_group4', (1, 1, 512, 2048)),
    ('bottleneck_1_block_group4_1_1', (1, 1, 2048, 512)),
    ('bottleneck_2_block_group4_1_1', (3, 3, 512, 512)),
    ('bottleneck_3_block_group4_1_1', (1, 1, 512, 2048)),
    ('bottleneck_1_block_group4_2_1', (1, 1, 2048, 512)),
    ('bottleneck_2_block_group4_2_1', (3, 3, 512, 512)),
    ('bottleneck_3_block_group4_2_1', (1, 1, 512, 2048)),
    ('final_dense', (2048, 1000)),
)


def _erk_zero_counts(shapes, sparsity, custom):
  """The original's ERK (reference §1.2), written out here on its own."""
  dense = set()
  while True:
    rhs, divisor, raw = 0.0, 0.0, {}
    for name, shape in shapes.items():
      n = int(np.prod(shape))
      zeros = int(np.floor(sparsity * n))
      if name in dense:
        rhs -= zeros
      elif name not in custom:
        rhs += n - zeros
        raw[name] = (np.sum(shape) / np.prod(shape))
        divisor += raw[name] * n
    eps = rhs / divisor
    top = max(raw.values())
    if top * eps <= 1:
      break
    dense |= {name for name, value in raw.items() if value == top}
  result = {}
  for name, shape in shapes.items():
    n = int(np.prod(shape))
    s = custom.get(name, 0.0 if name in dense else 1 - eps * raw[name])
    result[name] = int(np.floor(s * n))
  return result


def test_resnet50_masks_are_exactly_erk(tmp_path):
  parse(tmp_path, '--resnet_depth=50', '--width=1', '--image_size=32',
        '--num_label_classes=1000', '--first_layer_sparsity=-1', '--training_method=rigl',
        '--train_steps=0', '--mode=train')
  try:
    loop = ite.setup()
  finally:
    ite.FLAGS.unparse_flags()
  masks = {m.path.split('/')[-2]: tuple(m.shape) for m in layers.get_masks(loop.model)}
  assert masks == dict(RESNET_50_LAYERS)
  assert mask_zero_counts(loop.model) == _erk_zero_counts(dict(RESNET_50_LAYERS), 0.8, {})


class _TF1Mask:
  def __init__(self, scope, shape):
    self.name, self.shape = f'resnet_model/{scope}/mask:0', shape


# The released ERK checkpoints: every layer masked, but the 99% ones' first layer (dense,
# so not masked at all: `--first_layer_sparsity=0`).
@pytest.mark.parametrize('sparsity, first_masked', [
    (0.8, True), (0.9, True), (0.95, True), (0.965, True), (0.99, False)])
def test_erk_of_the_released_resnet50_checkpoints(sparsity, first_masked):
  shapes = dict(RESNET_50_LAYERS if first_masked else RESNET_50_LAYERS[1:])
  sparsities = sparse_utils.get_sparsities(
      [_TF1Mask(scope, shape) for scope, shape in shapes.items()], 'erdos_renyi_kernel',
      sparsity)
  zeros = {name.split('/')[1]: int(np.floor(s * np.prod(shapes[name.split('/')[1]])))
           for name, s in sparsities.items()}
  assert zeros == _erk_zero_counts(shapes, sparsity, {})
  # ERK keeps the uniform budget of ones over the layers (up to one per layer's rounding).
  ones = sum(np.prod(shape) for shape in shapes.values()) - sum(zeros.values())
  uniform_ones = sum(np.prod(s) - np.floor(sparsity * np.prod(s)) for s in shapes.values())
  assert abs(ones - uniform_ones) <= len(shapes)


# --- Bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize('args, message', [
    (('--model_architecture=alexnet',), 'model_architecture'),
    (('--training_method=lottery',), 'training_method'),
    (('--precision=float16',), 'precision'),
    (('--end_sparsity=1.2',), 'end_sparsity'),
])
def test_bad_flag_values_are_rejected_when_parsed(tmp_path, args, message):
  with pytest.raises(Exception, match=message):
    parse(tmp_path, *args)
  ite.FLAGS.unparse_flags()


@pytest.mark.parametrize('args, message', [
    (('--training_method=rigl', '--mask_init_method='), 'needs a sparsity distribution'),
    (('--model_architecture=mobilenet_v1', '--first_layer_sparsity=0.5'),
     'mobilenet_v1 never masks its first layer'),
    (('--data_directory={empty}',), 'has no train-\\* files'),
    (('--use_tpu', '--tpu=grpc://127.0.0.1:1'), 'could not connect'),
    (('--resnet_depth=42',), 'resnet_depth=42'),
])
def test_bad_configurations_fail_at_start_up(tmp_path, args, message):
  args = [a.format(empty=tmp_path) for a in args]
  with pytest.raises((ValueError, datasets.DataError), match=message):
    run_script(tmp_path / 'run', *args)


def test_the_original_file_form_fails_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'rigl', 'imagenet_resnet',
                                    'imagenet_train_eval.py'),
       f'--output_dir={tmp_path}', '--training_method=set', '--mask_init_method='],
      env=script_env(), capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert 'needs a sparsity distribution' in result.stderr
  assert 'Traceback' not in result.stderr


def test_help_into_a_pipe_whose_reader_left_is_quiet(tmp_path, run_into_a_closed_pipe):
  result = run_into_a_closed_pipe(
      [sys.executable, '-m', 'rigl.imagenet_resnet.imagenet_train_eval', '--help'],
      env=script_env(), cwd=tmp_path, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and 'BrokenPipeError' not in result.stderr


def test_an_output_dir_that_is_a_file_stops_the_script_with_one_line(tmp_path):
  (tmp_path / 'a_file').write_text('')
  result = subprocess.run(
      [sys.executable, '-m', 'rigl.imagenet_resnet.imagenet_train_eval',
       f'--output_dir={tmp_path / "a_file"}', '--mask_init_method=random'],
      env=script_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"imagenet_train_eval: error: --output_dir='{tmp_path / 'a_file'}': "
      f"'{tmp_path / 'a_file'}' is a file, not a directory; choose another --output_dir.")


# --- The original's TF1 checkpoints ---------------------------------------------------------

def _reference_eval(tfrecord_dir, forward, label_smoothing=0.1, classes=10):
  """Top-1, top-5 and cross_loss of the original's eval path, computed here."""
  images, labels = [], []
  for record in tf.data.TFRecordDataset(
      sorted(tf.io.gfile.glob(os.path.join(tfrecord_dir, 'validation-*')))):
    parsed = tf.io.parse_single_example(record, {
        'image/encoded': tf.io.FixedLenFeature((), tf.string),
        'image/class/label': tf.io.FixedLenFeature([], tf.int64)})
    jpeg = parsed['image/encoded']
    height, width = tf.image.extract_jpeg_shape(jpeg).numpy()[:2]
    crop = int(32 / (32 + 32) * min(height, width))  # image_size / (image_size + 32)
    window = [((height - crop) + 1) // 2, ((width - crop) + 1) // 2, crop, crop]
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    images.append(tf.compat.v1.image.resize_bicubic([image], [32, 32])[0].numpy())
    labels.append(int(parsed['image/class/label']) - 1)
  logits = forward(np.stack(images)).numpy()
  labels = np.array(labels)
  ranks = np.argsort(-logits, axis=1)
  targets = np.eye(classes)[labels] * (1 - label_smoothing) + label_smoothing / classes
  log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  return {'eval_accuracy': float(np.mean(ranks[:, 0] == labels)),
          'top_5_eval_accuracy': float(np.mean([l in r[:5] for l, r in zip(labels, ranks)])),
          'cross_loss': float(np.mean(-(targets * log_softmax).sum(1)))}


@pytest.mark.parametrize('first_masked, readme_flags', [
    (True, ('--training_method=rigl', '--mask_init_method=erdos_renyi_kernel',
            '--first_layer_sparsity=-1')),
    (False, ('--training_method=rigl', '--mask_init_method=random',
             '--first_layer_sparsity=0')),
    # The original README's form for the pruning baseline's `s80_model.ckpt-1280000`
    # (`--mask_init_method=` puts back the script's default, which TINY changes).
    (False, ('--training_method=baseline', '--eval_batch_size=100', '--mask_init_method=')),
])
def test_readme_eval_once_on_a_tf1_checkpoint(tmp_path, tfrecord_dir, first_masked,
                                              readme_flags):
  arrays, forward = tf1_checkpoint_writer.resnet(18, 0.125, 10, first_masked, True)
  tf1_checkpoint_writer.write(arrays, str(tmp_path / 'model.ckpt-3200000'),
                              state_file=False)
  record, _ = run_script(tmp_path, '--mode=eval_once', f'--data_directory={tfrecord_dir}',
                         '--eval_once_ckpt_prefix=model.ckpt-3200000',
                         '--use_folder_stub=False', *readme_flags)
  expected = _reference_eval(tfrecord_dir, forward)
  assert record['eval_accuracy'] == expected['eval_accuracy']
  assert record['top_5_eval_accuracy'] == expected['top_5_eval_accuracy']
  assert record['cross_loss'] == pytest.approx(expected['cross_loss'], abs=1e-3)
  assert record['global_step'] == 3200000
  written = json.loads((tmp_path / 'eval_once_model.ckpt-3200000.json').read_text())
  assert set(written) >= {'eval_accuracy', 'top_5_eval_accuracy', 'cross_loss',
                          'global_step', 'per_layer_sparsity'}
  assert written['per_layer_sparsity']['residual_1_block_group1_1_1'] == pytest.approx(
      1 - arrays['resnet_model/residual_1_block_group1_1_1/mask'].mean())


def test_readme_eval_once_with_the_wrong_first_layer_flag_names_it(tmp_path, tfrecord_dir):
  arrays, _ = tf1_checkpoint_writer.resnet(18, 0.125, 10, True, True)
  tf1_checkpoint_writer.write(arrays, str(tmp_path / 'model.ckpt-3200000'))
  with pytest.raises(ValueError, match='use --first_layer_sparsity=-1'):
    run_script(tmp_path, '--mode=eval_once', f'--data_directory={tfrecord_dir}',
               '--eval_once_ckpt_prefix=model.ckpt-3200000', '--training_method=rigl',
               '--mask_init_method=random', '--first_layer_sparsity=0')


def test_load_mask_dir_and_initial_value_checkpoint_only_when_a_run_starts(tmp_path):
  arrays, _ = tf1_checkpoint_writer.resnet(18, 0.125, 10, False, True)
  source = tf1_checkpoint_writer.write(arrays, str(tmp_path / 'source' / 'model.ckpt-9'))
  args = ('--training_method=scratch', '--mode=train', '--train_steps=2',
          '--mask_init_method=', f'--load_mask_dir={tmp_path / "source"}',
          f'--initial_value_checkpoint={source}', '--maskupdate_frequency=100')
  # Capture the model right after the loads, before any training step.
  loaded = {}
  original_train = train_lib.TrainLoop.train

  def record_then_train(loop, *a, **k):
    if not loaded:
      loaded.update({v.path: v.numpy().copy() for v in loop.model.weights})
    return original_train(loop, *a, **k)

  train_lib.TrainLoop.train = record_then_train
  try:
    _, loop = run_script(tmp_path / 'run', *args)
  finally:
    train_lib.TrainLoop.train = original_train
  for layer in loop.model.layers:
    for weight in layer.weights:
      role = tf1_checkpoints.variable_role(layer, weight)
      name = tf1_checkpoints.name_candidates(
          imagenet_model.tf1_scope(loop.model, layer), layer, role)[0]
      expected = arrays[name]
      if role == 'kernel' and isinstance(layer, layers.MASKED_LAYERS):
        # The loaded mask zeroes the inactive weights.
        expected = expected * arrays[tf1_checkpoints.name_candidates(
            imagenet_model.tf1_scope(loop.model, layer), layer, 'mask')[0]]
      if role in ('mask', 'kernel', 'bias', 'gamma', 'beta'):
        np.testing.assert_array_equal(loaded[weight.path], expected, err_msg=name)
      else:  # moving statistics start fresh
        assert not np.array_equal(loaded[weight.path], arrays[name]), name
  # Masks are loaded only when a run starts: resuming with another --load_mask_dir would
  # leave a record that names masks the run never had, so it is refused.
  other, _ = tf1_checkpoint_writer.resnet(18, 0.125, 10, False, True, seed=5)
  tf1_checkpoint_writer.write(other, str(tmp_path / 'other' / 'model.ckpt-1'))
  recorded = (tmp_path / 'run' / 'flags.json').read_text()
  with pytest.raises(ValueError, match=r'--load_mask_dir=.*source.* there, .*other.* now'):
    run_script(tmp_path / 'run', *args[:4], f'--load_mask_dir={tmp_path / "other"}',
               *args[5:], '--train_steps=4')
  assert (tmp_path / 'run' / 'flags.json').read_text() == recorded
