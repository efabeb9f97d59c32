"""Tests of rigl.export: folded masks, SavedModel, TFLite in LiteRT, sizes, the command."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import export
from rigl import layers
from rigl import sparse_layers
from rigl import sparse_utils
from rigl.imagenet_resnet import imagenet_model
from rigl.mnist import mnist_model
from rigl.mnist import mnist_train_eval

import tf1_checkpoint_writer  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sparsify(model, sparsity, seed=0):
  masks = layers.get_masks(model)
  init = sparse_utils.get_mask_init_fn(masks, 'random', sparsity,
                                       mask_fn=sparse_utils.seeded_mask_random(seed))
  init()
  return model


def _mnist(sparsity=0.9):
  keras.utils.set_random_seed(0)
  return _sparsify(mnist_model.build_model(masked=True), sparsity)


def _depthwise_cnn():
  keras.utils.set_random_seed(1)
  inputs = keras.Input((16, 16, 3))
  x = layers.MaskedConv2D(8, 3, padding='same', activation='relu', name='conv')(inputs)
  x = layers.MaskedDepthwiseConv2D(3, padding='same', name='dw')(x)
  x = layers.MaskedConv2D(16, 1, activation='relu', name='pointwise')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return _sparsify(keras.Model(inputs, layers.MaskedDense(5, name='fc')(x)), 0.8)


def _images(count, size, scale=1.0):
  return (np.random.RandomState(2).uniform(0, 1, (count, size, size, 3)) * scale).astype(
      np.float32)


MODELS = {
    'mnist_mlp': (_mnist, lambda: mnist_train_eval.load_mnist_5k()[2][:6] / 255.0),
    'mnist_mlp_sparse_layers': (lambda: sparse_layers.to_sparse_execution(_mnist()),
                                lambda: mnist_train_eval.load_mnist_5k()[2][:6] / 255.0),
    'depthwise_cnn': (_depthwise_cnn, lambda: _images(4, 16)),
    'resnet18': (lambda: _sparsify(imagenet_model.build_model(
        'resnet', num_classes=10, resnet_depth=18, width=0.125, image_size=32,
        first_layer_sparsity=-1), 0.8), lambda: _images(3, 32, 255.0)),
    'mobilenet_v1': (lambda: _sparsify(imagenet_model.build_model(
        'mobilenet_v1', num_classes=10, width=0.25, image_size=32), 0.8),
                     lambda: _images(3, 32, 255.0)),
}


@pytest.mark.parametrize('name', sorted(MODELS))
def test_stripped_and_tflite_models_compute_what_the_masked_one_does(name):
  make_model, make_inputs = MODELS[name]
  model, inputs = make_model(), np.asarray(make_inputs(), np.float32)
  expected = model(inputs, training=False).numpy()
  stripped = export.strip_masks(model)
  assert not any(type(l).__module__.startswith('rigl')
                 for l in stripped._flatten_layers(include_self=False))  # pylint: disable=protected-access
  np.testing.assert_allclose(stripped(inputs, training=False).numpy(), expected,
                             rtol=1e-5, atol=1e-5)
  flatbuffer = export.to_tflite(model, sparse=True)
  np.testing.assert_allclose(export.tflite_predict(flatbuffer, inputs), expected,
                             rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_the_sparse_tflite_file_is_as_small_as_the_nonzeros_allow():
  model = _mnist(0.9)
  rows = {name: size for name, size, _ in export.size_report(model)}
  nonzero_weights = rows['parameters, nonzero float32'] // 4
  # Measured: about 2 bytes of index per kept weight (uint16 sparse indices), plus the
  # flatbuffer's fixed part.
  assert rows['TFLite sparse'] <= rows['parameters, nonzero float32'] + (
      2.5 * nonzero_weights + 16384)
  assert rows['TFLite dense'] >= 0.99 * rows['parameters, dense float32']
  assert rows['TFLite sparse'] * 5 < rows['TFLite dense']  # 90% sparse: over 5x smaller


@pytest.mark.parametrize('quantize, bound', [('dynamic', 0.05), ('int8', 0.15)])
def test_quantised_sparse_tflite_stays_close_and_small(quantize, bound):
  model = _mnist(0.9)
  inputs = (mnist_train_eval.load_mnist_5k()[2][:32] / 255.0).astype(np.float32)
  expected = model(inputs).numpy()
  float_sparse = export.to_tflite(model, sparse=True)
  quantized = export.to_tflite(model, sparse=True, quantize=quantize,
                               representative_data=inputs)
  assert len(quantized) < len(float_sparse)
  actual = export.tflite_predict(quantized, inputs)
  # Within the stated share of the logits' range, and the same class almost always.
  assert np.abs(actual - expected).max() <= bound * np.ptp(expected)
  assert np.mean(actual.argmax(1) == expected.argmax(1)) >= 0.9


def test_saved_model_serving_signature(tmp_path):
  model = _depthwise_cnn()
  inputs = _images(4, 16)
  export.save_saved_model(model, str(tmp_path / 'saved'))
  outputs = tf.saved_model.load(str(tmp_path / 'saved')).signatures['serving_default'](
      inputs=tf.constant(inputs))
  expected = model(inputs).numpy()
  np.testing.assert_allclose(outputs['logits'].numpy(), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(outputs['classes'].numpy(), expected.argmax(-1))


def test_keras_file_loads_without_this_package(tmp_path):
  path = str(tmp_path / 'model.keras')
  model = _depthwise_cnn()
  export.strip_masks(model).save(path)
  inputs = _images(2, 16)
  np.save(tmp_path / 'inputs.npy', inputs)
  np.save(tmp_path / 'expected.npy', model(inputs).numpy())
  code = ('import sys, keras, numpy as np\n'
          f'm = keras.models.load_model({path!r})\n'
          f'x = np.load({str(tmp_path / "inputs.npy")!r})\n'
          f'y = np.load({str(tmp_path / "expected.npy")!r})\n'
          'assert np.abs(m(x).numpy() - y).max() < 1e-5\n'
          "assert not [n for n in sys.modules if n == 'rigl' or n.startswith('rigl.')]\n")
  result = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path),
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_bad_input_fails_clearly(tmp_path):
  with pytest.raises(ValueError, match='representative_data'):
    export.to_tflite(_mnist(), quantize='int8')
  with pytest.raises(ValueError, match="quantize must be one of.*'int4'"):
    export.to_tflite(_mnist(), quantize='int4')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='holds no checkpoint'):
    export.load_model(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match=r"--checkpoint='.*nothing' is neither a run "
                     r'directory nor a checkpoint \(.*nothing.index does not exist\)'):
    export.load_model(str(tmp_path / 'nothing'))


def _command(*args):
  return subprocess.run([sys.executable, '-m', 'rigl.export', *args], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3'),
                        capture_output=True, text=True, timeout=600, check=False)


def test_command_names_only_the_flags_it_misses_and_help_may_be_cut_short(
    run_into_a_closed_pipe):
  result = _command('--checkpoint=/nonexistent')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'rigl.export: error: give --output (the file to write).')
  helped = run_into_a_closed_pipe(
      [sys.executable, '-m', 'rigl.export', '--help'], cwd=ROOT, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3'))
  assert helped.returncode == 0, helped.stderr[-2000:]
  assert 'Traceback' not in helped.stderr and 'BrokenPipeError' not in helped.stderr


def test_command_on_an_mnist_run_with_sparse_execution(tmp_path):
  # A masked run's export is tests/test_readme.py's (the README's command on its Try-it run).
  execution = ['--sparse_execution']
  run = tmp_path / 'run'
  mnist_train_eval.FLAGS.unparse_flags()
  try:
    mnist_train_eval.FLAGS(['mnist', f'--output_dir={run}', '--dataset=mnist_5k',
                            '--batch_size=400', '--num_epochs=1', '--training_method=rigl',
                            '--end_sparsity=0.9', '--maskupdate_frequency=2', *execution])
    mnist_train_eval.run(*mnist_train_eval.setup())
  finally:
    mnist_train_eval.FLAGS.unparse_flags()
  result = _command(f'--checkpoint={run}', '--format=tflite',
                    f'--output={tmp_path / "model.tflite"}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| TFLite sparse |' in result.stdout and '| .keras |' in result.stdout
  assert 'same top-1 on 8 of 8' in result.stdout
  difference = float(result.stdout.split('inputs: ')[1].split(';')[0])
  assert difference < 1e-4
  assert (tmp_path / 'model.tflite').stat().st_size > 0
  bad = _command(f'--checkpoint={run}', '--format=onnx', f'--output={tmp_path / "x"}')
  assert bad.returncode != 0 and 'onnx' in bad.stderr and 'Traceback' not in bad.stderr


def test_a_released_tf1_checkpoint_becomes_a_keras_file(tmp_path):
  arrays, forward = tf1_checkpoint_writer.resnet(18, 0.125, 10, True, True)
  prefix = tf1_checkpoint_writer.write(arrays, str(tmp_path / 'model.ckpt-3200000'),
                                       state_file=False)
  model, _ = export.load_model(
      prefix, 'imagenet_train_eval',
      '--resnet_depth=18 --width=0.125 --image_size=32 --num_label_classes=10 '
      '--first_layer_sparsity=-1')
  path = str(tmp_path / 'resnet18.keras')
  export.strip_masks(model).save(path)
  images = _images(2, 32, 255.0)
  np.testing.assert_allclose(keras.models.load_model(path)(images).numpy(),
                             forward(images).numpy(), rtol=1e-4, atol=1e-4)


def test_an_operation_without_a_tflite_builtin_fails_clearly_or_stays_a_tensorflow_op():
  inputs = keras.Input((4, 4, 4, 2))
  pooled = keras.layers.MaxPooling3D(2)(keras.layers.Conv3D(3, 2, padding='same')(inputs))
  model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(pooled)))
  with pytest.raises(ValueError, match=r'cannot convert.*select_tf_ops=True'):
    export.to_tflite(model)
  flatbuffer = export.to_tflite(model, select_tf_ops=True)
  assert b'FlexMaxPool3D' in flatbuffer
