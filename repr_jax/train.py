"""Pure, jitted training and evaluation on a device-resident data set (or on batches the
caller streams in: :func:`run_epoch_batches`, :func:`evaluate_batches`).

An epoch is a shuffled ``(steps, batch)`` index array over the device-resident data; each
step gathers its batch on device, so the host only dispatches (asynchronously) and reads
metrics every ``log_every`` steps for the progress bar. The step compiles once per run:
masks and re-initialisation change values, never shapes.

The step's loss is the cross-entropy plus named terms: ``λ·Σ O_f`` when ``ortho_lambda``
is set (any method), knowledge distillation's ``kd`` when the state carries a teacher
(:mod:`repr_jax.distill`) and the method's :meth:`~repr_jax.methods.base.Method.loss_terms`;
each term's epoch mean is reported. A method may also change the state before the forward
pass (``step_hook``), gate conv outputs (``channel_gates``) and carry trainable
``method_params``. The model gets per-step RNG streams ``dropout`` and ``dropconnect``.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from repr_jax.distill import kd_term
from repr_jax.layers import ConvLayer, intercept_outputs, response_site
from repr_jax.methods.base import Method, StepInputs
from repr_jax.ortho import orthogonality_penalty
from repr_jax.data.pipeline import Preprocessing, epoch_indices, eval_indices
from repr_jax.state import TrainState
from repr_jax.xla_options import state_jit

RNG_STREAMS = ("dropout", "dropconnect")
# fold_in constants of a step key (augmentation uses the step key itself)
_HOOK_STREAM, _MODEL_STREAM, _LOSS_STREAM = 11, 12, 13


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def zero_totals(terms=(), like=None) -> dict:
    """Running sums of an epoch's metrics: loss, correct, count and each loss term (placed
    as the state ``like`` is, see :func:`placed_like`)."""
    totals = {"loss": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(()),
              **{f"term/{name}": jnp.zeros(()) for name in terms}}
    return totals if like is None else placed_like(totals, like)


def placed_like(tree, state):
    """``tree`` committed to the devices of ``state``'s committed arrays (a state restored
    from a checkpoint, placed by :func:`repr_jax.experiment.start`, replicated over a mesh);
    as it is when none is committed. The step's outputs are committed, so an uncommitted
    argument beside them (fresh running sums, a value a method's host-side hook wrote into
    ``method_state``) is another argument signature, and the step would compile again."""
    for leaf in jax.tree_util.tree_leaves(state):
        if getattr(leaf, "committed", False):
            return jax.device_put(tree, leaf.sharding)
    return tree


def _gates(state, method, method_params, train):
    gates = method.channel_gates(method_params, state.method_state, train) if method is not None else None
    if not gates:
        return None
    sites = {response_site(layer): layer.name for layer in state.layers}
    return intercept_outputs(sites, lambda name, out: out * gates[name].astype(out.dtype)
                             if name in gates else out)


def forward(state, params, images, *, train: bool, method=None, method_params=None, rngs=None):
    """Logits (and the new batch stats when ``train``) of normalised ``images``, with the
    method's channel gates applied."""
    variables = {"params": params, "batch_stats": state.batch_stats}
    gates = _gates(state, method, state.method_params if method_params is None else method_params, train)

    def apply():
        if train:
            logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"],
                                             rngs=rngs)
            return logits, updates["batch_stats"]
        return state.apply_fn(variables, images, train=False), state.batch_stats

    if gates is None:
        return apply()
    with gates:
        return apply()


def update_masks(state, method):
    """The masks the optimizer applies this step: the state's, times the method's
    :meth:`~repr_jax.methods.base.Method.update_mask` (broadcast to the leaf where the
    state's mask is a scalar, which the optimizer would otherwise read as "unmasked")."""
    frozen = method.update_mask(state) if method is not None else None
    if frozen is None:
        return state.masks
    return jax.tree_util.tree_map(
        lambda m, f, p: m * f if jnp.ndim(m) else jnp.broadcast_to(f, jnp.shape(p)).astype(jnp.float32),
        state.masks, frozen, state.params)


_CIFAR = Preprocessing()


