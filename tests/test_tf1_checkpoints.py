"""Loading TF1 checkpoints with the original's names (rigl.tf1_checkpoints, ImageNet)."""

import numpy as np
import pytest

from rigl import layers
from rigl import masking
from rigl import tf1_checkpoints
from rigl.imagenet_resnet import imagenet_model

import tf1_checkpoint_writer as writer  # pylint: disable=g-bad-import-order

IMAGES = np.random.RandomState(7).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)


def _load(model, prefix, what='all', architecture='resnet'):
  return tf1_checkpoints.load(model, prefix, what, imagenet_model.tf1_scope,
                              imagenet_model.checkpoint_hints(architecture))


CASES = {
    # name: (writer, model kwargs)
    'resnet18_first_masked': (
        lambda: writer.resnet(18, 0.125, 10, True, True),
        dict(architecture='resnet', resnet_depth=18, width=0.125,
             first_layer_sparsity=-1, last_layer_sparsity=-1)),
    'resnet18_uniform_form': (
        lambda: writer.resnet(18, 0.125, 10, False, True),
        dict(architecture='resnet', resnet_depth=18, width=0.125,
             first_layer_sparsity=0, last_layer_sparsity=-1)),
    'resnet18_last_unmasked': (
        lambda: writer.resnet(18, 0.125, 10, True, False),
        dict(architecture='resnet', resnet_depth=18, width=0.125,
             first_layer_sparsity=-1, last_layer_sparsity=0)),
    'resnet50_bottlenecks': (
        lambda: writer.resnet(50, 0.0625, 10, True, True),
        dict(architecture='resnet', resnet_depth=50, width=0.0625,
             first_layer_sparsity=-1, last_layer_sparsity=-1)),
    'mobilenet_v1': (
        lambda: writer.mobilenet_v1(0.25, 10, True),
        dict(architecture='mobilenet_v1', width=0.25, last_layer_sparsity=-1)),
    'mobilenet_v1_last_unmasked': (
        lambda: writer.mobilenet_v1(0.25, 10, False),
        dict(architecture='mobilenet_v1', width=0.25, last_layer_sparsity=0)),
    'mobilenet_v2': (
        lambda: writer.mobilenet_v2(0.35, 10, True),
        dict(architecture='mobilenet_v2', width=0.35, last_layer_sparsity=-1)),
    'vgg_a': (
        lambda: writer.vgg_a(0.125, 10, True),
        dict(architecture='vgg_a', width=0.125, first_layer_sparsity=-1)),
    'vgg_a_fc8_unmasked': (
        lambda: writer.vgg_a(0.125, 10, False),
        dict(architecture='vgg_a', width=0.125, first_layer_sparsity=-1,
             last_layer_sparsity=0)),
}


def _model(**kwargs):
  return imagenet_model.build_model(num_classes=10, image_size=32, **kwargs)


@pytest.mark.parametrize('case', sorted(CASES))
def test_loaded_model_computes_the_original_logits(case, tmp_path):
  make_checkpoint, kwargs = CASES[case]
  arrays, forward = make_checkpoint()
  prefix = writer.write(arrays, str(tmp_path / 'model.ckpt-3200000'))
  model = _model(**kwargs)
  report = _load(model, prefix, architecture=kwargs['architecture'])
  assert report.global_step == 3200000
  # Every model array of the checkpoint was used (thresholds and slots are not model).
  assert len(report.loaded) == len([n for n in arrays if not n.endswith('/threshold')])
  expected = forward(IMAGES).numpy()
  actual = model(IMAGES, training=False).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  for mask in layers.get_masks(model):
    name = imagenet_model.tf1_scope(model, _layer_of(model, mask)) + '/mask'
    np.testing.assert_array_equal(mask.numpy(), arrays[name])


def _layer_of(model, mask):
  return next(l for l in layers.masked_layers(model) if l.mask is mask)


def _resnet_checkpoint(tmp_path, first_masked=True, extra=None, drop=(), change=None):
  arrays, _ = writer.resnet(18, 0.125, 10, first_masked, True)
  arrays = {k: v for k, v in arrays.items() if k not in drop}
  arrays.update(change or {})
  return writer.write(arrays, str(tmp_path / 'model.ckpt-5'), extra=extra)


RESNET18 = dict(architecture='resnet', resnet_depth=18, width=0.125,
                first_layer_sparsity=-1)


