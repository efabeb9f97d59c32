"""Tests of the CIFAR-10 WideResNet, its data pipeline and rigl.cifar_resnet.resnet_train_eval."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rigl import datasets
from rigl import layers
from rigl import script_flags
from rigl import sparse_utils
from rigl import train_lib
from rigl.cifar_resnet import data_helper
from rigl.cifar_resnet import resnet_model
from rigl.cifar_resnet import resnet_train_eval as rte

# --- The model --------------------------------------------------------------------------


def _wrn_parameters(depth, width, classes=10):
  """WRN-d-k's trainable parameters, counted here from the architecture."""
  n = (depth - 4) // 6
  total = 3 * 3 * 3 * 16  # conv_1
  channels = 16
  for filters in (16 * width, 32 * width, 64 * width):
    for block in range(n):
      total += 2 * channels  # pre-activation batch norm: gamma, beta
      if channels != filters:
        total += channels * filters  # 1x1 skip convolution
      total += 9 * channels * filters + 2 * filters + 9 * filters * filters
      channels = filters
  total += 2 * channels  # final batch norm
  return total + channels * classes + classes  # logits with bias


def test_wrn_22_2_has_the_papers_parameter_count():
  model = resnet_model.wide_resnet(22, 2, pruning_method='threshold')
  trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  assert trainable == _wrn_parameters(22, 2) == 1079642


def test_names_masking_and_forward_pass():
  model = resnet_model.wide_resnet(16, 4, pruning_method='threshold')
  masked = [l.name for l in layers.masked_layers(model)]
  assert 'conv_1' not in masked  # prune_first_layer=False by default
  assert {'conv_2_0_1', 'conv_2_0_2', 'skip_conv_2', 'skip_conv_3', 'conv_4_1_2',
          'logits'} <= set(masked)
  assert model.get_layer('skip_conv_3').strides == (2, 2)
  assert model.get_layer('skip_conv_3').padding == 'valid'
  norms = [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert norms[0] == 'batch_normalization' and norms[-1] == 'batch_normalization_12'
  assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)
  dense = resnet_model.wide_resnet(16, 4, pruning_method='baseline')
  assert not layers.masked_layers(dense)
  with pytest.raises(ValueError, match='6n \\+ 4.*21'):
    resnet_model.wide_resnet(21, 2)


# --- The data ---------------------------------------------------------------------------

def test_padding_mirrors_the_border_pixel_too():
  image = tf.reshape(tf.range(6 * 5 * 3, dtype=tf.float32), (6, 5, 3))
  padded = data_helper.pad_input(image, pad=2).numpy()
  np.testing.assert_array_equal(
      padded, np.pad(image.numpy(), ((2, 2), (2, 2), (0, 0)), mode='symmetric'))


def test_training_preprocessing_crops_and_flips_reproducibly():
  image = tf.random.stateless_uniform((32, 32, 3), [1, 2], maxval=255)
  standardized = data_helper.standardize(image)
  assert abs(float(tf.reduce_mean(standardized))) < 1e-5
  out = [data_helper.preprocess_train(standardized, tf.constant([0, i], tf.int64)).numpy()
         for i in range(4)]
  assert all(o.shape == (32, 32, 3) for o in out)
  np.testing.assert_array_equal(
      data_helper.preprocess_train(standardized, tf.constant([0, 0], tf.int64)), out[0])
  assert len({o.tobytes() for o in out}) > 1


def test_without_prepared_data_or_network_the_error_is_immediate(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, 'download_host_reachable', lambda: False)
  with pytest.raises(datasets.DataError, match='unreachable.*prepare TFDS'):
    data_helper.Cifar10Input(str(tmp_path), 8).check()


# --- Per-class metrics ------------------------------------------------------------------

def test_per_class_precision_and_recall_on_a_hand_made_batch(tmp_path):
  # The model predicts the class whose one-hot is its input. Per class:
  # a: predicted at 0, 1, 2 (right at 0, 1): precision 2/3; labelled at 0, 1: recall 1;
  # b: predicted at 3 (wrong): precision 0; labelled at 2, 4: recall 0;
  # c: predicted at 4, 5 (right at 5): precision 1/2; labelled at 3, 5: recall 1/2.
  predicted = np.array([0, 0, 0, 1, 2, 2])
  labels = np.array([0, 0, 1, 2, 1, 2])
  features = np.eye(3, dtype=np.float32)[predicted] * 5

  def build():
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(3, use_bias=False, name='identity')])
    model.get_layer('identity').set_weights([np.eye(3, dtype=np.float32)])
    return model

  def eval_input_fn(context):
    del context
    return tf.data.Dataset.from_tensor_slices((features, labels))

  loop = train_lib.TrainLoop(
      build, lambda: keras.optimizers.SGD(0.1),
      lambda y, logits: keras.losses.sparse_categorical_crossentropy(
          y, logits, from_logits=True), None, eval_input_fn,
      train_lib.LoopConfig(str(tmp_path), 0, eval_batch_size=4, eval_examples=6),
      class_names=['a', 'b', 'c'])
  metrics = loop.evaluate()
  expected = {'a': (2 / 3, 1.0), 'b': (0.0, 0.0), 'c': (1 / 2, 1 / 2)}
  for name, (precision, recall) in expected.items():
    assert metrics[f'class_level_summaries/precision/{name}'] == pytest.approx(precision)
    assert metrics[f'class_level_summaries/recall/{name}'] == pytest.approx(recall)
  assert metrics['accuracy'] == pytest.approx(3 / 6)


