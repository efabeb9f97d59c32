r"""Deploying a sparse model: masks folded into plain Keras layers, SavedModel, TFLite.

`strip_masks` turns a model with masked layers into a plain Keras 3 model whose kernels
are `kernel * mask` and that loads without this package; `save_saved_model` exports it
with a serving signature; `to_tflite` converts it with TFLite's sparsity optimisation,
which stores kernels that are mostly zeros in a sparse format (and can quantise them);
`size_report` says what each format costs.

The command rebuilds a training run's model from the flags it recorded and exports it:

  python -m rigl.export --checkpoint=/tmp/mnist_rigl --format=tflite \
    --output=/tmp/mnist_rigl.tflite

`--checkpoint` is a run's directory (its latest checkpoint) or one checkpoint in it; a
TF1 checkpoint of the original names its script and model flags instead:

  python -m rigl.export --checkpoint=resnet50_erk80/model.ckpt-3200000 \
    --script=imagenet_train_eval --model_flags="--first_layer_sparsity=-1" \
    --format=keras --output=resnet50_erk80.keras
"""

import gzip
import importlib
import io
import os
import shlex
import tarfile
import tempfile

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from rigl import sparse_layers

FORMATS = ('keras', 'saved_model', 'tflite')
QUANTIZATIONS = ('none', 'dynamic', 'int8')
SCRIPTS = {
    'mnist_train_eval': 'rigl.mnist.mnist_train_eval',
    'resnet_train_eval': 'rigl.cifar_resnet.resnet_train_eval',
    'imagenet_train_eval': 'rigl.imagenet_resnet.imagenet_train_eval',
}


def _graph_model(model):
  from keras.src.models import functional  # pylint: disable=g-import-not-at-top
  return isinstance(model, (keras.Sequential, functional.Functional))


def strip_masks(model):
  """A plain Keras copy of `model`: masks folded into the kernels, no rigl layers.

  Masked layers become `Dense`/`Conv2D`/`DepthwiseConv2D` with `kernel * mask`, sparse
  layers `Dense` with their active weights in place; the other layers of this package become their plain Keras equivalents (e.g. the ImageNet
  models' batch norm and input standardisation). The copy computes the same function.

  Args:
    model: a built Sequential or functional Keras model with masked layers.

  Raises:
    ValueError: `model` has no masked layers, or is a subclassed model.
  """
  if not _graph_model(model):
    raise ValueError(f'strip_masks needs a Sequential or functional keras.Model, got '
                     f'{type(model).__name__}.')
  if not sparse_layers.all_masks(model):
    raise ValueError(f'Model {model.name!r} has no masked layers (rigl.layers.MaskedDense, '
                     'MaskedConv2D, MaskedDepthwiseConv2D) or sparse layers '
                     '(rigl.sparse_layers.SparseDense): there are no masks to fold.')

  def clone(layer):
    if hasattr(layer, 'plain_equivalent'):
      plain_class, config, _ = layer.plain_equivalent()
      return plain_class.from_config(config)
    return layer.__class__.from_config(layer.get_config())

  stripped = keras.models.clone_model(model, clone_function=clone, recursive=True)
  old_layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  new_layers = stripped._flatten_layers(include_self=False)  # pylint: disable=protected-access
  for old, new in zip(old_layers, new_layers):
    if _graph_model(old):
      continue  # Its layers are copied one by one.
    weights = (old.plain_equivalent()[2] if hasattr(old, 'plain_equivalent')
               else old.get_weights())
    if weights:
      new.set_weights(weights)
  return stripped


def _input_spec(model):
  return tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name='inputs')


def _write_archive(model, path, serve):
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint('serving_default', serve, input_signature=[_input_spec(model)])
  archive.write_out(path, verbose=False)
  return path


def save_saved_model(model, path):
  """Exports `model` with its masks folded as a SavedModel with a serving signature.

  The `serving_default` signature takes a float32 batch shaped like the model's input
  (for the ImageNet models `[None, 224, 224, 3]` images in [0, 255]) and returns
  `logits`, `probabilities` and `classes`.
  """
  stripped = strip_masks(model)

  def serve(inputs):
    logits = tf.cast(stripped(inputs, training=False), tf.float32)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1)}

  return _write_archive(stripped, path, serve)


