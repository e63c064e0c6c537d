"""Physical compression: masks + channel graph → a smaller dense model that computes the same.

Rule (applied to the :class:`~repr_jax.compress.graph.ChannelGraph`): a dead filter (live
mask 0) is *removed* only if every index it feeds is fed by removed filters alone. An index
also fed by a live filter or by a :data:`~repr_jax.compress.graph.FIXED` source (the image,
a zero-padded option-A shortcut channel) keeps all its sources, so a dead filter tied into a
residual sum stays in the exported model as a zero filter (``kept_dead`` counts them).
For CIFAR ResNets this means only the first conv of each block shrinks (Li et al. 2017,
§4.3 prune those only for the same reason); for C^n and VGG every dead filter goes.

Every leaf axis the graph records is then sliced to the kept indices — the conv's kernel
output axis, bias and BatchNorm leaves, the next conv's input axis, the dense head's rows of
the flattened features — and the smaller model is rebuilt from the per-layer channel spec
(``rebuild(channels)``: :func:`repr_jax.models.create_model` with ``channels=`` for our zoo,
the user's own factory for theirs, :func:`export_model`); its parameter shapes must equal
the sliced ones or :class:`ExportError` names the first leaf that differs. Without a
``rebuild`` the export is the smaller variables and the channel spec alone (``module`` is
None). The FLOPs after are counted from the graph (each conv's and dense layer's kept input
× kept output channels, :meth:`~repr_jax.compress.graph.ChannelGraph.flops_after`); the
graph is traced once per model structure (:func:`~repr_jax.compress.structure.channel_graph`),
and a rebuilt module is only shape-checked (one abstract ``init``). Every trace is on the
example input's shape. A dead filter contributes exactly 0 to every consumer in the masked model (its kernel, bias and BatchNorm
γ/β are 0), so the two models compute the same logits up to float32 summation order.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.compress.graph import FIXED, ChannelGraph, index_kept
from repr_jax.compress.structure import channel_graph, variable_shapes
from repr_jax.layers import replace_path
from repr_jax.models import from_architecture, input_shape_of
from repr_jax.xla_options import compiler_options


class ExportError(ValueError):
    """The pruned model cannot be rebuilt as a smaller dense model."""


@dataclasses.dataclass(frozen=True)
class Exported:
    """A smaller dense model: its architecture (``architecture.json``; ``{}`` for a user's
    model), module (None without a ``rebuild``), variables, and what changed. ``channels``:
    width per conv — the channel spec a factory takes; ``removed``: removed filter indices
    per conv; ``kept_dead``: dead filters kept because they are tied to a live or fixed
    channel; ``blocked``: for a conv with dead filters kept because an operation the channel
    graph cannot see through reads them (a :class:`~repr_jax.compress.graph.Barrier`), what
    and where that operation is. ``flops_after``: multiply–adds per example after, from the
    channel graph."""
    architecture: dict
    variables: dict
    channels: dict[str, int]
    removed: dict[str, list[int]]
    kept_dead: dict[str, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    module: object = None
    blocked: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def warnings(self) -> list[str]:
        """One line per thing a user should know: nothing removed, dead filters a barrier kept."""
        lines = []
        if not any(self.removed.values()):
            kept = sum(self.kept_dead.values())
            lines.append("export removed nothing: " + (f"all {kept} dead filters are tied to live, fixed or "
                                                       "pinned channels" if kept else "no filter is dead"))
        for name, why in self.blocked.items():
            lines.append(f"export kept {self.kept_dead.get(name, 0)} dead filters of {name}: they feed "
                         f"{'; '.join(why)}, which the channel graph cannot rebuild smaller")
        return lines

    def report(self) -> dict:
        """``export.json``'s counts (logit difference added by the caller)."""
        return {"params_before": self.params_before, "params_after": self.params_after,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "params_ratio": self.params_before / max(self.params_after, 1),
                "flops_ratio": self.flops_before / max(self.flops_after, 1),
                "channels": self.channels,
                "removed_filters": {k: len(v) for k, v in self.removed.items()},
                "kept_dead_filters": self.kept_dead,
                **({"kept_by_unsupported_ops": self.blocked} if self.blocked else {})}