def train_step(state: TrainState, images, labels, key, *, layers: tuple[ConvLayer, ...],
               ortho_lambda: float = 0.0, method=None, augmentation: bool = True,
               preprocess: Preprocessing = _CIFAR):
    """One optimizer step on a uint8 batch: augmented by ``preprocess`` unless
    ``augmentation`` is False, and normalised by it (default: CIFAR's)."""
    if method is not None:
        state = method.step_hook(state, jax.random.fold_in(key, _HOOK_STREAM))
    x = preprocess(preprocess.augment(key, images) if augmentation else images)
    model_key = jax.random.fold_in(key, _MODEL_STREAM)
    rngs = {name: jax.random.fold_in(model_key, i) for i, name in enumerate(RNG_STREAMS)}

    def loss_fn(trainable):
        params, method_params = trainable
        logits, stats = forward(state, params, x, train=True, method=method,
                                method_params=method_params, rngs=rngs)
        loss = jnp.mean(cross_entropy(logits, labels))
        terms = {}
        if ortho_lambda:
            terms["ortho"] = ortho_lambda * orthogonality_penalty(params, state.masks, layers)
        if state.distill is not None:
            terms["kd"] = kd_term(state.distill, state.teacher, x, logits, loss)
        if method is not None:
            terms.update(method.loss_terms(StepInputs(params, method_params, state, x, labels, logits,
                                                      jax.random.fold_in(key, _LOSS_STREAM))))
        total = loss
        for name in sorted(terms):
            total = total + terms[name]
        return total, (loss, logits, stats, terms)

    (_, (loss, logits, stats, terms)), (grads, method_grads) = jax.value_and_grad(
        loss_fn, has_aux=True)((state.params, state.method_params))
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                         masks=update_masks(state, method))
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
    if state.method_tx is not None:
        m_updates, m_opt = state.method_tx.update(method_grads, state.method_opt_state, state.method_params)
        new = new.replace(method_params=optax.apply_updates(state.method_params, m_updates),
                          method_opt_state=m_opt)
    batch = labels.shape[0]
    metrics = {"loss": loss * batch, "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
               "count": jnp.asarray(batch, jnp.float32),
               **{f"term/{name}": value * batch for name, value in terms.items()}}
    return new, metrics


def _constrain(x, sharding):
    """``x`` laid out by ``sharding`` (the batch split over a device mesh), or as it is."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _indexed_step(state: TrainState, totals, images, labels, batch_index, key, *, layers, ortho_lambda,
                  method, augmentation, batch_sharding, preprocess):
    images, labels = _constrain(images[batch_index], batch_sharding), _constrain(labels[batch_index], batch_sharding)
    state, m = train_step(state, images, labels, jax.random.fold_in(key, state.step), layers=layers,
                          ortho_lambda=ortho_lambda, method=method, augmentation=augmentation,
                          preprocess=preprocess)
    return state, jax.tree_util.tree_map(jnp.add, totals, m)


_STEP_STATIC = ("layers", "ortho_lambda", "method", "augmentation", "batch_sharding", "preprocess")


@state_jit(static_argnames=_STEP_STATIC, donate_argnums=(0, 1))
def train_step_indexed(state: TrainState, totals, images, labels, batch_index, key, *,
                       layers: tuple[ConvLayer, ...], ortho_lambda: float = 0.0, method=None,
                       augmentation: bool = True, batch_sharding=None, preprocess: Preprocessing = _CIFAR):
    """Gather the batch on device, step, and add its metrics to the running ``totals``.

    Called once per step from the host with no synchronisation in between: dispatch is
    asynchronous, so the host only queues work. (A ``lax.scan`` over steps was measured
    ~35× slower per step on XLA:CPU with jaxlib 0.10, so the epoch is not one scanned program.)
    ``batch_sharding``: a :class:`jax.sharding.NamedSharding` splitting the batch over a
    device mesh (:mod:`repr_jax.parallel`); the state and data are replicated, so XLA
    all-reduces the gradients and the BatchNorm batch statistics over the global batch.
    """
    return _indexed_step(state, totals, images, labels, batch_index, key, layers=layers,
                         ortho_lambda=ortho_lambda, method=method, augmentation=augmentation,
                         batch_sharding=batch_sharding, preprocess=preprocess)


@state_jit(static_argnames=_STEP_STATIC + ("data_axis",), donate_argnums=(0, 1))
def population_step_indexed(states: TrainState, totals, images, labels, batch_index, keys, *,
                            layers: tuple[ConvLayer, ...], ortho_lambda: float = 0.0, method=None,
                            augmentation: bool = True, batch_sharding=None, data_axis=None,
                            preprocess: Preprocessing = _CIFAR):
    """:func:`train_step_indexed` of K runs at once, vmapped over axis 0 of ``states``,
    ``totals``, ``batch_index`` (K, B) and ``keys`` (K,); ``images``/``labels`` are shared
    (``data_axis=None``) or per run (``data_axis=0``)."""
    step = functools.partial(_indexed_step, layers=layers, ortho_lambda=ortho_lambda, method=method,
                             augmentation=augmentation, batch_sharding=batch_sharding, preprocess=preprocess)
    return jax.vmap(step, in_axes=(0, 0, data_axis, data_axis, 0, 0))(
        states, totals, images, labels, batch_index, keys)


def loss_term_names(state: TrainState, images, labels, *, batch_size: int, layers,
                    ortho_lambda: float = 0.0, method=None, preprocess: Preprocessing = _CIFAR) -> tuple[str, ...]:
    """Names of the loss terms the step reports (traced once, nothing is computed)."""
    no_method_terms = method is None or type(method).loss_terms is Method.loss_terms
    if not ortho_lambda and state.distill is None and no_method_terms:
        return ()
    out = jax.eval_shape(functools.partial(train_step, layers=layers, ortho_lambda=ortho_lambda,
                                           method=method, preprocess=preprocess),
                         state, images[:batch_size], labels[:batch_size], jax.random.key(0))
    return tuple(sorted(k[len("term/"):] for k in out[1] if k.startswith("term/")))


def _eval_batch(state: TrainState, totals, images, labels, batch_index, weights, *, method, batch_sharding,
                preprocess):
    x = _constrain(images[batch_index], batch_sharding)
    logits, _ = forward(state, state.params, preprocess(x), train=False, method=method)
    y = _constrain(labels[batch_index], batch_sharding)
    m = {"loss": jnp.sum(cross_entropy(logits, y) * weights),
         "correct": jnp.sum((jnp.argmax(logits, -1) == y) * weights), "count": jnp.sum(weights)}
    return jax.tree_util.tree_map(jnp.add, totals, m)


@state_jit(static_argnames=("method", "batch_sharding", "preprocess"), donate_argnums=(1,))
def eval_step(state: TrainState, totals, images, labels, batch_index, weights, *, method=None,
              batch_sharding=None, preprocess: Preprocessing = _CIFAR):
    """Add one padded batch's loss / correct / count (eval-mode network) to ``totals``."""
    return _eval_batch(state, totals, images, labels, batch_index, weights, method=method,
                       batch_sharding=batch_sharding, preprocess=preprocess)


