"""Small ImageNet-format TFRecord directories of real JPEGs, written by the tests."""

import os

import numpy as np
import tensorflow as tf


def jpeg_bytes(rng, height, width):
  """A JPEG of smooth random content (so that decoding and resizing are not trivial)."""
  base = rng.uniform(0, 255, size=(height // 4 + 1, width // 4 + 1, 3))
  image = tf.image.resize(base[np.newaxis], (height, width), method='bilinear')[0]
  return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8),
                           quality=90).numpy()


def example(image, label):
  """A tensorflow/tpu ImageNet tf.train.Example: label in 1..classes."""
  return tf.train.Example(features=tf.train.Features(feature={
      'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
      'image/class/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  })).SerializeToString()


def write_imagenet(directory, train_files=2, train_per_file=6, validation=6, classes=10,
                   seed=0):
  """Writes train-0000i-of-... and validation-00000-of-00001 files; returns the labels."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.RandomState(seed)
  for index in range(train_files):
    path = os.path.join(directory, f'train-{index:05d}-of-{train_files:05d}')
    with tf.io.TFRecordWriter(path) as writer:
      for _ in range(train_per_file):
        size = rng.randint(40, 90, size=2)
        writer.write(example(jpeg_bytes(rng, *size), int(rng.randint(1, classes + 1))))
  labels = []
  with tf.io.TFRecordWriter(os.path.join(directory, 'validation-00000-of-00001')) as writer:
    for _ in range(validation):
      size = rng.randint(40, 90, size=2)
      labels.append(int(rng.randint(1, classes + 1)))
      writer.write(example(jpeg_bytes(rng, *size), labels[-1]))
  return labels
