r"""Deploying a sparse model: masks folded into plain Keras layers, SavedModel, TFLite.

`strip_masks` turns a sparse model — any Keras model trained with a sparse optimizer,
compiled or not — into a plain Keras 3 model whose inactive weights are zero and that
loads without this package; `save_saved_model` exports it with a serving signature;
`to_tflite` converts it with TFLite's sparsity optimisation, which stores kernels that
are mostly zeros in a sparse format (and can quantise them); `size_report` says what
each format costs. Models of several inputs, recurrent models (converted at a fixed
batch size) and mixed-precision models (exported in float32) are taken as they are.

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

from rigl import masking
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


def _folded_weights(layer):
  """A layer's weights for its plain copy, masks folded in."""
  if hasattr(layer, 'plain_equivalent'):
    return layer.plain_equivalent()[2]
  return [w.numpy() * np.asarray(masking.get_mask(w))
          if masking.get_mask(w) is not None else w.numpy()
          for w in getattr(layer, 'weights', [])]


def _is_mixed_precision(model):
  return any(l.compute_dtype != l.variable_dtype
             for l in model._flatten_layers(include_self=True))  # pylint: disable=protected-access


def strip_masks(model, dtype=None):
  """`model` without this package's masks: every inactive weight zero, no rigl layers.

  A Sequential or functional model is copied: masked layers become `Dense`/`Conv2D`/
  `DepthwiseConv2D`, sparse layers `Dense`, and any other masked kernel is multiplied by
  its mask, so the copy loads without this package and computes the same function.
  Condensed layers (`rigl.sparse_layers.to_condensed`) are kept as they are: they hold
  no mask, and they are the deployed form (a `.keras` file of them loads where this
  package is installed; SavedModel and TFLite files do not need it). A
  subclassed model cannot be rebuilt from its layers: its kernels are multiplied by
  their masks in place (a no-op after training, where they are zero already) and the
  model itself is returned.

  Args:
    model: a built Keras model, trained or not, compiled or not.
    dtype: for a Sequential or functional model, the dtype policy of the copy's layers
      (e.g. 'float32' for a float copy of a mixed-precision model); None keeps theirs.

  Raises:
    ValueError: a subclassed model with sparse layers, or with `dtype`.
  """
  if not _graph_model(model):
    if sparse_layers.sparse_layers(model):
      raise ValueError(
          f'strip_masks cannot rebuild the subclassed model {model.name!r}, whose '
          'SparseDense layers only run as such; build it with MaskedDense layers or '
          'sparsify it with rigl.masking.sparsify_model to export it.')
    if dtype is not None:
      raise ValueError(
          f'strip_masks cannot change the dtype of the subclassed model {model.name!r}; '
          f'build it again under keras.mixed_precision.set_global_policy({dtype!r}) and '
          'copy the weights (model.set_weights).')
    masking.apply_masks(model)
    return model

  return _plain_copy(model, dtype)


def _has_rigl_layers(model):
  return any(hasattr(l, 'plain_equivalent')
             for l in model._flatten_layers(include_self=False))  # pylint: disable=protected-access


def _plain_copy(model, dtype):
  """A graph model's copy with plain layers and folded masks; nested graph models that
  hold rigl layers are copied the same way, others from their configuration."""
  if dtype is None and not _has_rigl_layers(model):
    # From the model's own configuration, as loading a `.keras` file rebuilds it: that
    # keeps what a layer-by-layer clone would lose (e.g. keras_hub's tied embeddings).
    # The model's own classes, so that unregistered custom layers deserialise too.
    classes = {type(layer).__name__: type(layer)
               for layer in model._flatten_layers(include_self=True)}  # pylint: disable=protected-access
    with keras.saving.custom_object_scope(classes):
      copy = model.__class__.from_config(model.get_config())
    copy.set_weights([w * np.asarray(masking.get_mask(v)) if masking.get_mask(v) is not None
                      else w for v, w in zip(model.weights, model.get_weights())])
    return copy
  originals = []

  def clone(layer):
    if _graph_model(layer) and _has_rigl_layers(layer):
      return _plain_copy(layer, dtype)
    if hasattr(layer, 'plain_equivalent'):
      plain_class, config, _ = layer.plain_equivalent()
    else:
      plain_class, config = layer.__class__, layer.get_config()
    if dtype is not None and 'dtype' in config:
      config = dict(config, dtype=dtype)
    copy = plain_class.from_config(config)
    originals.append((layer, copy))
    return copy

  # clone_model compiles a copy of a compiled model, and builds its (sparse) optimizer.
  compiled = getattr(model, 'compiled', False)
  model.compiled = False
  try:
    stripped = keras.models.clone_model(model, clone_function=clone)
  finally:
    model.compiled = compiled
  for old, new in originals:
    weights = _folded_weights(old)
    if weights:
      new.set_weights(weights)
  return stripped