@state_jit(static_argnames=("method", "batch_sharding", "data_axis", "preprocess"),
                   donate_argnums=(1,))
def population_eval_step(states: TrainState, totals, images, labels, batch_index, weights, *, method=None,
                         batch_sharding=None, data_axis=None, preprocess: Preprocessing = _CIFAR):
    """:func:`eval_step` of K runs (vmapped like :func:`population_step_indexed`)."""
    step = functools.partial(_eval_batch, method=method, batch_sharding=batch_sharding, preprocess=preprocess)
    return jax.vmap(step, in_axes=(0, 0, data_axis, data_axis, None, None))(
        states, totals, images, labels, batch_index, weights)


def run_epoch(state: TrainState, images, labels, key, *, batch_size: int, layers,
              ortho_lambda: float = 0.0, method=None, terms=None, progress=None, log_every: int = 20,
              augmentation: bool = True, batch_sharding=None, preprocess: Preprocessing = _CIFAR,
              start: int = 0, totals=None, seconds: float = 0.0, on_step=None):
    """Train one epoch; returns ``(state, {"loss", "accuracy", "images_per_second", …})``.

    ``terms``: the loss-term names (:func:`loss_term_names`; looked up when None). Their
    epoch means are returned under ``"loss_terms"``. ``batch_sharding``: see
    :func:`train_step_indexed`. ``preprocess``: the batches' augmentation and normalisation
    (:class:`repr_jax.data.pipeline.Preprocessing`; default CIFAR's). A resumed epoch
    (:mod:`repr_jax.epoch_position`): ``start`` batches done, their running ``totals`` and
    training ``seconds``. ``on_step(batches_done, state, totals, seconds)`` is called after
    every step (e.g. to save a mid-epoch checkpoint; it must not keep ``state``: the next
    step donates it).
    """
    if terms is None:
        terms = loss_term_names(state, images, labels, batch_size=batch_size, layers=layers,
                                ortho_lambda=ortho_lambda, method=method, preprocess=preprocess)
    idx = epoch_indices(key, images.shape[0], batch_size)
    state = placed_like(state, state)      # hooks may have written host values into it
    totals = zero_totals(terms, like=state) if totals is None else placed_like(totals, state)
    began = time.perf_counter() - seconds
    for i in range(start, idx.shape[0]):
        state, totals = train_step_indexed(state, totals, images, labels, idx[i], key,
                                           layers=layers, ortho_lambda=ortho_lambda, method=method,
                                           augmentation=augmentation, batch_sharding=batch_sharding,
                                           preprocess=preprocess)
        if on_step is not None:
            on_step(i + 1, state, totals, time.perf_counter() - began)
        if progress is not None:
            progress.update(batch_size)
            if (i + 1) % log_every == 0 or i + 1 == idx.shape[0]:
                count = float(totals["count"])
                progress.set_postfix(loss=f"{float(totals['loss']) / count:.3f}",
                                     acc=f"{float(totals['correct']) / count:.3f}")
    jax.block_until_ready(state)
    return state, epoch_means(totals, terms, time.perf_counter() - began)


