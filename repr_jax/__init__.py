"""repr-jax: RePr (Prakash et al., CVPR 2019) and filter pruning in JAX/Flax.

Public API — in your own training loop, on your own Flax model (Linen or NNX)::

    Pruner(method, model, example_input, epochs=, steps_per_epoch=, **settings)  # any method
      .wrap(optax_tx) .init(params) .before_epoch(...) .forward(...) .loss_terms(...)
      .update_masks(...) .after_step(ps) .after_epoch(...) .export(variables, ps, rebuild=)
    Pruner(..., logits=0)                            # a model returning (logits, features): which is the logits
    nnx.Pruner(method, nnx_module, example_input, ...)  # NNX's own loop: nnx.Optimizer, nnx.jit, in place
    shrink_nnx(module, exported), adapt(nnx_module), model_layers(model, input_shape)
    distillation_loss(student_logits, teacher_logits, labels, T, alpha)

The building blocks::

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
    DepthwiseConv(kernel_size, strides, padding)     # nn.Conv(feature_group_count=C)'s params, fast on XLA:CPU
    PointwiseConv(features)                          # nn.Conv(F, (1, 1))'s params, a matmul on XLA:CPU
    compiler_options(model)                          # the XLA options a model declares: jax.jit(..., compiler_options=)
    TrainState, create_train_state, create_model, RunConfig, run
    load_data(dataset, data_dir, image_size) → Dataset  # cifar10|cifar100|folder|npz|tfds:NAME
    load_cifar, synthetic_cifar, channel_stats(images), Preprocessing(mean, std, crop_pad, flip)
    FolderStream(index_folder(root, split), batch), prefetch_to_device, sample_stats  # larger than memory
    ArrayStream(images, labels, batch)               # host-memory arrays, batch by batch through Grain
    run_epoch(state, images, labels, key, ...), run_epoch_batches(state, batches, key, ...), evaluate(_batches)
    stack(states), unstack(states, i), data_mesh(devices), replicate(tree, mesh)  # seeds, devices

The names are imported on first use (PEP 562), so ``import repr_jax`` and the command-line
``--help`` do not start JAX, Orbax or Matplotlib.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# submodule (relative to the package) → the public names it provides
_EXPORTS = {
    ".compress": ("ChannelGraph", "Exported", "channel_graph", "export", "export_model", "export_state"),
    ".compress.csr": ("CSR", "csr_decode", "csr_encode", "storage_report"),
    ".api": ("PruneState", "Pruner", "masked", "shrink_nnx"),
    ".distill": ("KDConfig", "distillation_loss", "soft_kl"),
    ".experiment": ("run",),
    ".models.nnx_adapter": ("adapt",),
    ".models.dropconnect": ("DropConnectDense",),
    ".models.depthwise": ("DepthwiseConv",),
    ".models.pointwise": ("PointwiseConv",),
    ".xla_options": ("compiler_options",),
    ".config": ("RunConfig", "RunError"),
    ".criteria": ("CRITERIA", "drop_priority", "get_criterion", "score_filters"),
    ".data": ("Cifar", "DataError", "Dataset", "channel_stats", "load_cifar", "load_data", "synthetic_cifar"),
    ".data.pipeline": ("Preprocessing",),
    ".layers": ("ConvLayer", "prunable_convs"),
    ".masks": ("apply_masks", "drop_filters", "init_masks", "live_filters", "masked_updates",
        "revive_filters", "with_element_mask", "with_live_filters"),
    ".methods": ("METHODS", "Event", "Method", "MethodConfig", "MethodContext", "Phase", "create_method",
        "get_method", "method_config", "method_names", "register"),
    ".shapes": ("model_graph", "model_layers"),
    ".methods.repr": ("RePr", "ReprConfig", "ReprSchedule"),
    ".methods.standard": ("Standard", "StandardConfig"),
    ".models": ("architecture", "create_model", "from_architecture"),
    ".official": ("official_orthogonality", "official_reinit"),
    ".parallel": ("batch_sharding", "data_mesh", "replicate", "stack", "unstack"),
    ".optim": ("OptimConfig", "learning_rate_schedule", "make_optimizer", "phased_schedule"),
    ".ortho": ("filter_orthogonality", "orthogonality_penalty", "overlap_matrix", "score_layers"),
    ".ranking": ("rank_by_orthogonality", "select_drops"),
    ".reinit": ("orthogonal_reinit", "reinit_layers"),
    ".state": ("TrainState", "create_train_state"),
    ".data.streaming": ("ArrayStream", "FolderStream", "index_folder", "prefetch_to_device", "sample_stats"),
    ".train": ("evaluate", "evaluate_batches", "run_epoch", "run_epoch_batches"),
}
_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_ORIGIN, "nnx"])


_SUBMODULES = ("nnx", "data")   # rj.nnx.Pruner: every method in NNX's own loop; rj.data: the data path


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
        globals()[name] = value
        return value
    module = _ORIGIN.get(name)
    if module is None:
        raise AttributeError(f"module 'repr_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