def to_tflite(model, sparse=True, quantize=None, representative_data=None):
  """The TFLite flatbuffer of `model` (masks folded), returning logits.

  Args:
    model: a model with masked layers.
    sparse: store kernels that are mostly zeros sparsely
      (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`); the converter does so for kernels at
      least about 30% zeros.
    quantize: None (float32), 'dynamic' (int8 weights, float activations) or 'int8'
      (int8 weights and activations, float input and output; needs
      `representative_data`). Sparsity is kept through quantisation.
    representative_data: a few inputs (an array of examples) to calibrate 'int8'.

  Raises:
    ValueError: an unknown `quantize`, or 'int8' without `representative_data`.
  """
  if quantize in (None, 'none'):
    quantize = None
  elif quantize not in QUANTIZATIONS:
    raise ValueError(f'quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}.')
  if quantize == 'int8' and representative_data is None:
    raise ValueError('quantize=\'int8\' calibrates the activations on representative data; '
                     'give representative_data (a few example inputs).')
  stripped = strip_masks(model)
  with tempfile.TemporaryDirectory() as directory:
    _write_archive(stripped, directory,
                   lambda inputs: tf.cast(stripped(inputs, training=False), tf.float32))
    converter = tf.lite.TFLiteConverter.from_saved_model(directory)
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize:
      optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == 'int8':
      examples = np.asarray(representative_data, np.float32)
      converter.representative_dataset = lambda: ([example[np.newaxis]]
                                                   for example in examples)
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.optimizations = optimizations
    return converter.convert()