# --- The script ---------------------------------------------------------------------------

TINY = ('--resnet_depth=10', '--resnet_width=1', '--batch_size=4', '--max_steps=4',
        '--checkpoint_steps=2', '--summaries_steps=2', '--steps_per_execution=2',
        '--maskupdate_frequency=2', '--mask_init_method=erdos_renyi_kernel',
        '--use_folder_stub=False')
METHOD_FLAGS = {
    'baseline': (), 'rigl': (), 'dnw': (),
    'prune': ('--sparsity_begin_step=0', '--sparsity_end_step=2', '--pruning_frequency=1'),
}


@pytest.fixture
def mock_cifar(monkeypatch):
  monkeypatch.setattr(datasets, 'download_host_reachable', lambda: True)
  with tfds.testing.mock_data(num_examples=10):
    yield


def run_script(train_dir, *args):
  rte.FLAGS.unparse_flags()
  try:
    script_flags.parse(rte.FLAGS, ['resnet_train_eval', f'--train_dir={train_dir}', *TINY,
                                   *args], rte.SCRIPT_NAME)
    loop, recorder = rte.setup()
    return rte.run(loop, recorder), loop
  finally:
    rte.FLAGS.unparse_flags()


# The method -> optimizer dispatch is shared by the scripts (rigl.training_methods) and
# every method runs through it in the MNIST and char-LM scripts' tests; here, the methods
# whose runs take paths of their own in a script: no sparse optimizer, a one-shot mask,
# dense kernels, a pruning schedule, and drop-and-grow updates.
@pytest.mark.parametrize('method', sorted(METHOD_FLAGS))
def test_methods_of_their_own_paths_train_to_their_sparsity(tmp_path, mock_cifar, method):
  summary, loop = run_script(tmp_path, f'--training_method={method}',
                             '--mode=train_and_eval', *METHOD_FLAGS[method])
  assert summary['steps'] == 4 and loop.global_step == 4
  masks = layers.get_masks(loop.model)
  if method == 'baseline':
    assert not masks  # the original's baseline is a plain model
  else:
    assert float(sparse_utils.calculate_sparsity(masks)) == pytest.approx(0.9, abs=0.01)
  written = json.loads((tmp_path / 'summary.json').read_text())
  assert written['eval_accuracy'] == summary['eval_accuracy']
  assert len(written['per_class']) == 20
  assert len(json.loads((tmp_path / 'history.json').read_text())) == 2
  assert (tmp_path / 'training_curves.png').read_bytes().startswith(b'\x89PNG')


def test_gin_config_of_the_paper_starts_the_wrn_22_2_run(tmp_path, mock_cifar):
  # The shipped config, with the tiny settings on the command line winning over it.
  summary, loop = run_script(tmp_path, '--gin_config=configs/cifar_wrn22_2_rigl_erk_90.gin',
                             '--resnet_depth=10', '--resnet_width=1', '--mode=train')
  flags_json = json.loads((tmp_path / 'flags.json').read_text())
  assert flags_json['training_method'] == 'rigl'
  assert flags_json['mask_init_method'] == 'erdos_renyi_kernel'
  assert flags_json['end_sparsity'] == 0.9
  assert flags_json['resnet_depth'] == 10  # the command line won
  assert summary['steps'] == 4
  del loop


def test_a_run_is_resumed_only_with_its_own_flags(tmp_path, mock_cifar):
  args = ('--training_method=rigl', '--mode=train')
  first, _ = run_script(tmp_path, *args)
  recorded = (tmp_path / 'flags.json').read_text()
  with pytest.raises(ValueError, match=r'--end_sparsity=0.9 there, 0.8 now.*would resume'):
    run_script(tmp_path, *args, '--end_sparsity=0.8')
  with pytest.raises(ValueError, match=r'--max_steps=4 there, 2 now \(it may grow'):
    run_script(tmp_path, *args, '--max_steps=2')
  assert (tmp_path / 'flags.json').read_text() == recorded
  # Run again as it was: nothing is trained, and the record keeps its training time.
  again, _ = run_script(tmp_path, *args)
  assert again['resumed_from_step'] == 4 and again['steps'] == 4
  assert again['train_seconds'] == first['train_seconds'] > 0
  longer, _ = run_script(tmp_path, *args, '--max_steps=6', '--checkpoint_steps=3')
  assert longer['resumed_from_step'] == 4 and longer['steps'] == 6


@pytest.mark.parametrize('train_dir, message', [
    ('{file}', r"--train_dir=.*a_file'.* is a file, not a directory"),
    ('/proc/rigl_run', r"--train_dir='/proc/rigl_run': cannot create"),
])
def test_a_train_dir_that_cannot_be_written_is_one_clear_error(tmp_path, train_dir, message):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(ValueError, match=message):
    run_script(train_dir.format(file=tmp_path / 'a_file'), '--mode=train')
