"""The scripts' training methods, and the optimizer each one trains with.

The one place where `--training_method` becomes an optimizer, for the MNIST, CIFAR-10
and ImageNet scripts alike:

| method     | optimizer                                                          |
| ---------- | ------------------------------------------------------------------ |
| `baseline` | the inner optimizer itself: dense training                         |
| `scratch`  | `SparseStaticOptimizer` without updates: a fixed random mask       |
| `set`      | `SparseSETOptimizer`                                               |
| `static`   | `SparseStaticOptimizer`                                            |
| `momentum` | `SparseMomentumOptimizer` (SNFS)                                   |
| `rigl`     | `SparseRigLOptimizer`                                              |
| `snip`     | `SparseSnipOptimizer`                                              |
| `dnw`      | `SparseDNWOptimizer`                                               |
| `prune`    | `GradualPruningOptimizer` (masks start dense; per-layer targets    |
|            | from `mask_init_method`, uniform by default)                       |

Every sparse method draws, keeps, grows and prunes its masks in `MethodConfig.structure`
(`rigl.structure`: unstructured, constant fan-in or N:M).
"""

import dataclasses

import keras

from rigl import sparse_layers
from rigl import sparse_optimizers as so
from rigl import sparse_utils
from rigl import structure as structures

ALL_METHODS = ('scratch', 'baseline', 'snip', 'dnw', 'set', 'momentum', 'rigl', 'static',
               'prune')
DST_METHODS = ('set', 'momentum', 'rigl', 'static')
# Methods that can train `rigl.sparse_layers.SparseDense` (they never need dense weights,
# and the dense gradient on update steps at most).
SPARSE_EXECUTION_METHODS = ('scratch', 'set', 'static', 'rigl')
# Methods whose masks do not start from a sparsity distribution: dense, or set by a score.
NO_MASK_INIT_METHODS = ('snip', 'dnw', 'baseline', 'prune')
# Methods whose updates move connections, so constant fan-in may ablate neurons.
ABLATING_METHODS = ('set', 'momentum', 'rigl')


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """A training method and its settings, in the original scripts' flag names.

  Attributes:
    training_method: one of `ALL_METHODS`.
    end_sparsity: the target overall sparsity.
    mask_init_method: the sparsity distribution ('random', 'erdos_renyi',
      'erdos_renyi_kernel', 'str'); needed by every method but baseline and prune.
    custom_sparsity_map: `{name: sparsity}` outside the distribution's budget (a
      weight's key, a layer name or a glob; see `SparseOptimizerBase`).
    erk_power_scale: exponent of the ERK densities.
    seed: seed of the masks and of the random draws of mask updates.
    maskupdate_begin_step, maskupdate_end_step, maskupdate_frequency, drop_fraction,
      drop_fraction_anneal, grow_init, s_momentum, rigl_acc_scale: dynamic sparse
      training (set, static, momentum, rigl).
    pruning_begin_step, pruning_end_step, pruning_frequency, threshold_decay: gradual
      pruning (prune).
    structure: 'unstructured', 'constant_fan_in' or 'N:M' (`rigl.structure`), for
      every sparse method.
    ablation_threshold: constant fan-in's neuron ablation (SRigL's gamma_sal) in the
      methods that move connections (set, momentum, rigl); 0: none.
    initialize_masks: draw the masks from the distribution when the optimizer is built
      (False when they are loaded from elsewhere).
  """
  training_method: str
  end_sparsity: float = 0.9
  mask_init_method: str = 'random'
  custom_sparsity_map: dict = dataclasses.field(default_factory=dict)
  erk_power_scale: float = 1.0
  seed: int = 0
  maskupdate_begin_step: int = 0
  maskupdate_end_step: int = 25000
  maskupdate_frequency: int = 100
  drop_fraction: float = 0.3
  drop_fraction_anneal: str = 'constant'
  grow_init: str = 'zeros'
  s_momentum: float = 0.9
  rigl_acc_scale: float = 0.0
  pruning_begin_step: int = 0
  pruning_end_step: int = -1
  pruning_frequency: int = 100
  threshold_decay: float = 0.0
  structure: str = structures.UNSTRUCTURED
  ablation_threshold: float = structures.DEFAULT_ABLATION_THRESHOLD
  initialize_masks: bool = True

  def __post_init__(self):
    if self.training_method not in ALL_METHODS:
      raise ValueError(f'Unknown training_method {self.training_method!r}; choose one of '
                       f'{ALL_METHODS}.')
    needs_distribution = self.training_method not in ('baseline', 'prune') and (
        self.initialize_masks or self.training_method in ('snip', 'dnw'))
    if needs_distribution and not self.mask_init_method:
      raise ValueError(
          f'--training_method={self.training_method} needs a sparsity distribution: set '
          '--mask_init_method to random, erdos_renyi, erdos_renyi_kernel or str.')
    if self.mask_init_method and (
        self.mask_init_method not in sparse_utils.MASK_INIT_METHODS):
      raise ValueError(f'mask_init_method {self.mask_init_method!r} is not one of '
                       f'{sparse_utils.MASK_INIT_METHODS}.')
    structures.check(self.structure)
    structures.check_ablation_threshold(self.ablation_threshold)

  @property
  def is_sparse(self):
    return self.training_method != 'baseline'