def tflite_interpreter(flatbuffer):
  """An allocated interpreter: LiteRT's (`ai_edge_litert`, the `export` extra), or
  TensorFlow's own `tf.lite.Interpreter` where that is not installed.

  XNNPACK, the default delegate, does not take every sparse quantised kernel ("failed to
  delegate FULLY_CONNECTED"); such a model runs on the built-in kernels instead.
  """
  try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  except ImportError:
    litert = tf.lite
  try:
    interpreter = litert.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
  except RuntimeError:
    interpreter = litert.Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=(
            litert.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            if litert is tf.lite else
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    interpreter.allocate_tensors()
  return interpreter


def tflite_predict(flatbuffer, inputs):
  """Runs a TFLite model on `inputs`, one example at a time (see `tflite_interpreter`)."""
  interpreter = tflite_interpreter(flatbuffer)
  source, = interpreter.get_input_details()
  target, = interpreter.get_output_details()
  outputs = []
  for example in np.asarray(inputs, np.float32):
    interpreter.set_tensor(source['index'], example[np.newaxis])
    interpreter.invoke()
    outputs.append(interpreter.get_tensor(target['index'])[0])
  return np.stack(outputs)


def _gzip_size(data):
  return len(gzip.compress(data, compresslevel=9))


def _directory_bytes(path):
  """(total bytes, gzipped tar bytes) of a directory."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w') as archive:
    archive.add(path, arcname='.')
  total = sum(os.path.getsize(os.path.join(root, name))
              for root, _, names in os.walk(path) for name in names)
  return total, _gzip_size(buffer.getvalue())


def size_report(model, quantize=None, representative_data=None):
  """Bytes of the model in every format, raw and gzipped.

  Returns:
    A list of `(format, bytes, gzipped bytes or None)`: the parameters as dense float32
    (every weight), the nonzero parameters as float32 (what any sparse format must at
    least store), the `.keras` file, the SavedModel directory, TFLite dense, TFLite
    sparse and, with `quantize`, TFLite sparse quantised.
  """
  stripped = strip_masks(model)
  values = [w.numpy() for w in stripped.weights]
  dense = 4 * sum(v.size for v in values)
  nonzero = 4 * sum(int(np.count_nonzero(v)) for v in values)
  rows = [('parameters, dense float32', dense, None),
          ('parameters, nonzero float32', nonzero, None)]
  with tempfile.TemporaryDirectory() as directory:
    keras_path = os.path.join(directory, 'model.keras')
    stripped.save(keras_path)
    with open(keras_path, 'rb') as f:
      data = f.read()
    rows.append(('.keras', len(data), _gzip_size(data)))
    saved = os.path.join(directory, 'saved_model')
    save_saved_model(model, saved)
    rows.append(('SavedModel', *_directory_bytes(saved)))
  for label, sparse, quantized in (('TFLite dense', False, None),
                                   ('TFLite sparse', True, None)) + (
                                       (('TFLite sparse ' + quantize, True, quantize),)
                                       if quantize not in (None, 'none') else ()):
    data = to_tflite(model, sparse, quantized, representative_data)
    rows.append((label, len(data), _gzip_size(data)))
  return rows


def format_size_table(rows):
  lines = ['| format | bytes | gzip bytes |', '|---|---|---|']
  lines += [f'| {name} | {size:,} | {"" if gz is None else f"{gz:,}"} |'
            for name, size, gz in rows]
  return '\n'.join(lines)


# --- The command ---------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('checkpoint', None, 'A run\'s output directory (its latest '
                      'checkpoint) or one checkpoint, e.g. /tmp/mnist_rigl/model.ckpt-4000; '
                      'or a TF1 checkpoint of the original with --script and --model_flags.')
  flags.DEFINE_enum('format', 'tflite', FORMATS, 'What to write.')
  flags.DEFINE_enum('quantize', 'none', QUANTIZATIONS, 'TFLite quantisation: dynamic '
                    '(int8 weights) or int8 (weights and activations, calibrated on '
                    'example inputs).')
  flags.DEFINE_string('output', None, 'The file (.keras, .tflite) or directory '
                      '(SavedModel) to write.')
  flags.DEFINE_enum('script', None, sorted(SCRIPTS), 'The training script whose model the '
                    'checkpoint holds; read from the run\'s flags.json when there is one.')
  flags.DEFINE_string('model_flags', '', 'The script\'s flags that build the model, for a '
                      'checkpoint without flags.json (e.g. "--model_architecture=mobilenet_v1'
                      ' --first_layer_sparsity=-1").')
  flags.DEFINE_integer('examples', 8, 'Inputs on which the exported model is compared with '
                       'the original (and int8 is calibrated).', lower_bound=1)


def _checkpoint_and_run_dir(path):
  """(checkpoint prefix, the directory of its flags.json or None)."""
  from rigl import tf1_checkpoints  # pylint: disable=g-import-not-at-top
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.isdir(path):
    run_dir = path
    if not tf.train.latest_checkpoint(path) and not tf.io.gfile.glob(
        os.path.join(path, '*.index')):
      raise ValueError(f'--checkpoint={path!r}: the directory holds no checkpoint.')
  elif not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'--checkpoint={path!r} is neither a run directory nor a checkpoint '
                     f'({path}.index does not exist).')
  else:
    run_dir = os.path.dirname(path)
  prefix = tf1_checkpoints.resolve(path)
  has_flags = tf.io.gfile.exists(os.path.join(run_dir, script_flags.FLAGS_FILE))
  return prefix, run_dir if has_flags else None


def load_model(checkpoint, script=None, model_flags=''):
  """(model, script module) of a training run's checkpoint, rebuilt from its flags.

  Raises:
    ValueError: no checkpoint, no way to know the script, or a checkpoint that does not
      fit the model.
  """
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  prefix, run_dir = _checkpoint_and_run_dir(checkpoint)
  recorded = {}
  if run_dir:
    recorded_script, recorded = script_flags.read_run_flags(run_dir)
    script = script or recorded_script
  if script not in SCRIPTS:
    raise ValueError(f'{checkpoint!r} has no flags.json of a training run, so the model '
                     f'cannot be rebuilt from it; give --script (one of {sorted(SCRIPTS)}) '
                     'and the --model_flags it was trained with.')
  module = importlib.import_module(SCRIPTS[script])
  module.FLAGS.unparse_flags()
  module.FLAGS([script, *shlex.split(model_flags)], known_only=True)
  for name, value in recorded.items():
    if name in module.FLAGS and not module.FLAGS[name].present:
      module.FLAGS[name].value = value
  model = module.build_model()
  module.restore_checkpoint(model, prefix)
  return model, module


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'rigl.export: error: unexpected arguments {argv[1:]}.')
  if not FLAGS['verbosity'].present:
    # The converter's and the savers' notes would bury the result.
    logging.set_verbosity(logging.WARNING)
  try:
    needed = {'checkpoint': 'a run directory or checkpoint', 'output': 'the file to write'}
    missing = [f'--{name} ({what})' for name, what in needed.items() if not FLAGS[name].value]
    if missing:
      raise ValueError(f'give {" and ".join(missing)}.')
    model, module = load_model(FLAGS.checkpoint, FLAGS.script, FLAGS.model_flags)
    inputs = module.example_inputs(FLAGS.examples)
    quantize = None if FLAGS.quantize == 'none' else FLAGS.quantize
    expected = model(inputs, training=False).numpy()
    if FLAGS.format == 'keras':
      stripped = strip_masks(model)
      stripped.save(FLAGS.output)
      actual = keras.models.load_model(FLAGS.output)(inputs, training=False).numpy()
    elif FLAGS.format == 'saved_model':
      save_saved_model(model, FLAGS.output)
      serving = tf.saved_model.load(FLAGS.output).signatures['serving_default']
      actual = serving(inputs=tf.constant(inputs))['logits'].numpy()
    else:
      data = to_tflite(model, True, quantize, inputs)
      with tf.io.gfile.GFile(FLAGS.output, 'wb') as f:
        f.write(data)
      actual = tflite_predict(data, inputs)
    rows = size_report(model, quantize, inputs)
  except ValueError as error:
    raise SystemExit(f'rigl.export: error: {error}') from None
  print(f'Wrote {FLAGS.output} ({FLAGS.format}'
        f'{", " + quantize if quantize and FLAGS.format == "tflite" else ""}).')
  print(format_size_table(rows))
  print(f'Largest difference from the original model\'s outputs on {len(inputs)} inputs: '
        f'{np.abs(actual - expected).max():.3g}; same top-1 on '
        f'{int(np.sum(actual.argmax(-1) == expected.argmax(-1)))} of {len(inputs)}.')


if __name__ == '__main__':
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=script_flags.absl_parser)