def _input_signature(model, batch_size, input_signature):
  """`[tf.TensorSpec]` of the model's inputs, with `batch_size` as the first dimension."""
  if input_signature is not None:
    return list(input_signature)
  try:
    inputs = model.inputs
  except (AttributeError, ValueError):
    inputs = None
  if not inputs:
    # A subclassed model: the shapes of its first call, if they are plain tensors.
    shapes = list((getattr(model, '_build_shapes_dict', None) or {}).values())
    if not shapes or not all(
        isinstance(shape, (tuple, list)) and
        all(isinstance(d, (int, type(None))) for d in shape) for shape in shapes):
      raise ValueError(
          f'Model {model.name!r} has no keras.Input and was not called on plain tensors, '
          'so its input shapes are unknown; give input_signature=[tf.TensorSpec([None, '
          '...], tf.float32)] (one per input).')
    names = ['inputs'] if len(shapes) == 1 else [f'input_{i}' for i in range(len(shapes))]
    return [tf.TensorSpec([batch_size, *shape[1:]], model.input_dtype, name=name)
            for shape, name in zip(shapes, names)]
  if len(inputs) == 1:
    names = ['inputs']
  else:  # the names of the model's Input layers
    names = [_signature_name(x._keras_history[0].name) for x in inputs]  # pylint: disable=protected-access
  return [tf.TensorSpec([batch_size, *x.shape[1:]], x.dtype, name=name)
          for x, name in zip(inputs, names)]


def _signature_name(name):
  return ''.join(c if c.isalnum() or c == '_' else '_' for c in name)


def _call(model, inputs):
  """`model` on the flat `inputs`, packed as the model takes them (a dict, a list...)."""
  structure = getattr(model, '_inputs_struct', None)
  if structure is not None:
    packed = tf.nest.pack_sequence_as(structure, list(inputs))
  else:
    packed = list(inputs) if len(inputs) > 1 else inputs[0]
  return model(packed, training=False)


def _as_float32_outputs(outputs):
  return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs)


def _is_classifier(model, signature):
  """Whether the model has one output, of rank 2 (logits)."""
  try:
    outputs = model.outputs
  except (AttributeError, ValueError):
    outputs = None
  if not outputs:  # a subclassed model: call it once
    outputs = _call(model, [tf.zeros([1] + [d or 1 for d in spec.shape[1:]], spec.dtype)
                            for spec in signature])
  return len(tf.nest.flatten(outputs)) == 1 and len(tf.nest.flatten(outputs)[0].shape) == 2


def _exportable(model, dtype):
  """The stripped model to export (a float32 copy of a mixed-precision one)."""
  if dtype is None and _is_mixed_precision(model):
    if not _graph_model(model):
      raise ValueError(
          f'Model {model.name!r} computes in mixed precision; the converter needs it in '
          'float32. Build it again under the float32 policy, copy the weights '
          '(model.set_weights) and export that.')
    dtype = 'float32'
  return strip_masks(model, dtype=dtype)


def _write_archive(model, path, serve, signature):
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint('serving_default', serve, input_signature=signature)
  archive.write_out(path, verbose=False)
  return path


def save_saved_model(model, path, outputs=None, batch_size=None, input_signature=None):
  """Exports `model` with its masks folded as a SavedModel with a serving signature.

  Args:
    model: any built Keras model (compiled and trained, or not).
    path: the directory to write.
    outputs: 'classifier' (`logits`, `probabilities`, `classes`; for the ImageNet models
      the input is `[None, 224, 224, 3]` images in [0, 255]) or 'raw' (the model's
      outputs: a dict as the model returns it, else `outputs` or `output_<i>`). Default:
      'classifier' for a model with one rank-2 output, else 'raw'.
    batch_size: a fixed batch size for the signature; None takes any.
    input_signature: `[tf.TensorSpec]` for a model without `keras.Input`s.

  The signature's input is `inputs` for a model of one input, else named after the
  model's `Input` layers.
  """
  signature = _input_signature(model, batch_size, input_signature)
  stripped = _exportable(model, dtype=None)
  if outputs is None:
    outputs = 'classifier' if _is_classifier(stripped, signature) else 'raw'
  if outputs not in ('classifier', 'raw'):
    raise ValueError(f"outputs must be 'classifier' or 'raw', got {outputs!r}.")

  def serve(*inputs):
    result = _as_float32_outputs(_call(stripped, inputs))
    if outputs == 'classifier':
      return {'logits': result, 'probabilities': tf.nn.softmax(result),
              'classes': tf.argmax(result, axis=-1)}
    if isinstance(result, dict):
      return result
    if isinstance(result, (list, tuple)):
      return {f'output_{i}': t for i, t in enumerate(result)}
    return {'outputs': result}

  return _write_archive(stripped, path, serve, signature)


