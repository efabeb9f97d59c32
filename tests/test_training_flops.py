"""Tests of rigl.training_flops: the paper's per-method training cost (Appendix H)."""

import pytest

from rigl import training_flops

SPARSE, DENSE = 2.0, 10.0


@pytest.mark.parametrize('method,expected', [
    ('baseline', 3 * DENSE),
    ('scratch', 3 * SPARSE), ('static', 3 * SPARSE), ('set', 3 * SPARSE),
    ('snip', 3 * SPARSE),
    ('momentum', 2 * SPARSE + DENSE), ('dnw', 2 * SPARSE + DENSE),
])
def test_per_step_cost(method, expected):
  assert training_flops.training_flops_per_step(method, SPARSE, DENSE) == expected


def test_rigl_adds_a_dense_gradient_iteration_every_update():
  # Every 4 sparse steps (3 f_S each) one more iteration with a dense weight gradient.
  per_step = training_flops.training_flops_per_step('rigl', SPARSE, DENSE,
                                                    maskupdate_frequency=4)
  assert per_step == (4 * 3 * SPARSE + 2 * SPARSE + DENSE) / 5


def test_published_rigl_erk_80_5x_ratio():
  # ResNet-50 ERK 0.8 costs 0.4153 of the dense inference FLOPs; RigL 5x: 2.09x training.
  per_step = training_flops.training_flops_per_step('rigl', 0.4153, 1.0, 100)
  assert round(training_flops.training_flops_ratio(per_step, 1.0, 5), 2) == 2.09


def test_gradual_pruning_holds_each_sparsity_until_the_next_update():
  # 10 steps; updates at 4 (the schedule's start: still 0) and 6 (the target, 0.8).
  per_step = training_flops.gradual_pruning_flops_per_step(
      lambda sparsity: 1 - sparsity, target_sparsity=0.8, begin_step=4, end_step=6,
      pruning_frequency=2, train_steps=10)
  assert per_step == pytest.approx(3 * (4 * 1 + 2 * 1 + 4 * 0.2) / 10)


def test_gradual_pruning_schedule_is_cubic():
  assert training_flops.gradual_pruning_sparsity(5, 0.8, 0, 10) == pytest.approx(0.7)
  assert training_flops.gradual_pruning_sparsity(0, 0.8, 0, 10) == 0
  assert training_flops.gradual_pruning_sparsity(12, 0.8, 0, 10) == 0.8


def test_multiplier_scales_the_ratio():
  assert training_flops.training_flops_ratio(3 * SPARSE, DENSE, 5) == 5 * SPARSE / DENSE


@pytest.mark.parametrize('call,match', [
    (lambda: training_flops.training_flops_per_step('lottery', 1, 2), "'lottery'.*rigl"),
    (lambda: training_flops.training_flops_per_step('prune', 1, 2), 'schedule'),
    (lambda: training_flops.training_flops_per_step('rigl', 1, 2, 0), 'maskupdate_frequency'),
    (lambda: training_flops.training_flops_ratio(1, 2, 0), 'training_steps_multiplier'),
    (lambda: training_flops.gradual_pruning_flops_per_step(abs, 0.5, 10, 5, 1, 20),
     'begin_step=10, end_step=5'),
])
def test_bad_arguments_are_value_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
