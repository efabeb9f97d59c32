"""Training FLOPs of each sparse-training method, as the RigL paper accounts them (App. H).

A training step on one example costs a forward pass (f) and a backward pass of twice that
(the gradient with respect to the activations and the one with respect to the weights), so
`3 f`. With a sparse network of inference FLOPs `f_S` (dense: `f_D`):

- dense training ('baseline'): `3 f_D`;
- fixed or randomly rewired masks ('scratch', 'static', 'set', 'snip'): `3 f_S` (SNIP's one
  dense step and SET's random growth are negligible);
- a dense weight gradient every step ('momentum', i.e. SNFS, and 'dnw'): `2 f_S + f_D`;
- RigL: a dense gradient once every `maskupdate_frequency` (dT) steps, on an iteration of
  its own: `(3 f_S dT + 2 f_S + f_D) / (dT + 1)` per step, over the whole training;
- gradual magnitude pruning ('prune'): `3 f(s_t)` with the sparsity `s_t` of its schedule,
  averaged over the training steps.

The training cost of a run is the per-step cost times the number of steps, so relative to
dense training of the standard length it is `training_steps_multiplier * cost / (3 f_D)`.
"""

import math

from rigl import pruning_schedule

FIXED_MASK_METHODS = ('scratch', 'static', 'set', 'snip')
DENSE_GRADIENT_METHODS = ('momentum', 'dnw')
TRAINING_METHODS = ('baseline',) + FIXED_MASK_METHODS + DENSE_GRADIENT_METHODS + (
    'rigl', 'prune')


def training_flops_per_step(method, sparse_flops, dense_flops, maskupdate_frequency=100):
  """Average FLOPs of one training step on one example for a mask-based `method`."""
  if method == 'baseline':
    return 3 * dense_flops
  if method in FIXED_MASK_METHODS:
    return 3 * sparse_flops
  if method in DENSE_GRADIENT_METHODS:
    return 2 * sparse_flops + dense_flops
  if method == 'rigl':
    if not maskupdate_frequency >= 1:
      raise ValueError(
          f'maskupdate_frequency must be a positive number of steps, got '
          f'{maskupdate_frequency!r}.')
    return ((3 * sparse_flops * maskupdate_frequency + 2 * sparse_flops + dense_flops) /
            (maskupdate_frequency + 1))
  if method == 'prune':
    raise ValueError(
        "The cost of 'prune' depends on its sparsity schedule: use "
        'gradual_pruning_flops_per_step.')
  raise ValueError(f'Unknown training method {method!r}; choose one of '
                   f'{TRAINING_METHODS}.')


def gradual_pruning_sparsity(step, target_sparsity, begin_step, end_step):
  """Zhu & Gupta's cubic schedule from 0 at `begin_step` to the target at `end_step`."""
  if step < begin_step:
    return 0.0
  progress = min((step - begin_step) / (end_step - begin_step), 1.0)
  return pruning_schedule.gradual_sparsity(progress, 0.0, target_sparsity)


def gradual_pruning_flops_per_step(flops_at_sparsity, target_sparsity, begin_step,
                                   end_step, pruning_frequency, train_steps):
  """Average per-step training FLOPs of gradual magnitude pruning.

  The masks are updated every `pruning_frequency` steps from `begin_step` to `end_step`
  and held in between, so the network runs at the schedule's sparsity of the last update.

  Args:
    flops_at_sparsity: function from an overall sparsity to inference FLOPs.
    target_sparsity: the sparsity reached at `end_step`.
    begin_step, end_step, pruning_frequency: the pruning schedule.
    train_steps: length of the training.
  """
  if not 0 <= begin_step < end_step <= train_steps:
    raise ValueError(
        f'The pruning schedule needs 0 <= begin_step < end_step <= train_steps, got '
        f'begin_step={begin_step}, end_step={end_step}, train_steps={train_steps}.')
  if not pruning_frequency >= 1:
    raise ValueError(f'pruning_frequency must be a positive number of steps, got '
                     f'{pruning_frequency!r}.')
  # Steps at which the sparsity changes, with the sparsity held from each of them on.
  update_steps = list(range(begin_step, end_step + 1, pruning_frequency))
  segments = [(0, 0.0)] + [
      (step, gradual_pruning_sparsity(step, target_sparsity, begin_step, end_step))
      for step in update_steps]
  total = 0.0
  for (start, sparsity), (stop, _) in zip(segments, segments[1:] + [(train_steps, None)]):
    if stop > start:
      total += (stop - start) * 3 * flops_at_sparsity(sparsity)
  return total / train_steps


def training_flops_ratio(per_step_flops, dense_flops, training_steps_multiplier=1.0):
  """Training FLOPs of a run relative to dense training of the standard length."""
  if not (training_steps_multiplier > 0 and math.isfinite(training_steps_multiplier)):
    raise ValueError(f'training_steps_multiplier must be a positive number, got '
                     f'{training_steps_multiplier!r}.')
  return training_steps_multiplier * per_step_flops / (3 * dense_flops)
