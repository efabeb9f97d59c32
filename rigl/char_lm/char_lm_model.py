"""The RigL paper's character-level language model, its masked weights, costs and sampler.

Section 4.2 and Appendix I of the paper: bytes (a vocabulary of 256) through a shared
embedding of 128, one GRU with a state of 512, a readout of two dense layers of widths
256 and 128, then the logits over the next byte. Where the paper is silent this model
chooses (`docs/deviations.md`):

- "shared embedding": the logits are the readout's 128 features times the embedding
  table transposed, plus a bias of their own (`TiedEmbedding`; `tie_embedding=False`
  gives the logits a dense layer of their own);
- the readout layers have ReLU activations (two linear maps in a row would be one);
- the GRU is Keras' (`reset_after=True`, the cuDNN form; sigmoid gates, tanh state);
- masked are the GRU's kernel and recurrent kernel and the readout's kernels
  (`MASKED_KEYS`); the embedding (and an untied output layer) stays dense;
- L2 (`l2 * ||w||^2 / 2`, TF1's `l2_regularizer`) is on every masked kernel and on the
  embedding table, not on biases.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from rigl import counting
from rigl import masking
from rigl import sparse_utils

VOCAB_SIZE = 256
GRU_NAME = 'gru'
READOUT_PREFIX = 'readout_'
# The keys `rigl.masking` gives the masked kernels (see `masked_kernel_shapes`).
GRU_KERNEL_KEY = 'gru/gru_cell'
GRU_RECURRENT_KEY = 'gru/gru_cell/recurrent_kernel'


@keras.saving.register_keras_serializable(package='rigl')
class TiedEmbedding(keras.layers.Layer):
  """An embedding table that also gives the logits: `x @ embeddings^T + output_bias`.

  Called on integer ids it looks them up; called with `reverse=True` on features of the
  embedding's width it returns logits over the vocabulary (the "shared embedding").
  With `tied=False` it is a plain embedding (no output bias).
  """

  def __init__(self, input_dim, output_dim, embeddings_regularizer=None, tied=True,
               **kwargs):
    super().__init__(**kwargs)
    self.input_dim = input_dim
    self.output_dim = output_dim
    self.tied = tied
    self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)

  def build(self, input_shape=None):
    del input_shape
    if self.built:
      return
    self.embeddings = self.add_weight(
        shape=(self.input_dim, self.output_dim), name='embeddings',
        initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        regularizer=self.embeddings_regularizer)
    if self.tied:
      self.output_bias = self.add_weight(shape=(self.input_dim,), name='output_bias',
                                         initializer='zeros')
    self.built = True

  def call(self, inputs, reverse=False):
    if reverse:
      return keras.ops.matmul(inputs, keras.ops.transpose(self.embeddings)) + (
          self.output_bias)
    return keras.ops.take(self.embeddings, keras.ops.cast(inputs, 'int32'), axis=0)

  def compute_output_spec(self, inputs, reverse=False):
    if reverse:
      shape = tuple(inputs.shape[:-1]) + (self.input_dim,)
    else:
      shape = tuple(inputs.shape) + (self.output_dim,)
    return keras.KerasTensor(shape, dtype=self.compute_dtype)

  def get_config(self):
    return {**super().get_config(), 'input_dim': self.input_dim,
            'output_dim': self.output_dim, 'tied': self.tied,
            'embeddings_regularizer': keras.regularizers.serialize(
                self.embeddings_regularizer)}


def check_sizes(embedding_size, gru_units, readout_units, tie_embedding):
  """The readout widths as a tuple of ints, if the sizes fit together.

  Raises:
    ValueError: a size is not a positive integer, or a tied embedding's width differs
      from the last readout width (the logits are those features times its table).
  """
  readout_units = tuple(int(u) for u in readout_units)
  for name, value in (('embedding_size', embedding_size), ('gru_units', gru_units)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  if not readout_units or min(readout_units) < 1:
    raise ValueError(f'readout_units must be one or more positive widths, got '
                     f'{readout_units!r}.')
  if tie_embedding and readout_units[-1] != embedding_size:
    raise ValueError(
        f'With a tied (shared) embedding the last readout width ({readout_units[-1]}) '
        f'must equal embedding_size ({embedding_size}); the logits are its features '
        'times the embedding table.')
  return readout_units


def build_model(embedding_size=128, gru_units=512, readout_units=(256, 128),
                tie_embedding=True, l2=5e-4):
  """The language model: int ids `[batch, time]` -> logits `[batch, time, 256]`.

  Args:
    embedding_size: width of the byte embedding.
    gru_units: the GRU's state size.
    readout_units: widths of the readout's dense (ReLU) layers; with `tie_embedding`
      the last must equal `embedding_size`.
    tie_embedding: the logits reuse the embedding table (the paper's "shared
      embedding"); False gives them a dense layer `logits` of their own.
    l2: TF1's L2 scale: `l2 * ||w||^2 / 2` on the kernels and the embedding table.

  Raises:
    ValueError: the sizes do not fit together.
  """
  readout_units = check_sizes(embedding_size, gru_units, readout_units, tie_embedding)
  regularizer = keras.regularizers.L2(l2 / 2) if l2 else None
  inputs = keras.Input((None,), dtype='int32', name='bytes')
  embedding = TiedEmbedding(VOCAB_SIZE, embedding_size, tied=tie_embedding,
                            embeddings_regularizer=regularizer, name='embedding')
  x = embedding(inputs)
  x, _ = keras.layers.GRU(gru_units, return_sequences=True, return_state=True,
                          kernel_regularizer=regularizer,
                          recurrent_regularizer=regularizer, name=GRU_NAME)(x)
  for i, units in enumerate(readout_units, 1):
    x = keras.layers.Dense(units, activation='relu', kernel_regularizer=regularizer,
                           name=f'{READOUT_PREFIX}{i}')(x)
  if tie_embedding:
    logits = embedding(x, reverse=True)
  else:
    logits = keras.layers.Dense(VOCAB_SIZE, name='logits')(x)
  return keras.Model(inputs, logits, name='char_lm')


def sparsify(model):
  """Marks the GRU's kernel and recurrent kernel and the readout's kernels for masking.

  The embedding stays dense (masking's rule leaves embeddings out), and so does an
  untied `logits` layer. Returns the model.
  """
  exclude = ['logits'] if any(layer.name == 'logits' for layer in model.layers) else []
  return masking.sparsify_model(model, exclude=exclude, verbose=False)


def masked_kernel_shapes(embedding_size=128, gru_units=512, readout_units=(256, 128)):
  """`{key: shape}` of the kernels `sparsify` masks, in the model's order."""
  shapes = {GRU_KERNEL_KEY: (embedding_size, 3 * gru_units),
            GRU_RECURRENT_KEY: (gru_units, 3 * gru_units)}
  width = gru_units
  for i, units in enumerate(readout_units, 1):
    shapes[f'{READOUT_PREFIX}{i}'] = (width, units)
    width = units
  return shapes


# --- Costs ------------------------------------------------------------------------------

def layer_sparsities(sparsity, mask_init_method='random', custom_sparsity_map=None,
                     erk_power_scale=1.0, **sizes):
  """`{key: sparsity}` of the masked kernels, as the sparse optimizer distributes them."""
  if not sparsity:
    return {key: 0.0 for key in masked_kernel_shapes(**sizes)}
  named = [sparse_utils.NamedShape(key, shape)
           for key, shape in masked_kernel_shapes(**sizes).items()]
  return {key: float(value) for key, value in sparse_utils.get_sparsities(
      named, mask_init_method, sparsity, dict(custom_sparsity_map or {}),
      erk_power_scale=erk_power_scale, extract_name_fn=lambda name: name).items()}


def inference_cost(sparsities, embedding_size=128, gru_units=512,
                   readout_units=(256, 128), tie_embedding=True, param_bits=32,
                   convention='rigl_2020'):
  """`counting.LayerCost` of predicting one character (one step of one sequence).

  The MicroNet rules of `rigl.counting`: the GRU's three gates in both of its kernels
  (`counting.count_gru`), each readout layer with its ReLU, and the logits (a bias and,
  by the rules' convention, an activation per output; with a tied embedding their
  weights are the embedding table's, stored once). Looking up the embedding costs no
  arithmetic; its table is counted in the size.

  Args:
    sparsities: `{key: sparsity}` of the masked kernels (`layer_sparsities`).

  Raises:
    ValueError: the sizes do not fit together (`check_sizes`).
  """
  readout_units = check_sizes(embedding_size, gru_units, readout_units, tie_embedding)
  shapes = masked_kernel_shapes(embedding_size, gru_units, readout_units)
  costs = [
      counting.LayerCost(param_bits=VOCAB_SIZE * embedding_size * param_bits, mults=0,
                         adds=0),
      counting.count_gru(embedding_size, gru_units, sparsities[GRU_KERNEL_KEY],
                         sparsities[GRU_RECURRENT_KEY], param_bits, convention)]
  for key, shape in list(shapes.items())[2:]:
    costs.append(counting.count_layer(counting.LayerGeometry(counting.DENSE, shape, 1),
                                      sparsities[key], param_bits, convention))
  logits = counting.count_layer(
      counting.LayerGeometry(counting.DENSE, (readout_units[-1], VOCAB_SIZE), 1), 0.0,
      param_bits, convention)
  if tie_embedding:  # only the output bias is a weight of its own
    logits = counting.LayerCost(VOCAB_SIZE * param_bits, logits.mults, logits.adds)
  costs.append(logits)
  return counting.LayerCost(param_bits=sum(c.param_bits for c in costs),
                            mults=sum(c.mults for c in costs),
                            adds=sum(c.adds for c in costs))


def zero_fraction(sparsities, embedding_size=128, gru_units=512, readout_units=(256, 128),
                  tie_embedding=True):
  """Fraction of zero weights over every weight matrix of the model (the masked kernels
  at `sparsities`, the dense embedding table and an untied output layer)."""
  shapes = masked_kernel_shapes(embedding_size, gru_units, readout_units)
  zeros = sum(sparse_utils.get_n_zeros(math.prod(shape), sparsities[key])
              for key, shape in shapes.items())
  total = sum(math.prod(s) for s in shapes.values()) + VOCAB_SIZE * embedding_size * (
      1 if tie_embedding else 2)
  return zeros / total


# --- Sampling ---------------------------------------------------------------------------

def make_sampler(model):
  """`(prompt bytes, num_characters, temperature, seed) -> bytes` generated by `model`.

  The prompt is run through the GRU, then each next byte is drawn from
  softmax(logits / temperature) with `tf.random.stateless_categorical` seeded by
  (seed, position), so a seed gives the same text on every run; temperature 0 takes
  the most likely byte. An empty prompt starts from a newline.
  """
  gru = model.get_layer(GRU_NAME)
  chars = keras.Input((None,), dtype='int32')
  state_in = keras.Input((gru.units,))
  # The training model's layers, run from a given state (it starts from zeros).
  x = model.get_layer('embedding')(chars)
  x, state = gru(x, initial_state=state_in)
  readout = sorted((layer for layer in model.layers
                    if layer.name.startswith(READOUT_PREFIX)),
                   key=lambda layer: int(layer.name[len(READOUT_PREFIX):]))
  for layer in readout:
    x = layer(x)
  names = {layer.name for layer in model.layers}
  logits = (model.get_layer('logits')(x) if 'logits' in names
            else model.get_layer('embedding')(x, reverse=True))
  step = keras.Model([chars, state_in], [logits, state])

  @tf.function
  def generate(prompt, num_characters, temperature, seed):
    logits, state = step([prompt[None, :], tf.zeros([1, gru.units])])
    last = logits[:, -1]
    generated = tf.TensorArray(tf.int32, size=num_characters)
    for i in tf.range(num_characters):
      if temperature > 0:
        draw = tf.random.stateless_categorical(
            last / temperature, 1, seed=tf.stack([seed, tf.cast(i, tf.int64)]),
            dtype=tf.int32)[:, 0]
      else:
        draw = tf.argmax(last, axis=-1, output_type=tf.int32)
      generated = generated.write(i, draw[0])
      logits, state = step([draw[:, None], state])
      last = logits[:, -1]
    return generated.stack()

  def sample(prompt, num_characters, temperature=1.0, seed=0):
    if temperature < 0 or not math.isfinite(temperature):
      raise ValueError(f'temperature must be a finite number >= 0, got {temperature!r}.')
    ids = np.frombuffer(prompt or b'\n', np.uint8).astype(np.int32)
    out = generate(tf.constant(ids), tf.constant(int(num_characters)),
                   tf.constant(float(temperature)), tf.constant(int(seed), tf.int64))
    return bytes(np.asarray(out, np.uint8).tobytes())

  return sample
