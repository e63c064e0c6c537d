"""repr-jax: RePr (Prakash et al., CVPR 2019) and filter pruning in JAX/Flax.

Public API::

    filter_orthogonality(kernel, mask=None)        # per-filter RePr score O_f
    score_layers(params, masks, layers)             # every prunable conv, vmapped per shape
    select_drops(scores, live, fraction, ...)       # global / per-layer ranking → masks
    orthogonal_reinit(key, kernel, keep, saved)     # null-space re-initialisation (QR)
    reinit_layers(key, params, saved, keep, layers)
    score_filters(name, state, layers, key=, images=, labels=)  # any criterion in CRITERIA
    drop_priority(name, scores)                     # → "higher = drop first" for the ranking
    prunable_convs(params), init_masks, masked_updates, drop_filters, revive_filters
    TrainState, create_train_state, create_model, load_cifar
"""
from repr_jax.criteria import CRITERIA, drop_priority, get_criterion, score_filters
from repr_jax.data import Cifar, DataError, load_cifar
from repr_jax.layers import ConvLayer, prunable_convs
from repr_jax.masks import (apply_masks, drop_filters, init_masks, live_filters, masked_updates,
                            revive_filters, with_live_filters)
from repr_jax.methods import RePr, ReprConfig, Standard, create_method
from repr_jax.models import create_model
from repr_jax.ortho import filter_orthogonality, orthogonality_penalty, overlap_matrix, score_layers
from repr_jax.ranking import rank_by_orthogonality, select_drops
from repr_jax.reinit import orthogonal_reinit, reinit_layers
from repr_jax.schedule import Phase, ReprSchedule
from repr_jax.state import TrainState, create_train_state
from repr_jax.train import OptimConfig, evaluate, learning_rate_schedule, make_optimizer, run_epoch

__version__ = "0.1.0"
__all__ = [
    "CRITERIA", "drop_priority", "get_criterion", "score_filters",
    "Cifar", "ConvLayer", "DataError", "OptimConfig", "Phase", "RePr", "ReprConfig",
    "ReprSchedule", "Standard", "TrainState", "apply_masks", "create_method", "create_model",
    "create_train_state", "drop_filters", "evaluate", "filter_orthogonality", "init_masks",
    "learning_rate_schedule", "live_filters", "load_cifar", "make_optimizer", "masked_updates",
    "orthogonal_reinit", "orthogonality_penalty", "overlap_matrix", "prunable_convs",
    "rank_by_orthogonality", "reinit_layers", "revive_filters", "run_epoch", "score_layers",
    "select_drops", "with_live_filters",
]
