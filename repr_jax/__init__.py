"""repr-jax: RePr (Prakash et al., CVPR 2019) and filter pruning in JAX/Flax.

Public API::

    filter_orthogonality(kernel, mask=None)        # per-filter RePr score O_f
    score_layers(params, masks, layers)             # every prunable conv, vmapped per shape
    select_drops(scores, live, fraction, ...)       # global / per-layer ranking → masks
    orthogonal_reinit(key, kernel, keep, saved)     # null-space re-initialisation
    official_orthogonality(kernel), official_reinit(kernel, dropped, gain)  # the official code's
    reinit_layers(key, params, saved, keep, layers)
    score_filters(name, state, layers, key=, images=, labels=)  # any criterion in CRITERIA
    drop_priority(name, scores)                     # → "higher = drop first" for the ranking
    prunable_convs(params), init_masks, masked_updates, drop_filters, revive_filters
    Method, MethodConfig, Phase, register, get_method, method_config  # the method framework
    channel_graph(model, variables), export(architecture, variables, live)  # physical compression
    csr_encode(weights_2d, index_bits), csr_decode(encoded), storage_report(params)  # Han et al. CSR
    DropConnectDense(features, keep), KDConfig, soft_kl(student, teacher, T)  # DropConnect, distillation
    TrainState, create_train_state, create_model, load_cifar, RunConfig, run
    stack(states), unstack(states, i), data_mesh(devices), replicate(tree, mesh)  # seeds, devices
"""
from repr_jax.compress import ChannelGraph, Exported, channel_graph, export, export_state
from repr_jax.compress.csr import CSR, csr_decode, csr_encode, storage_report
from repr_jax.distill import KDConfig, soft_kl
from repr_jax.models.dropconnect import DropConnectDense
from repr_jax.config import RunConfig, RunError
from repr_jax.criteria import CRITERIA, drop_priority, get_criterion, score_filters
from repr_jax.data import Cifar, DataError, load_cifar, synthetic_cifar
from repr_jax.layers import ConvLayer, prunable_convs
from repr_jax.masks import (apply_masks, drop_filters, init_masks, live_filters, masked_updates,
                            revive_filters, with_element_mask, with_live_filters)
from repr_jax.methods import (METHODS, Event, Method, MethodConfig, MethodContext, Phase,
                              create_method, get_method, method_config, method_names, register)
from repr_jax.methods.repr import RePr, ReprConfig, ReprSchedule
from repr_jax.methods.standard import Standard, StandardConfig
from repr_jax.models import architecture, create_model, from_architecture
from repr_jax.official import official_orthogonality, official_reinit
from repr_jax.parallel import batch_sharding, data_mesh, replicate, stack, unstack
from repr_jax.optim import OptimConfig, learning_rate_schedule, make_optimizer, phased_schedule
from repr_jax.ortho import filter_orthogonality, orthogonality_penalty, overlap_matrix, score_layers
from repr_jax.ranking import rank_by_orthogonality, select_drops
from repr_jax.reinit import orthogonal_reinit, reinit_layers
from repr_jax.state import TrainState, create_train_state
from repr_jax.train import evaluate, run_epoch

__version__ = "0.1.0"
__all__ = [
    "CRITERIA", "CSR", "ChannelGraph", "Cifar", "DropConnectDense", "KDConfig", "ConvLayer", "DataError", "Event", "Exported", "METHODS",
    "Method", "MethodConfig", "MethodContext", "OptimConfig", "Phase", "RePr", "ReprConfig",
    "ReprSchedule", "RunConfig", "RunError", "Standard", "StandardConfig", "TrainState",
    "apply_masks", "architecture", "batch_sharding", "data_mesh", "replicate", "stack", "unstack", "channel_graph", "create_method", "create_model",
    "create_train_state", "csr_decode", "csr_encode", "drop_filters", "drop_priority", "evaluate", "export", "export_state",
    "filter_orthogonality", "from_architecture", "get_criterion", "get_method", "init_masks",
    "learning_rate_schedule", "live_filters", "load_cifar", "make_optimizer", "masked_updates",
    "method_config", "method_names", "official_orthogonality", "official_reinit", "orthogonal_reinit", "orthogonality_penalty",
    "overlap_matrix", "phased_schedule", "prunable_convs", "rank_by_orthogonality", "register",
    "reinit_layers", "revive_filters", "run_epoch", "score_filters", "score_layers",
    "select_drops", "soft_kl", "storage_report", "synthetic_cifar", "with_element_mask", "with_live_filters",
]