def _has_recurrent_layers(model):
  return any(isinstance(l, keras.layers.RNN)
             for l in model._flatten_layers(include_self=True))  # pylint: disable=protected-access


def to_tflite(model, sparse=True, quantize=None, representative_data=None,
              batch_size=None, input_signature=None, select_tf_ops=False):
  """The TFLite flatbuffer of `model` (masks folded), returning its outputs in float32.

  Args:
    model: any built Keras model; a mixed-precision one is exported in float32 (a
      Sequential or functional one; a subclassed one is refused with a message).
    sparse: store kernels that are mostly zeros sparsely
      (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`); the converter does so for kernels at
      least about 30% zeros.
    quantize: None (float32), 'dynamic' (int8 weights, float activations) or 'int8'
      (int8 weights and activations, float input and output; needs
      `representative_data`). Sparsity is kept through quantisation.
    representative_data: a few inputs to calibrate 'int8': an array of examples, or for
      a model of several inputs a dict of them by input name.
    batch_size: the batch size the file takes; None takes any, except for models with
      recurrent layers, which the converter takes only at a fixed batch size: 1.
    input_signature: `[tf.TensorSpec]` for a model without `keras.Input`s.
    select_tf_ops: keep operations TFLite has no builtin for (e.g. 3-D pooling) as
      TensorFlow ops; running the file then needs LiteRT's Flex delegate.

  Where the converter fails to store the kernels sparse, or would store some wrongly (in
  blocks that do not divide their inputs), the file stores them dense and a warning
  says so.

  Raises:
    ValueError: an unknown `quantize`, 'int8' without `representative_data`, or a model
      the converter cannot take (the message says why).
  """
  if quantize in (None, 'none'):
    quantize = None
  elif quantize not in QUANTIZATIONS:
    raise ValueError(f'quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}.')
  if quantize == 'int8' and representative_data is None:
    raise ValueError('quantize=\'int8\' calibrates the activations on representative data; '
                     'give representative_data (a few example inputs).')
  if batch_size is None and input_signature is None and _has_recurrent_layers(model):
    batch_size = 1
  signature = _input_signature(model, batch_size, input_signature)
  stripped = _exportable(model, dtype=None)
  # LiteRT has no XLA: condensed layers go into the file as its builtin gather, multiply
  # and sum.
  with (tempfile.TemporaryDirectory() as directory,
        sparse_layers.condensed_implementation(stripped, 'gather')):
    _write_archive(stripped, directory,
                   lambda *inputs: _as_float32_outputs(_call(stripped, inputs)), signature)
    converter = tf.lite.TFLiteConverter.from_saved_model(directory)
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize:
      optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == 'int8':
      examples = _input_list(representative_data, signature)
      converter.representative_dataset = lambda: (
          {spec.name: x[i:i + 1] for spec, x in zip(signature, examples)}
          for i in range(len(examples[0])))
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if select_tf_ops:
      converter.target_spec.supported_ops = list(converter.target_spec.supported_ops) + [
          tf.lite.OpsSet.SELECT_TF_OPS]
    converter.optimizations = optimizations
    try:
      flatbuffer = _convert(converter)
      # The converter encodes some kernels in blocks of 4 inputs even where the inputs
      # are not a multiple of 4, and drops the weights of the last, partial block.
      broken = _partial_block_tensors(flatbuffer) if sparse else []
      problem = (f'would store {len(broken)} kernel(s) in blocks that do not divide '
                 'their inputs, losing weights') if broken else None
    except ValueError as error:
      if not sparse:
        raise
      problem = f'failed to store the kernels sparse ({str(error)[:300]})'
    if problem:
      logging.warning('The TFLite converter %s; this file stores its kernels dense.',
                      problem)
      converter.optimizations = [o for o in optimizations
                                 if o != tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
      flatbuffer = _convert(converter)
    return flatbuffer


def _convert(converter):
  """`converter.convert()`, its failures as one ValueError that says what failed."""
  try:
    return converter.convert()
  except Exception as error:  # pylint: disable=broad-except
    lines = [line.strip() for line in str(error).splitlines() if 'error:' in line]
    reason = '; '.join(lines[:3]) or str(error).strip() or type(error).__name__
    hint = (' to_tflite(..., select_tf_ops=True) keeps such operations as TensorFlow ops.'
            if 'neither a custom op nor a flex op' in str(error) else '')
    raise ValueError(f'The TFLite converter cannot convert this model: {reason}.'
                     f'{hint}') from error


def _partial_block_tensors(flatbuffer):
  """Names of the block-sparse tensors of a TFLite file whose blocks do not divide them."""
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
  broken = []
  for subgraph in model.subgraphs:
    for tensor in subgraph.tensors:
      sparsity = tensor.sparsity
      if sparsity is None or sparsity.blockMap is None:
        continue
      rank = len(tensor.shape)
      for j, dimension in enumerate(sparsity.blockMap):
        if tensor.shape[dimension] % sparsity.dimMetadata[rank + j].denseSize:
          broken.append(tensor.name.decode() if isinstance(tensor.name, bytes)
                        else str(tensor.name))
          break
  return broken


def _input_list(inputs, signature):
  """Example inputs (an array, or a dict by input name) as arrays in signature order."""
  if isinstance(inputs, dict):
    missing = [spec.name for spec in signature if spec.name not in inputs]
    if missing:
      raise ValueError(f'representative_data has no inputs {missing}.')
    inputs = [inputs[spec.name] for spec in signature]
  elif len(signature) == 1:
    inputs = [inputs]
  else:
    raise ValueError(f'The model takes several inputs; give representative_data as a dict '
                     f'with the names {[spec.name for spec in signature]}.')
  return [np.asarray(x).astype(spec.dtype.as_numpy_dtype)
          for x, spec in zip(inputs, signature)]


def tflite_interpreter(flatbuffer, num_threads=None):
  """An allocated interpreter: LiteRT's (`ai_edge_litert`, the `export` extra), or
  TensorFlow's own `tf.lite.Interpreter` where that is not installed; `num_threads`
  None lets it choose.

  XNNPACK, the default delegate, does not take every sparse quantised kernel ("failed to
  delegate FULLY_CONNECTED"); such a model runs on the built-in kernels instead.
  """
  try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  except ImportError:
    litert = tf.lite
  try:
    interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=num_threads)
    interpreter.allocate_tensors()
  except RuntimeError:
    interpreter = litert.Interpreter(
        model_content=flatbuffer, num_threads=num_threads,
        experimental_op_resolver_type=(
            litert.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            if litert is tf.lite else
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    interpreter.allocate_tensors()
  return interpreter


def tflite_predict(flatbuffer, inputs, batch_size=256):
  """Runs a TFLite file of `to_tflite` on `inputs`, in batches.

  Args:
    flatbuffer: the file's bytes.
    inputs: an array for a model of one input, or a dict `{name: array}` (the names of
      the model's `Input` layers, as in the signature; keras_hub models take the same
      dict as `predict`).
    batch_size: examples per call where the file takes any batch size; a file made for
      a fixed batch size (recurrent models) runs at that size.

  Returns:
    The output array, or a list of them (by output name) for a model of several outputs.
  """
  runner = tflite_interpreter(flatbuffer).get_signature_runner()
  details = runner.get_input_details()
  names = sorted(details)
  if isinstance(inputs, dict):
    if sorted(inputs) != names:
      raise ValueError(f'The TFLite model takes the inputs {names}; got {sorted(inputs)}.')
    feeds = {name: np.asarray(inputs[name]) for name in names}
  elif len(names) == 1:
    feeds = {names[0]: np.asarray(inputs)}
  else:
    raise ValueError(f'The TFLite model takes several inputs; give a dict '
                     f'{{name: array}} with the names {names}.')
  fixed = [int(details[name]['shape_signature'][0]) for name in names]
  step = fixed[0] if fixed[0] > 0 else batch_size
  count = len(next(iter(feeds.values())))
  outputs = []
  for start in range(0, count, step):
    chunk = {name: feeds[name][start:start + step].astype(details[name]['dtype'])
             for name in names}
    result = runner(**chunk)
    outputs.append([result[name] for name in sorted(result)])
  results = [np.concatenate(parts) for parts in zip(*outputs)]
  return results[0] if len(results) == 1 else results


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


def size_report(model, quantize=None, representative_data=None, batch_size=None,
                input_signature=None):
  """Bytes of the model in every format, raw and gzipped.

  Arguments are those of `to_tflite`.

  Returns:
    A list of `(format, bytes, gzipped bytes or None)`: the parameters as dense float32
    (every float weight: integer ones, a condensed layer's indices, are positions, not
    parameters), the nonzero parameters as float32 (what any sparse format must at
    least store), the `.keras` file, the SavedModel directory, TFLite dense, TFLite
    sparse and, with `quantize`, TFLite sparse quantised.
  """
  stripped = strip_masks(model)
  values = [w.numpy() for w in stripped.weights if masking.kernel_of_mask(w) is None
            and keras.backend.is_float_dtype(w.dtype)]
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
    save_saved_model(model, saved, batch_size=batch_size, input_signature=input_signature)
    rows.append(('SavedModel', *_directory_bytes(saved)))
  for label, sparse, quantized in (('TFLite dense', False, None),
                                   ('TFLite sparse', True, None)) + (
                                       (('TFLite sparse ' + quantize, True, quantize),)
                                       if quantize not in (None, 'none') else ()):
    data = to_tflite(model, sparse, quantized, representative_data, batch_size=batch_size,
                     input_signature=input_signature)
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
