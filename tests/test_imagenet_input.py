"""Tests of rigl.imagenet_resnet.imagenet_input: the original's preprocessing and streams."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rigl import datasets
from rigl.imagenet_resnet import imagenet_input

import imagenet_data  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def image_bytes():
  return imagenet_data.jpeg_bytes(np.random.RandomState(3), 75, 110)


def test_eval_preprocessing_is_tf1_center_crop_and_resize_bicubic(image_bytes):
  image = imagenet_input.preprocess_for_eval(tf.constant(image_bytes), 224).numpy()
  # The original (tensorflow/tpu, TF 1.15): a central crop of 224/256 of the shorter side
  # (75 -> 65 pixels, offsets ((75-65)+1)//2 = 5 and ((110-65)+1)//2 = 23), decoded with
  # the crop, then TF1's resize_bicubic.
  crop = tf.image.decode_and_crop_jpeg(image_bytes, [5, 23, 65, 65], channels=3)
  reference = tf.compat.v1.image.resize_bicubic([crop], [224, 224])[0].numpy()
  assert image.dtype == np.float32 and image.shape == (224, 224, 3)
  np.testing.assert_array_equal(image, reference)
  # Neither clipped nor scaled: bicubic overshoot stays, values are in pixel units.
  assert image.max() > 1.0
  # TF2's resize (half-pixel centres, Keys cubic) gives other pixels.
  tf2 = tf.image.resize(crop[tf.newaxis], [224, 224], method='bicubic')[0].numpy()
  assert np.abs(tf2 - reference).max() > 1.0


def test_train_preprocessing_crops_resizes_and_flips_reproducibly(image_bytes):
  seeds = [tf.constant([1, i], tf.int64) for i in range(12)]
  images = [imagenet_input.preprocess_for_train(tf.constant(image_bytes), 64, s).numpy()
            for s in seeds]
  assert all(i.shape == (64, 64, 3) and i.dtype == np.float32 for i in images)
  again = imagenet_input.preprocess_for_train(tf.constant(image_bytes), 64, seeds[0])
  np.testing.assert_array_equal(again.numpy(), images[0])
  # Different seeds give different crops.
  assert len({i.tobytes() for i in images}) == len(images)


def test_a_crop_that_failed_falls_back_to_the_center_crop():
  # A 2x64 image has no crop of aspect ratio 3/4..4/3 covering 8% of it, so the box is
  # the whole image, and the original takes the central crop instead.
  tiny = imagenet_data.jpeg_bytes(np.random.RandomState(0), 2, 64)
  image = imagenet_input.decode_and_random_crop(tf.constant(tiny), 32,
                                                tf.constant([0, 0], tf.int64))
  np.testing.assert_array_equal(image.numpy(),
                                imagenet_input.decode_and_center_crop(tiny, 32).numpy())


@pytest.fixture(scope='module')
def tfrecord_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('imagenet')
  labels = imagenet_data.write_imagenet(str(directory), train_files=2, train_per_file=5,
                                        validation=7)
  return str(directory), labels


def _examples(dataset):
  return [(x.numpy(), int(y)) for x, y in dataset]


def test_tfrecord_streams(tfrecord_dir):
  directory, labels = tfrecord_dir
  data = imagenet_input.ImageNetInput(directory, train_batch_size=4, num_eval_images=7,
                                      image_size=32)
  data.check()
  context = tf.distribute.InputContext()
  images, batch_labels = next(iter(data.train_input_fn(context, 0)))
  assert images.shape == (4, 32, 32, 3) and batch_labels.shape == (4,)
  assert 0 <= int(tf.reduce_min(batch_labels)) and int(tf.reduce_max(batch_labels)) < 10
  evaluated = _examples(data.eval_input_fn(context))
  # Labels 1..1000 in the files are 0..999 here, in file order, every image once.
  assert [y for _, y in evaluated] == [label - 1 for label in labels]
  # Two input pipelines share the evaluation images without overlap.
  shards = [_examples(data.eval_input_fn(tf.distribute.InputContext(2, i, 2)))
            for i in range(2)]
  assert sorted(y for shard in shards for _, y in shard) == sorted(
      y for _, y in evaluated)
  assert len(shards[0]) + len(shards[1]) == 7


def test_directory_without_tfrecords_fails_with_the_layout(tmp_path):
  data = imagenet_input.ImageNetInput(str(tmp_path))
  with pytest.raises(datasets.DataError, match='no train-\\* files.*validation-\\*'):
    data.check()


def test_synthetic_data_without_a_directory():
  data = imagenet_input.ImageNetInput(None, train_batch_size=2, num_eval_images=3,
                                      image_size=32)
  data.check()
  images, labels = next(iter(data.train_input_fn(tf.distribute.InputContext(), 0)))
  assert not np.any(images.numpy()) and not np.any(labels.numpy())
  assert len(_examples(data.eval_input_fn(tf.distribute.InputContext()))) == 3


def test_tfds_imagenet2012_with_mock_data(monkeypatch):
  monkeypatch.setattr(datasets, 'tfds_builder', lambda *args, **kwargs: None)
  data = imagenet_input.ImageNetInput('unused', source='imagenet2012', train_batch_size=2,
                                      num_eval_images=5, image_size=32)
  with tfds.testing.mock_data(num_examples=5):
    images, labels = next(iter(data.train_input_fn(tf.distribute.InputContext(), 0)))
    evaluated = _examples(data.eval_input_fn(tf.distribute.InputContext()))
  assert images.shape == (2, 32, 32, 3)
  assert len(evaluated) == 5 and all(0 <= y < 1000 for _, y in evaluated)


def test_tfds_imagenet2012_that_is_not_prepared_says_how(tmp_path):
  data = imagenet_input.ImageNetInput(str(tmp_path), source='imagenet2012')
  with pytest.raises(datasets.DataError, match='imagenet2012 is not prepared.*manual'):
    data.check()
