"""Tests of the shared training loop on a tiny synthetic problem."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import layers
from rigl import mask_update_dispatch
from rigl import sparse_optimizers
from rigl import train_lib

FEATURES, CLASSES, BATCH = 8, 3, 4


def build_model():
  keras.utils.set_random_seed(1)
  return keras.Sequential([
      keras.Input((FEATURES,)),
      layers.MaskedDense(6, activation='relu', name='hidden'),
      layers.MaskedDense(CLASSES, name='logits'),
  ])


def rigl_optimizer():
  return sparse_optimizers.SparseRigLOptimizer(
      keras.optimizers.SGD(0.1, momentum=0.9), frequency=3, drop_fraction=0.5,
      default_sparsity=0.5, stateless_seed_offset=7)


def set_optimizer():
  return sparse_optimizers.SparseSETOptimizer(
      keras.optimizers.SGD(0.1), frequency=3, drop_fraction=0.5, default_sparsity=0.5)


def train_input_fn(context, start_batch):
  # Batch i depends only on i, so the stream can start anywhere; each replica takes its
  # slice of the global batch.
  per_replica = context.get_per_replica_batch_size(BATCH)

  def batch(i):
    seed = tf.stack([tf.constant(3, tf.int64), i])
    x = tf.random.stateless_normal([BATCH, FEATURES], seed)
    return x, tf.argmax(x[:, :CLASSES], axis=1)

  return tf.data.Dataset.range(start_batch, 1 << 40).map(batch).unbatch().batch(
      per_replica)


EVAL_X = np.random.RandomState(0).normal(size=(15, FEATURES)).astype(np.float32)


def eval_input_fn(context):
  return tf.data.Dataset.from_tensor_slices(
      (EVAL_X, EVAL_X[:, :CLASSES].argmax(1))).shard(context.num_input_pipelines,
                                                    context.input_pipeline_id)


def make_loop(output_dir, make_optimizer=rigl_optimizer, hooks=(), strategy=None,
              **config):
  config = train_lib.LoopConfig(
      output_dir=str(output_dir), **{
          'train_steps': 12, 'steps_per_checkpoint': 4, 'steps_per_execution': 3,
          'steps_per_eval': 6, 'summary_steps': 2, 'train_batch_size': BATCH,
          'eval_batch_size': 4, 'eval_examples': 15, **config})
  return train_lib.TrainLoop(
      build_model, make_optimizer, per_example_loss, train_input_fn, eval_input_fn,
      config, strategy=strategy, hooks=hooks)


def per_example_loss(labels, logits):
  return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def state(loop):
  values = {f'model/{i}': np.asarray(v) for i, v in enumerate(loop.model.variables)}
  values.update({f'optimizer/{i}': np.asarray(v)
                 for i, v in enumerate(loop.optimizer.variables)})
  values['input_position'] = loop.input_position.numpy()
  return values


class _Interrupt(Exception):
  pass


class _InterruptAfter(train_lib.Hook):

  def __init__(self, step):
    self.step = step

  def before_chunk(self, loop, step):
    if step >= self.step:
      raise _Interrupt()


def test_interrupted_run_resumes_to_the_same_state(tmp_path):
  straight = make_loop(tmp_path / 'straight')
  straight.run('train_and_eval')

  with pytest.raises(_Interrupt):
    make_loop(tmp_path / 'resumed', hooks=[_InterruptAfter(5)]).run('train_and_eval')
  resumed = make_loop(tmp_path / 'resumed')
  resumed.run('train_and_eval')

  assert resumed.initial_step == 4
  assert resumed.global_step == straight.global_step == 12
  expected, actual = state(straight), state(resumed)
  assert expected.keys() == actual.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_rigl_mask_updates_consume_batches_without_steps(tmp_path):
  rigl = make_loop(tmp_path / 'rigl')
  rigl.run('train')
  # Updates at steps 0, 3, 6 and 9 each took a batch without advancing the step.
  assert rigl.global_step == 12
  assert int(rigl.input_position.numpy()) == 16
  set_loop = make_loop(tmp_path / 'set', make_optimizer=set_optimizer)
  set_loop.run('train')
  assert int(set_loop.input_position.numpy()) == 12
  assert float(train_lib.sparsity_metrics(set_loop.model)['global_sparsity']) == (
      pytest.approx((24 + 9) / (48 + 18)))


@pytest.mark.parametrize('make_optimizer, updates', [(rigl_optimizer, 4), (set_optimizer, 4)],
                         ids=['rigl', 'set'])
def test_only_steps_that_may_update_run_with_the_update_test(tmp_path, monkeypatch,
                                                             make_optimizer, updates):
  tested = make_loop(tmp_path / 'tested', make_optimizer=make_optimizer)
  init = mask_update_dispatch.MaskUpdateDispatch.__init__
  with monkeypatch.context() as patch:
    patch.setattr(mask_update_dispatch.MaskUpdateDispatch, '__init__',
                  lambda self, optimizer, make: init(self, optimizer, make, skip_test=False))
    tested.run('train')
  calls = _record_calls(monkeypatch)
  dispatched = make_loop(tmp_path / 'dispatched', make_optimizer=make_optimizer)
  dispatched.run('train')
  expected, actual = state(tested), state(dispatched)
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)
  # One tested call per update; the steps between updates ran without the test.
  assert [steps for is_tested, steps in calls if is_tested] == [1] * updates
  assert sum(steps for is_tested, steps in calls if not is_tested) == (
      12 - (updates if make_optimizer is set_optimizer else 0))


def _record_calls(monkeypatch):
  """`[(whether the call ran the copy with the update test, steps)]`, as they happen."""
  calls = []
  next_call = mask_update_dispatch.MaskUpdateDispatch.next_call

  def recording(dispatch, limit):
    function, steps = next_call(dispatch, limit)
    calls.append((function is dispatch._tested, steps))  # pylint: disable=protected-access
    return function, steps

  monkeypatch.setattr(mask_update_dispatch.MaskUpdateDispatch, 'next_call', recording)
  return calls


def test_xla_compiled_loops_also_leave_the_test_out_between_updates(tmp_path, monkeypatch):
  calls = _record_calls(monkeypatch)
  loop = make_loop(tmp_path, train_steps=6, jit_compile=True)
  loop.run('train')
  assert loop.global_step == 6
  # RigL updates at steps 0 and 3, each in a call of its own with the test (neither
  # advances the step); the checkpoint at step 4 ends a call.
  assert calls == [(True, 1), (False, 3), (True, 1), (False, 1), (False, 2)]


def test_checkpoints_eval_modes_and_summaries(tmp_path):
  loop = make_loop(tmp_path, keep_checkpoint_max=0)
  final = loop.run('train_and_eval')
  names = sorted(f for f in os.listdir(tmp_path) if f.endswith('.index'))
  assert names == [f'model.ckpt-{s}.index' for s in (12, 4, 8)] or names == sorted(
      f'model.ckpt-{s}.index' for s in (4, 8, 12))

  follower = make_loop(tmp_path)
  assert follower.run('eval') == final
  assert follower.global_step == 12

  once = make_loop(tmp_path, eval_once_ckpt_prefix='model.ckpt-8')
  metrics = once.run('eval_once')
  assert once.global_step == 8
  assert set(metrics) >= {'loss', 'accuracy', 'global_sparsity', 'sparsity/hidden',
                          'sparsity/logits'}
  assert (tmp_path / 'eval_model.ckpt-8').is_dir()

  with pytest.raises(train_lib.CheckpointError, match='model.ckpt-5'):
    make_loop(tmp_path, eval_once_ckpt_prefix='model.ckpt-5').run('eval_once')
  with pytest.raises(train_lib.CheckpointError, match='no checkpoint'):
    make_loop(tmp_path / 'empty').run('eval_once')

  def tags(directory):
    found = set()
    for name in os.listdir(directory):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
        found.update(value.tag for value in event.summary.value)
    return found

  assert tags(tmp_path / 'train') >= {'loss', 'accuracy', 'learning_rate',
                                      'sparsity/masked_weights', 'sparsity/hidden',
                                      'drop_fraction'}
  assert tags(tmp_path / 'eval') >= {'loss', 'accuracy', 'global_sparsity'}


def test_mirrored_strategy_trains_what_one_device_trains(tmp_path, mirrored_strategy):
  # Each replica takes half of every global batch; the gradients are averaged over the
  # replicas, so the run is the one-device run on the same global batches.
  single = make_loop(tmp_path / 'one', train_steps=6)
  single.run('train')
  mirrored = make_loop(tmp_path / 'two', strategy=mirrored_strategy, train_steps=6)
  mirrored.run('train')
  assert mirrored.global_step == single.global_step == 6
  for mask, reference in zip(layers.get_masks(mirrored.model), layers.get_masks(single.model)):
    replicas = [np.asarray(v) for v in mask.value.values]
    assert len(replicas) == 2
    for value in replicas:
      np.testing.assert_array_equal(value, np.asarray(reference))
  for variable, reference in zip(mirrored.model.trainable_variables,
                                 single.model.trainable_variables):
    for value in variable.value.values:
      np.testing.assert_allclose(np.asarray(value), np.asarray(reference), rtol=1e-5,
                                 atol=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('train_steps', -1, 'train_steps must be an integer >= 0, got -1'),
    ('steps_per_execution', 0, 'steps_per_execution must be an integer >= 1, got 0'),
    ('steps_per_eval', 2.5, 'steps_per_eval must be an integer >= 1, got 2.5'),
    ('eval_examples', 0, 'eval_examples must be an integer >= 1, got 0'),
])
def test_loop_config_rejects_bad_values(tmp_path, field, value, message):
  with pytest.raises(ValueError, match=message):
    train_lib.LoopConfig(output_dir=str(tmp_path), **{'train_steps': 1, field: value})


def test_loop_config_needs_an_existing_parent(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    train_lib.LoopConfig(output_dir=str(tmp_path / 'missing' / 'run'), train_steps=1)


def test_make_strategy():
  assert train_lib.make_strategy() is tf.distribute.get_strategy()
  with pytest.raises(train_lib.StrategyError, match='num_gpus=64'):
    train_lib.make_strategy(num_gpus=64)
  with pytest.raises(train_lib.StrategyError, match='num_gpus must be an integer >= 0, got -1'):
    train_lib.make_strategy(num_gpus=-1)


def test_training_does_not_resume_another_models_checkpoint(tmp_path):
  make_loop(tmp_path, train_steps=4).run('train')

  def dense_model():
    return keras.Sequential([keras.Input((FEATURES,)),
                             keras.layers.Dense(6, activation='relu', name='hidden'),
                             keras.layers.Dense(CLASSES, name='logits')])

  loop = train_lib.TrainLoop(
      dense_model, lambda: keras.optimizers.SGD(0.1), per_example_loss,
      train_input_fn, eval_input_fn,
      train_lib.LoopConfig(output_dir=str(tmp_path), train_steps=8,
                           train_batch_size=BATCH, eval_examples=15))
  with pytest.raises(train_lib.CheckpointError, match='not written by this model'):
    loop.run('train')


def test_evaluation_covers_every_example_once(tmp_path):
  loop = make_loop(tmp_path, eval_batch_size=4)  # 15 examples: 4 batches, the last padded
  metrics = loop.evaluate()
  logits = loop.model(EVAL_X).numpy()
  labels = EVAL_X[:, :CLASSES].argmax(1)
  assert metrics['accuracy'] == pytest.approx((logits.argmax(1) == labels).mean())
  assert metrics['top_5_accuracy'] == 1.0  # 3 classes
  expected_loss = per_example_loss(labels, logits).numpy().mean()
  assert metrics['loss'] == pytest.approx(expected_loss, rel=1e-5)
  with pytest.raises(ValueError, match='held 15 examples, but 16 were expected'):
    make_loop(tmp_path / 'more', eval_examples=16).evaluate()


def test_mirrored_evaluation_equals_one_device(tmp_path, mirrored_strategy):
  single = make_loop(tmp_path / 'one', eval_batch_size=4).evaluate()
  mirrored = make_loop(tmp_path / 'two', eval_batch_size=4,
                       strategy=mirrored_strategy).evaluate()
  for key in ('loss', 'accuracy', 'global_sparsity'):
    assert mirrored[key] == pytest.approx(single[key], rel=1e-5), key


def test_training_summaries_of_the_original(tmp_path):
  make_loop(tmp_path, steps_per_epoch=6).run('train')
  found = set()
  for name in os.listdir(tmp_path / 'train'):
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / 'train' / name)):
      found.update(value.tag for value in event.summary.value)
  assert found >= {'loss', 'cross_loss', 'reg_loss', 'learning_rate', 'current_epoch',
                   'grad_norm', 'var_norm', 'global_step/sec', 'examples/sec',
                   'drop_fraction', 'sparsity/masked_weights', 'sparsity/hidden'}


def test_batch_sizes_must_split_over_the_replicas(tmp_path, mirrored_strategy):
  with pytest.raises(ValueError, match='eval_batch_size=3 must be a multiple of the 2'):
    make_loop(tmp_path, eval_batch_size=3, strategy=mirrored_strategy)


@pytest.mark.parametrize('tpu, message', [
    ('', 'a TPU on this machine'),
    ('grpc://127.0.0.1:1', "the TPU 'grpc://127.0.0.1:1'.*nothing answers")])
def test_use_tpu_without_a_tpu_fails_at_once(tpu, message):
  with pytest.raises(train_lib.StrategyError, match=message):
    train_lib.make_strategy(use_tpu=True, tpu=tpu)


def test_rigl_updates_at_step_0_when_that_is_its_only_update_step(tmp_path):
  # end_step=0: the only update is at step 0, before the first weight step; the loop's
  # host-side schedule must not skip it (model.fit and the original both do it).
  loop = make_loop(tmp_path, train_steps=3, make_optimizer=lambda: (
      sparse_optimizers.SparseRigLOptimizer(
          keras.optimizers.SGD(0.1), begin_step=0, end_step=0, frequency=1,
          drop_fraction=0.5, default_sparsity=0.5)))
  initial = [m.numpy().copy() for m in loop.optimizer.masks]
  loop.run('train')
  assert int(loop.optimizer.last_mask_update_step.numpy()) == 0
  assert float(loop.optimizer.changed_connections.numpy()) > 0
  assert any((a != m.numpy()).any() for a, m in zip(initial, loop.optimizer.masks))
  assert int(loop.input_position.numpy()) == 4  # the update took a batch of its own


# --- Sequence models: a loss per position, examples that weight their positions --------

SEQ_LEN, VOCAB = 5, 7
SEQ_X = np.random.RandomState(1).randint(0, VOCAB, (9, SEQ_LEN)).astype(np.int32)
SEQ_WEIGHTS = np.ones((9, SEQ_LEN), np.float32)
SEQ_WEIGHTS[-1, 2:] = 0  # the last window is partly padding


def build_sequence_model():
  keras.utils.set_random_seed(2)
  inputs = keras.Input((SEQ_LEN,), dtype='int32')
  x = keras.layers.Embedding(VOCAB, 4)(inputs)
  return keras.Model(inputs, keras.layers.Dense(VOCAB, name='logits')(x))


def sequence_loop(output_dir, strategy=None, **config):
  def train_fn(context, start_batch):
    def batch(i):
      x = tf.random.stateless_uniform([BATCH, SEQ_LEN], tf.stack([tf.constant(5, tf.int64), i]),
                                      0, VOCAB, dtype=tf.int32)
      return x, tf.roll(x, 1, axis=1)
    per_replica = context.get_per_replica_batch_size(BATCH)
    return tf.data.Dataset.range(start_batch, 1 << 40).map(batch).unbatch().batch(per_replica)

  def eval_fn(context):
    return tf.data.Dataset.from_tensor_slices(
        (SEQ_X, np.roll(SEQ_X, 1, axis=1), SEQ_WEIGHTS)).shard(
            context.num_input_pipelines, context.input_pipeline_id)

  return train_lib.TrainLoop(
      build_sequence_model, lambda: keras.optimizers.SGD(0.5), per_example_loss, train_fn,
      eval_fn, train_lib.LoopConfig(
          output_dir=str(output_dir), train_steps=4, train_batch_size=BATCH,
          eval_batch_size=4, eval_examples=9, **config),
      strategy=strategy, derived_metrics=lambda m: {'bits': m['loss'] / np.log(2)})


def test_sequence_metrics_are_means_over_every_weighted_position(tmp_path):
  loop = sequence_loop(tmp_path)
  loop.run('train')
  metrics = loop.evaluate()
  logits = loop.model(SEQ_X).numpy()
  labels = np.roll(SEQ_X, 1, axis=1)
  losses = per_example_loss(labels, logits).numpy()  # [9, 5]
  weight = SEQ_WEIGHTS.sum()  # 42 positions: 9 windows, the last with 2 real ones
  assert metrics['loss'] == pytest.approx((losses * SEQ_WEIGHTS).sum() / weight, rel=1e-5)
  assert metrics['bits'] == pytest.approx(metrics['loss'] / np.log(2))
  hits = (logits.argmax(-1) == labels) * SEQ_WEIGHTS
  assert metrics['accuracy'] == pytest.approx(hits.sum() / weight)
  # Another evaluation set through the same loop: only the real positions count.
  def first_positions(context):
    return tf.data.Dataset.from_tensor_slices(
        (SEQ_X[:2], labels[:2], np.eye(SEQ_LEN, dtype=np.float32)[:2])).shard(
            context.num_input_pipelines, context.input_pipeline_id)
  other = loop.evaluate(eval_input_fn=first_positions, eval_examples=2)
  assert other['loss'] == pytest.approx((losses[0, 0] + losses[1, 1]) / 2, rel=1e-5)


def test_mirrored_sequence_evaluation_equals_one_device(tmp_path, mirrored_strategy):
  single = sequence_loop(tmp_path / 'one').evaluate()
  mirrored = sequence_loop(tmp_path / 'two', strategy=mirrored_strategy).evaluate()
  for key in ('loss', 'accuracy', 'bits'):
    assert mirrored[key] == pytest.approx(single[key], rel=1e-5), key