@pytest.mark.parametrize('damage, message', [
    (dict(drop=('resnet_model/batch_normalization_4/moving_mean',)),
     'Missing in the checkpoint \\(1\\): resnet_model/batch_normalization_4/moving_mean'),
    (dict(extra={'resnet_model/extra_conv/weights': np.zeros((1, 1, 8, 8), np.float32)}),
     'not in the model \\(1\\): resnet_model/extra_conv/weights'),
    (dict(change={'resnet_model/final_dense/biases': np.zeros(12, np.float32)}),
     'final_dense/biases: \\(12,\\) in the checkpoint, \\(10,\\) in the model.*--num_label_classes'),
    (dict(change={'resnet_model/residual_1_block_group1_1_1/mask':
                  np.full((3, 3, 8, 8), 0.5, np.float32)}),
     'residual_1_block_group1_1_1/mask: a mask must hold only 0 and 1'),
])
def test_a_checkpoint_that_does_not_fit_is_refused_before_loading(tmp_path, damage,
                                                                  message):
  prefix = _resnet_checkpoint(tmp_path, **damage)
  model = _model(**RESNET18)
  before = [v.numpy().copy() for v in model.weights]
  with pytest.raises(tf1_checkpoints.CheckpointMismatchError, match=message):
    _load(model, prefix)
  for value, variable in zip(before, model.weights):
    np.testing.assert_array_equal(variable.numpy(), value)  # nothing was loaded


@pytest.mark.parametrize('first_masked, flags, advice', [
    (True, dict(first_layer_sparsity=0), '--first_layer_sparsity=-1'),
    (False, dict(first_layer_sparsity=-1), '--first_layer_sparsity=0'),
])
def test_the_wrong_first_layer_flag_is_named(tmp_path, first_masked, flags, advice):
  prefix = _resnet_checkpoint(tmp_path, first_masked=first_masked)
  model = _model(**{**RESNET18, **flags})
  with pytest.raises(tf1_checkpoints.CheckpointMismatchError, match=advice):
    _load(model, prefix)


def test_the_wrong_architecture_is_named(tmp_path):
  arrays, _ = writer.mobilenet_v1(0.25, 10, True)
  prefix = writer.write(arrays, str(tmp_path / 'mbv1'))
  with pytest.raises(tf1_checkpoints.CheckpointMismatchError,
                     match='--model_architecture=mobilenet_v1'):
    _load(_model(**RESNET18), prefix)


def test_masks_only_and_initial_values_only(tmp_path):
  arrays, _ = writer.resnet(18, 0.125, 10, True, True)
  prefix = writer.write(arrays, str(tmp_path / 'model.ckpt-5'))
  model = _model(**RESNET18)
  fresh = [v.numpy().copy() for v in model.weights]
  _load(model, prefix, 'masks')
  names = {v.path: _checkpoint_name(model, v) for v in model.weights}
  for value, variable in zip(fresh, model.weights):
    name = names[variable.path]
    mask = masking.get_mask(variable)
    if name.endswith('/mask'):
      np.testing.assert_array_equal(variable.numpy(), arrays[name])
    elif mask is not None:  # a masked kernel: its inactive weights are zeroed
      np.testing.assert_array_equal(variable.numpy(), value * arrays[names[mask.path]])
    else:
      np.testing.assert_array_equal(variable.numpy(), value)  # untouched

  model = _model(**RESNET18)
  fresh = [v.numpy().copy() for v in model.weights]
  _load(model, prefix, 'initial_values')
  for value, variable in zip(fresh, model.weights):
    name = names[variable.path]
    if name.rsplit('/', 1)[-1] in ('weights', 'biases', 'gamma', 'beta'):
      np.testing.assert_array_equal(variable.numpy(), arrays[name])
    else:  # masks and moving statistics keep their initial values
      np.testing.assert_array_equal(variable.numpy(), value)


def _checkpoint_name(model, variable):
  for layer in model.layers:
    for weight in layer.weights:
      if weight is variable:
        role = tf1_checkpoints.variable_role(layer, weight)
        return tf1_checkpoints.name_candidates(imagenet_model.tf1_scope(model, layer), layer,
                                              role)[0]
  raise KeyError(variable.path)


def test_a_directory_without_a_state_file_resolves_to_its_only_checkpoint(tmp_path):
  arrays, _ = writer.resnet(18, 0.125, 10, True, True)
  writer.write(arrays, str(tmp_path / 'model.ckpt-3200000'), state_file=False)
  assert not (tmp_path / 'checkpoint').exists()
  assert tf1_checkpoints.resolve(str(tmp_path)) == str(tmp_path / 'model.ckpt-3200000')
  assert tf1_checkpoints.is_tf1_checkpoint(str(tmp_path / 'model.ckpt-3200000'))