def make_optimizer(inner, config):
  """The optimizer of `config.training_method`, wrapping the Keras optimizer `inner`.

  Raises:
    ValueError: a setting the method does not accept (the message names it).
  """
  method = config.training_method
  if method == 'baseline':
    return inner
  masks = dict(
      default_sparsity=config.end_sparsity if config.initialize_masks else None,
      mask_init_method=config.mask_init_method or 'random',
      custom_sparsity_map=config.custom_sparsity_map,
      erk_power_scale=config.erk_power_scale, stateless_seed_offset=config.seed,
      structure=config.structure)
  if method == 'prune':
    # Masks start dense; the distribution sets each layer's final sparsity.
    del masks['default_sparsity']
    return so.GradualPruningOptimizer(
        inner, begin_step=config.pruning_begin_step, end_step=config.pruning_end_step,
        frequency=config.pruning_frequency, target_sparsity=config.end_sparsity,
        threshold_decay=config.threshold_decay, **masks)
  if method in ('snip', 'dnw'):
    masks['default_sparsity'] = config.end_sparsity
    cls = so.SparseSnipOptimizer if method == 'snip' else so.SparseDNWOptimizer
    return cls(inner, **masks)
  if method == 'scratch':
    # A fixed mask: a static optimizer whose only possible update (at step 0, which is
    # never an after-the-step step) would replace nothing anyway.
    return so.SparseStaticOptimizer(inner, begin_step=0, end_step=0, frequency=1,
                                    drop_fraction=0.0, **masks)
  dst = dict(begin_step=config.maskupdate_begin_step, end_step=config.maskupdate_end_step,
             frequency=config.maskupdate_frequency, drop_fraction=config.drop_fraction,
             drop_fraction_anneal=config.drop_fraction_anneal, grow_init=config.grow_init,
             **masks)
  if method in ABLATING_METHODS and config.structure == structures.CONSTANT_FAN_IN:
    dst['ablation_threshold'] = config.ablation_threshold
  if method == 'set':
    return so.SparseSETOptimizer(inner, **dst)
  if method == 'static':
    return so.SparseStaticOptimizer(inner, **dst)
  if method == 'momentum':
    return so.SparseMomentumOptimizer(inner, momentum=config.s_momentum, **dst)
  return so.SparseRigLOptimizer(inner, initial_acc_scale=config.rigl_acc_scale, **dst)


def to_sparse_execution(masked_model, config):
  """`masked_model` as the sparse-layer model `config`'s method trains (same masks).

  The masks are drawn here exactly as `make_optimizer(..., config)` draws them when it
  is built on the masked model (unless `config.initialize_masks` is False: then they
  are taken as they are), and the `MaskedDense` layers become `SparseDense` with those
  active weights; any other masked layers stay masked.

  Raises:
    ValueError: the method cannot train sparse layers.
  """
  if config.training_method not in SPARSE_EXECUTION_METHODS:
    raise ValueError(
        f'Sparse execution trains only {SPARSE_EXECUTION_METHODS}, not '
        f'training_method={config.training_method!r}: the others need the dense weights '
        'or gradients at every step (snip, dnw, momentum, prune) or have no masks '
        '(baseline).')
  so.check_sparse_execution_structure(config.structure)
  if config.initialize_masks:
    # Every method of SPARSE_EXECUTION_METHODS draws its masks from these arguments
    # alone, as this optimizer does on being built; it is used for nothing else.
    so.SparseStaticOptimizer(
        keras.optimizers.SGD(), default_sparsity=config.end_sparsity,
        mask_init_method=config.mask_init_method or 'random',
        custom_sparsity_map=config.custom_sparsity_map,
        erk_power_scale=config.erk_power_scale,
        stateless_seed_offset=config.seed).build(masked_model.trainable_variables)
  return sparse_layers.to_sparse_execution(masked_model)
