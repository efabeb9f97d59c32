"""CIFAR-10 through TensorFlow Datasets, preprocessed as the original.

Every image is cast to float and standardised on its own (`per_image_standardization`).
Training images are then padded by 4 pixels on each side with the edge rows and columns
mirrored *including* the border pixel (the original concatenates the reversed 4 edge
rows and columns), cropped back to 32x32 at random and flipped at random; the training
split is repeated and shuffled with a 50,000-image buffer. Evaluation covers the 10,000
test images once.
"""

import tensorflow as tf

from rigl import datasets

IMAGE_SIZE = 32
PADDING = 4
SHUFFLE_BUFFER = 50000
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
               'ship', 'truck')
ADVICE = ('prepare TFDS\'s cifar10 in --data_directory on a machine with network access '
          '(python -c "import tensorflow_datasets as tfds; tfds.load(\'cifar10\', '
          'data_dir=DIR)"), then copy that directory here.')


def pad_input(image, pad=PADDING):
  """Pads `pad` pixels on each side, mirroring the edge rows and columns (border included)."""
  image = tf.concat([image[:pad][::-1], image, image[-pad:][::-1]], axis=0)
  return tf.concat([image[:, :pad][:, ::-1], image, image[:, -pad:][:, ::-1]], axis=1)


def standardize(image):
  return tf.image.per_image_standardization(tf.cast(image, tf.float32))


def preprocess_train(image, seed):
  """Pad, random 32x32 crop, random flip of a standardised image (stateless draws)."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  image = tf.image.stateless_random_crop(pad_input(image), [IMAGE_SIZE, IMAGE_SIZE, 3],
                                         crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


class Cifar10Input:
  """Training and evaluation streams of CIFAR-10 for `train_lib.TrainLoop`.

  Args:
    data_dir: TFDS's data directory (None: its default).
    batch_size: the global training batch.
    seed: seed of the shuffles, crops and flips.
  """

  def __init__(self, data_dir, batch_size, seed=0):
    self.data_dir = data_dir or None
    self.batch_size = batch_size
    self.seed = seed

  def check(self):
    """Fails now, with what to do, if TFDS cannot serve cifar10 from here."""
    datasets.tfds_builder('cifar10', self.data_dir, ADVICE)

  def _split(self, split, context=None, shuffle_files=False):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    read_config = tfds.ReadConfig(input_context=context, shuffle_seed=self.seed)
    return datasets.load('cifar10', split, self.data_dir, ADVICE, as_supervised=True,
                         shuffle_files=shuffle_files, read_config=read_config)

  def eval_examples(self):
    return int(self._split('test').cardinality())

  def train_input_fn(self, context, start_batch):
    """Batches of `context`'s per-replica size, endless, seeded by `start_batch`."""
    batch_size = context.get_per_replica_batch_size(self.batch_size)
    base_seed = tf.stack([tf.cast(self.seed, tf.int64),
                          tf.cast(start_batch, tf.int64) * 1024 + context.input_pipeline_id])

    def preprocess(index, example):
      image, label = example
      seed = tf.random.experimental.stateless_fold_in(base_seed, index)
      return preprocess_train(standardize(image), seed), tf.cast(label, tf.int32)

    examples = self._split('train', context, shuffle_files=True)
    # The whole training split (50,000 images) fits the original's buffer.
    buffer = min(SHUFFLE_BUFFER, max(int(examples.cardinality()), 1))
    examples = examples.repeat().shuffle(buffer, seed=self.seed)
    return examples.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(
        batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def eval_input_fn(self, context):
    """This pipeline's share of the test images, once each."""
    return self._split('test').shard(context.num_input_pipelines,
                                     context.input_pipeline_id).map(
        lambda image, label: (standardize(image), tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE)
