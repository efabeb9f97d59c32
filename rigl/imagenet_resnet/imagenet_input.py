"""ImageNet input: the preprocessing of the original (tensorflow/tpu, TF 1.15 era).

Sources:

- `tfrecords`: a directory of TFRecord files `train-*` and `validation-*` in the layout
  of tensorflow/tpu's `imagenet_to_gcs.py` (`image/encoded` JPEG bytes,
  `image/class/label` in 1..1000), local or on `gs://`;
- `imagenet2012`: TensorFlow Datasets' ImageNet (labels 0..999), the same preprocessing
  on the JPEG bytes;
- no data directory: synthetic all-zero images of class 0, as the original, to
  smoke-test a machine.

Preprocessing, bit for bit the original's:

- training: a random crop with `sample_distorted_bounding_box` (whole image as the box,
  at least 10% of it, aspect ratio in [3/4, 4/3], area in [8%, 100%], 10 attempts),
  decoded *with* the crop (`decode_and_crop_jpeg`); if no crop was found, the evaluation
  crop instead; a bicubic resize to 224 and a random horizontal flip;
- evaluation: the central crop of side 224 / (224 + 32) of the shorter side, decoded
  with the crop, and a bicubic resize to 224.

The resize is TF1's `resize_bicubic` (no half-pixel centres, no antialiasing): TF2's
`tf.image.resize` gives other pixels, and the released checkpoints lose accuracy on
them. Pixels stay float32 in [0, 255] (the bicubic output is not clipped); the model
standardises them. The random draws are stateless, seeded by the run's seed, the input
pipeline and the example's position in its stream.
"""

import os

import tensorflow as tf

from rigl import datasets

IMAGE_SIZE = 224
CROP_PADDING = 32
SOURCES = ('tfrecords', 'imagenet2012')
TRAIN_FILE_PATTERN = 'train-*'
EVAL_FILE_PATTERN = 'validation-*'
_SHUFFLE_BUFFER = 1024
_READ_BUFFER_BYTES = 8 * 1024 * 1024
_CYCLE_LENGTH = 64


def resize_bicubic(image, size):
  """TF1's `tf.image.resize_bicubic` of one image (align_corners=False, no half pixels)."""
  return tf.raw_ops.ResizeBicubic(images=image[tf.newaxis], size=[size, size],
                                  align_corners=False, half_pixel_centers=False)[0]