@state_jit(static_argnames=_STEP_STATIC, donate_argnums=(0, 1))
def train_step_batch(state: TrainState, totals, images, labels, key, *, layers: tuple[ConvLayer, ...],
                     ortho_lambda: float = 0.0, method=None, augmentation: bool = True, batch_sharding=None,
                     preprocess: Preprocessing = _CIFAR):
    """:func:`train_step_indexed` on a batch the caller brings (a streamed one): step with
    the key ``fold_in(key, state.step)`` and add the metrics to ``totals``."""
    every = jnp.arange(images.shape[0])
    return _indexed_step(state, totals, images, labels, every, key, layers=layers, ortho_lambda=ortho_lambda,
                         method=method, augmentation=augmentation, batch_sharding=batch_sharding,
                         preprocess=preprocess)


def run_epoch_batches(state: TrainState, batches, key, *, layers, ortho_lambda: float = 0.0, method=None,
                      terms=(), progress=None, log_every: int = 20, augmentation: bool = True,
                      batch_sharding=None, preprocess: Preprocessing = _CIFAR, start: int = 0, totals=None,
                      seconds: float = 0.0, on_step=None):
    """:func:`run_epoch` over batches from an iterable of uint8 ``(images, labels)`` of one
    batch size (e.g. :class:`repr_jax.data.streaming.FolderStream` through
    :func:`repr_jax.data.streaming.prefetch_to_device`); the host waits only for the reader.
    ``terms``: the loss-term names (:func:`loss_term_names`) the method reports. A resumed
    epoch: ``batches`` begins at batch ``start`` (numbering ``on_step``'s calls), ``totals``
    and ``seconds`` as :func:`run_epoch`'s."""
    state = placed_like(state, state)
    totals = zero_totals(terms, like=state) if totals is None else placed_like(totals, state)
    began = time.perf_counter() - seconds
    for i, (images, labels) in enumerate(batches, start):
        state, totals = train_step_batch(state, totals, images, labels, key, layers=layers,
                                         ortho_lambda=ortho_lambda, method=method, augmentation=augmentation,
                                         batch_sharding=batch_sharding, preprocess=preprocess)
        if on_step is not None:
            on_step(i + 1, state, totals, time.perf_counter() - began)
        if progress is not None:
            progress.update(images.shape[0])
            if (i + 1) % log_every == 0:
                count = float(totals["count"])
                progress.set_postfix(loss=f"{float(totals['loss']) / count:.3f}",
                                     acc=f"{float(totals['correct']) / count:.3f}")
    jax.block_until_ready(state)
    if float(totals["count"]) == 0:
        raise ValueError("run_epoch_batches: the batches were empty")
    return state, epoch_means(totals, terms, time.perf_counter() - began)


def evaluate_batches(state: TrainState, batches, batch_size: int, method=None, batch_sharding=None,
                     preprocess: Preprocessing = _CIFAR) -> dict:
    """:func:`evaluate` over an iterable of uint8 ``(images, labels)`` batches of at most
    ``batch_size`` (a short one is padded and weighted out: one compiled shape)."""
    state = placed_like(state, state)
    totals = zero_totals(like=state)
    every = jnp.arange(batch_size)
    for images, labels in batches:
        n = images.shape[0]
        weights = (np.arange(batch_size) < n).astype(np.float32)
        if n < batch_size:
            images = np.concatenate([np.asarray(images), np.repeat(np.asarray(images)[-1:], batch_size - n, 0)])
            labels = np.concatenate([np.asarray(labels), np.repeat(np.asarray(labels)[-1:], batch_size - n)])
        totals = eval_step(state, totals, images, labels, every, weights, method=method,
                           batch_sharding=batch_sharding, preprocess=preprocess)
    count = float(totals["count"])
    if count == 0:
        raise ValueError("evaluate_batches: the batches were empty")
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


def epoch_means(totals, terms, seconds: float) -> dict:
    """An epoch's running sums (one run's) → means, images/s and the loss terms' means."""
    count = float(totals["count"])
    out = {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count,
           "images_per_second": count / seconds, "train_seconds": seconds}
    if terms:
        out["loss_terms"] = {name: float(totals[f"term/{name}"]) / count for name in terms}
    return out


def evaluate(state: TrainState, images, labels, batch_size: int = 500, method=None,
             batch_sharding=None, preprocess: Preprocessing = _CIFAR) -> dict:
    """Test loss and accuracy over every example (padded last batch is weighted out),
    normalised by ``preprocess``."""
    idx, w = eval_indices(images.shape[0], min(batch_size, images.shape[0]))
    state = placed_like(state, state)
    totals = zero_totals(like=state)
    for i in range(idx.shape[0]):
        totals = eval_step(state, totals, images, labels, idx[i], w[i], method=method,
                           batch_sharding=batch_sharding, preprocess=preprocess)
    count = float(totals["count"])
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}