def removable(graph: ChannelGraph, live: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{conv: (F,) bool}``, True where the filter is physically removed (see module docstring).

    Starts from the dead filters and, until nothing changes, keeps every source of an index
    that still has a live, fixed or kept source.
    """
    removed = {name: ~(np.asarray(live[name]) > 0) if name in live else np.zeros(n, bool)
               for name, n in graph.layers.items()}

    changed = True
    while changed:
        changed = False
        for use in (*graph.uses, *graph.pins):
            for srcs in use.sources:
                if index_kept(srcs, removed):
                    for name, ch in srcs:
                        if (name, ch) != FIXED and removed[name][ch]:
                            removed[name][ch] = False
                            changed = True
    return removed


def _slice_variables(graph: ChannelGraph, variables: dict, removed: dict[str, np.ndarray]) -> dict:
    keep_by_leaf: dict[tuple, dict[int, np.ndarray]] = {}
    for use in graph.uses:
        keep = np.asarray([index_kept(srcs, removed) for srcs in use.sources])
        axes = keep_by_leaf.setdefault((use.collection,) + use.path, {})
        if use.axis in axes and not np.array_equal(axes[use.axis], keep):
            raise ExportError(f"{use.leaf} axis {use.axis} is indexed by two different channel sets")
        axes[use.axis] = keep
    out = {k: v for k, v in variables.items()}
    for (collection, *path), axes in keep_by_leaf.items():
        def cut(leaf, axes=axes):   # on the host: one program per leaf shape would compile otherwise
            leaf = np.asarray(leaf)
            for axis, keep in axes.items():
                leaf = np.compress(keep, leaf, axis=axis)
            return leaf
        out[collection] = replace_path(out[collection], tuple(path), cut)
    return jax.tree_util.tree_map(jnp.asarray, out)


def _shapes(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in flat}


def export_model(model, variables: dict, live: dict[str, jax.Array], input_shape, rebuild=None,
                 architecture: dict | None = None) -> Exported:
    """The smaller dense model that ``model`` with ``variables`` and live filters ``live``
    computes — for any Flax model the channel graph can trace.

    Args:
      model: the (big) Flax module (Linen, or NNX through :func:`repr_jax.nnx.adapt`).
      variables: ``{"params", "batch_stats"}``; dead filters must already be zero (as
        :func:`repr_jax.masks.drop_filters` leaves them; :func:`export_state` applies masks).
      live: ``{conv name: (F,) 0/1}`` live filters (e.g. :func:`repr_jax.masks.live_filters`).
      input_shape: one example's (H, W, C) (or a batch shape).
      rebuild: ``channels → module``, the same model with ``{conv name: width}`` (a factory
        that takes a channel spec); None: only the smaller variables and the channel spec.
      architecture: recorded on the result (the zoo's ``architecture.json``), its
        ``channels`` updated.
    """
    from repr_jax.shapes import example_shape
    shape = (1,) + example_shape(input_shape)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    variables.setdefault("batch_stats", {})
    graph = channel_graph(model, variables, shape)
    removed = removable(graph, {k: np.asarray(v) for k, v in live.items()})
    small_vars = _slice_variables(graph, variables, removed)
    widths = {name: int(n - removed[name].sum()) for name, n in graph.layers.items()}
    if any(w == 0 for w in widths.values()):
        empty = [n for n, w in widths.items() if w == 0]
        raise ExportError(f"export would leave {', '.join(empty)} with no filters")
    changed = {name: w for name, w in widths.items() if w != graph.layers[name]}
    small_arch = dict(architecture, channels={**architecture.get("channels", {}), **changed}) if architecture else {}
    small_model, flops_after = None, graph.flops_after(removed)
    params_after = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(small_vars["params"]))
    if rebuild is not None:
        try:
            small_model = rebuild(changed)
            template = variable_shapes(small_model, shape)
        except (ValueError, TypeError) as err:
            raise ExportError(f"the model cannot be rebuilt with these widths: {err}") from None
        template = {k: template.get(k, {}) for k in small_vars}
        want, got = _shapes(template), _shapes(small_vars)
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                raise ExportError(f"exported leaf {key} has shape {got.get(key)}, the rebuilt model "
                                  f"expects {want.get(key)}")
    dead = {name: int((np.asarray(live[name]) <= 0).sum()) if name in live else 0 for name in graph.layers}
    blocked = {}
    for name in graph.layers:
        kept = set(np.flatnonzero(~removed[name] & ~(np.asarray(live.get(name, 1)) > 0)).tolist())
        barriers = graph.pinned_by(name, kept) if kept else []
        if barriers:
            blocked[name] = [b.describe() for b in barriers]
    return Exported(
        architecture=small_arch, variables=small_vars, channels=widths,
        removed={n: np.flatnonzero(r).tolist() for n, r in removed.items()},
        kept_dead={n: dead[n] - int(removed[n].sum()) for n in graph.layers if dead[n] - int(removed[n].sum())},
        params_before=graph.params, params_after=params_after,
        flops_before=graph.flops, flops_after=flops_after, module=small_model, blocked=blocked)


def export(architecture: dict, variables: dict, live: dict[str, jax.Array], input_shape=None) -> Exported:
    """:func:`export_model` for a model of our zoo, described by its ``architecture.json``
    (:func:`repr_jax.models.architecture`; its ``input_shape`` unless one is given)."""
    def rebuild(changed):
        return from_architecture(dict(architecture, channels={**architecture.get("channels", {}), **changed}))
    return export_model(from_architecture(architecture), variables, live,
                        input_shape if input_shape is not None else input_shape_of(architecture),
                        rebuild=rebuild, architecture=architecture)


def export_state(state, architecture: dict) -> Exported:
    """:func:`export` of a train state: masks applied to the params, live filters from the masks."""
    from repr_jax.masks import apply_masks, live_filters
    params = apply_masks(state.params, state.masks)
    return export(architecture, {"params": params, "batch_stats": state.batch_stats},
                  live_filters(state.masks, state.layers))


def eval_apply(architecture: dict):
    """``f(variables, images)``: the eval-mode forward pass of the model ``architecture``
    describes as one compiled program (op-by-op dispatch of a deep model takes minutes on a
    CPU), with the XLA options the model declares, as its training had them
    (:mod:`repr_jax.xla_options`; MobileNetV2 at 64×64, batch 64: 0.45 GiB of temporaries
    instead of 1.43 with the process's flags)."""
    model = from_architecture(architecture)
    return jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=dict(compiler_options(model)) or None)


def logits(architecture: dict, variables: dict, images: jax.Array) -> jax.Array:
    """Eval-mode logits of the model ``architecture`` describes on float images
    (:func:`eval_apply`)."""
    return eval_apply(architecture)({k: v for k, v in variables.items() if k in ("params", "batch_stats")}, images)


def max_logit_difference(big_arch: dict, big_vars: dict, exported: Exported, images) -> float:
    """max |logits(masked big model) − logits(exported model)| on ``images`` (float32)."""
    a = logits(big_arch, big_vars, images)
    b = logits(exported.architecture, exported.variables, images)
    return float(jnp.max(jnp.abs(a - b)))


def save_exported(exported: Exported, directory, report: dict) -> None:
    """``directory/`` ← ``architecture.json``, ``export.json`` (``report``) and ``checkpoint/``
    holding the smaller model's variables; :func:`load_exported` reads it back."""
    import json
    from pathlib import Path

    from repr_jax.checkpoint import save_variables
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_variables(directory / "checkpoint", exported.variables)
    (directory / "architecture.json").write_text(json.dumps(exported.architecture, indent=2) + "\n")
    (directory / "export.json").write_text(json.dumps(report, indent=2) + "\n")


def load_exported(directory):
    """``(module, variables, architecture)`` of a model written by :func:`save_exported`."""
    import json
    from pathlib import Path

    from repr_jax.checkpoint import restore_variables
    directory = Path(directory)
    try:
        arch = json.loads((directory / "architecture.json").read_text())
    except (OSError, ValueError, RecursionError) as err:   # RecursionError: nested beyond the stack
        raise ExportError(f"{directory / 'architecture.json'} is not a readable architecture "
                          f"({' '.join(str(err).split())[:200]})") from None
    from repr_jax.models.user import check_trusted, is_reference
    if is_reference(str(arch.get("name", ""))):   # code named by a file: only when the user named it
        check_trusted(arch["name"], directory)
    model = from_architecture(arch)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + input_shape_of(arch))))
    template = {k: template.get(k, {}) for k in ("params", "batch_stats")}
    return model, restore_variables(directory / "checkpoint", template), arch


__all__ = ["ExportError", "Exported", "export", "export_model", "export_state", "eval_apply", "load_exported", "logits",
           "max_logit_difference", "removable", "save_exported"]