def decode_and_center_crop(image_bytes, image_size=IMAGE_SIZE):
  """The central crop of side image_size / (image_size + 32) * shorter side, resized."""
  shape = tf.image.extract_jpeg_shape(image_bytes)
  height, width = shape[0], shape[1]
  crop_size = tf.cast(
      image_size / (image_size + CROP_PADDING) *
      tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  offset_height = ((height - crop_size) + 1) // 2
  offset_width = ((width - crop_size) + 1) // 2
  window = tf.stack([offset_height, offset_width, crop_size, crop_size])
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return resize_bicubic(image, image_size)


def decode_and_random_crop(image_bytes, image_size, seed):
  """The original's Inception-style crop, or the central crop when none was found."""
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=(3. / 4, 4. / 3.),
      area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  crop_height, crop_width, _ = tf.unstack(size)
  window = tf.stack([offset_y, offset_x, crop_height, crop_width])
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  # As the original: the crop "failed" if it has the shape of the whole JPEG.
  failed = tf.reduce_sum(tf.cast(tf.equal(shape, tf.shape(image)), tf.int32)) >= 3
  return tf.cond(failed, lambda: decode_and_center_crop(image_bytes, image_size),
                 lambda: resize_bicubic(image, image_size))


def preprocess_for_train(image_bytes, image_size, seed):
  """A random crop, resized, randomly flipped: float32 [image_size, image_size, 3]."""
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = decode_and_random_crop(image_bytes, image_size, crop_seed)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.reshape(image, [image_size, image_size, 3])


def preprocess_for_eval(image_bytes, image_size):
  """The central crop, resized: float32 [image_size, image_size, 3]."""
  return tf.reshape(decode_and_center_crop(image_bytes, image_size),
                    [image_size, image_size, 3])


def parse_example(serialized):
  """`(JPEG bytes, label in 0..999)` of a tensorflow/tpu ImageNet TFExample."""
  parsed = tf.io.parse_single_example(serialized, {
      'image/encoded': tf.io.FixedLenFeature((), tf.string, ''),
      'image/class/label': tf.io.FixedLenFeature([], tf.int64, -1),
  })
  return parsed['image/encoded'], tf.cast(parsed['image/class/label'], tf.int32) - 1


class ImageNetInput:
  """Training and evaluation streams for `train_lib.TrainLoop`.

  Args:
    data_directory: the TFRecord directory (`source='tfrecords'`), TFDS's data directory
      (`source='imagenet2012'`), or '' / None for synthetic data.
    source: 'tfrecords' or 'imagenet2012'.
    train_batch_size: the global training batch.
    num_eval_images: the evaluation examples (the first of the validation split).
    image_size: height and width of the images.
    num_parallel_calls: parallel decoding and preprocessing calls.
    seed: seed of the random crops, flips and shuffles.
    eval_on_train: evaluate on the training split (the original's `eval_on_train`),
      with the evaluation preprocessing.
  """

  def __init__(self, data_directory, source='tfrecords', train_batch_size=1024,
               num_eval_images=50000, image_size=IMAGE_SIZE, num_parallel_calls=64,
               seed=0, eval_on_train=False):
    if source not in SOURCES:
      raise ValueError(f'Unknown dataset {source!r}; choose one of {SOURCES}.')
    self.data_directory = data_directory or None
    self.source = source
    self.train_batch_size = train_batch_size
    self.num_eval_images = num_eval_images
    self.image_size = image_size
    self.num_parallel_calls = num_parallel_calls
    self.seed = seed
    self.eval_on_train = eval_on_train
    self.synthetic = self.source == 'tfrecords' and not self.data_directory

  def check(self, training=True, evaluation=True):
    """Fails now, with what to do, if the data that will be read cannot be.

    Args:
      training: the training split will be read.
      evaluation: the evaluation split (validation, or train with `eval_on_train`) will
        be read.

    Raises:
      datasets.DataError: no `train-*` or `validation-*` files in the directory where
        they are needed, or TFDS's imagenet2012 is not prepared.
    """
    if self.synthetic:
      return
    if self.source == 'imagenet2012':
      datasets.tfds_builder(
          'imagenet2012', self.data_directory, downloadable=False,
          advice='download ImageNet by hand into TFDS\'s manual directory and prepare it '
          '(tfds build imagenet2012), or give --dataset=tfrecords with a directory of '
          'train-*/validation-* TFRecords')
      return
    needed = {TRAIN_FILE_PATTERN} if training else set()
    if evaluation:
      needed.add(TRAIN_FILE_PATTERN if self.eval_on_train else EVAL_FILE_PATTERN)
    for pattern in sorted(needed):
      if not self._files(pattern):
        raise datasets.DataError(
            f'--data_directory={self.data_directory!r} has no {pattern} files; it must '
            'hold ImageNet as TFRecords named train-* (to train) and validation-* (to '
            'evaluate), in the layout of tensorflow/tpu\'s imagenet_to_gcs.py, or use '
            '--dataset=imagenet2012 for TensorFlow Datasets, or no --data_directory for '
            'synthetic data.')

  def _files(self, pattern):
    return sorted(tf.io.gfile.glob(os.path.join(self.data_directory, pattern)))

  # --- Records ------------------------------------------------------------------------

  def _train_records(self, context):
    """`(JPEG bytes, label)` of this pipeline's share of the training split, endless."""
    if self.source == 'imagenet2012':
      return self._tfds_records('train', context, shuffle=True).repeat()
    files = self._files(TRAIN_FILE_PATTERN)
    pipelines, index = context.num_input_pipelines, context.input_pipeline_id
    files = tf.data.Dataset.from_tensor_slices(files)
    if len(self._files(TRAIN_FILE_PATTERN)) >= pipelines:
      files = files.shard(pipelines, index)
    records = files.repeat().interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=_READ_BUFFER_BYTES),
        cycle_length=_CYCLE_LENGTH, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    if len(self._files(TRAIN_FILE_PATTERN)) < pipelines:
      records = records.shard(pipelines, index)
    return records.shuffle(_SHUFFLE_BUFFER, seed=self.seed).map(
        parse_example, num_parallel_calls=self.num_parallel_calls)

  def _eval_records(self, context):
    """`(JPEG bytes, label)` of this pipeline's share of the evaluation images."""
    split = 'train' if self.eval_on_train else 'validation'
    if self.source == 'imagenet2012':
      records = self._tfds_records(split, None, shuffle=False)
    else:
      pattern = TRAIN_FILE_PATTERN if self.eval_on_train else EVAL_FILE_PATTERN
      records = tf.data.TFRecordDataset(self._files(pattern),
                                        buffer_size=_READ_BUFFER_BYTES).map(parse_example)
    # Sharded example by example, so that every pipeline gets its exact share.
    return records.take(self.num_eval_images).shard(context.num_input_pipelines,
                                                    context.input_pipeline_id)

  def _tfds_records(self, split, context, shuffle):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    read_config = tfds.ReadConfig(input_context=context, shuffle_seed=self.seed)
    dataset = tfds.load('imagenet2012', split=split, data_dir=self.data_directory,
                        shuffle_files=shuffle, read_config=read_config,
                        decoders={'image': tfds.decode.SkipDecoding()})
    return dataset.map(lambda e: (e['image'], tf.cast(e['label'], tf.int32)))

  # --- Streams for the loop -----------------------------------------------------------

  def train_input_fn(self, context, start_batch):
    """Batches of `context`'s per-replica size, endless (see `train_lib.TrainLoop`).

    Synthetic data is the same at every position; real data restarts its stream, with
    draws seeded by `start_batch`, when a run resumes (as the original's TPUEstimator
    restarted its input pipeline).
    """
    batch_size = context.get_per_replica_batch_size(self.train_batch_size)
    size = self.image_size
    if self.synthetic:
      return tf.data.Dataset.from_tensors(
          (tf.zeros([size, size, 3], tf.float32), tf.constant(0, tf.int32))).repeat().batch(
              batch_size, drop_remainder=True)
    base_seed = tf.stack([tf.cast(self.seed, tf.int64),
                          tf.cast(start_batch, tf.int64) * 1024 + context.input_pipeline_id])

    def preprocess(index, record):
      image_bytes, label = record
      seed = tf.random.experimental.stateless_fold_in(base_seed, index)
      return preprocess_for_train(image_bytes, size, seed), label

    return self._train_records(context).enumerate().map(
        preprocess, num_parallel_calls=self.num_parallel_calls).batch(
            batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def eval_input_fn(self, context):
    """This pipeline's share of the `num_eval_images` evaluation examples, once each."""
    size = self.image_size
    if self.synthetic:
      examples = tf.data.Dataset.from_tensors(
          (tf.zeros([size, size, 3], tf.float32), tf.constant(0, tf.int32))).repeat(
              self.num_eval_images)
      return examples.shard(context.num_input_pipelines, context.input_pipeline_id)
    return self._eval_records(context).map(
        lambda image_bytes, label: (preprocess_for_eval(image_bytes, size), label),
        num_parallel_calls=self.num_parallel_calls)
