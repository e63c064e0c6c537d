"""K seeds of one configuration trained in one process (``--seeds K``).

Seeds ``seed … seed+K−1`` are K independent runs — own initialisation, data order,
augmentation, masks, method state (RePr's drops and re-initialisations), optimizer state.
Two layouts (``seeds_layout``, :func:`seeds_layout`): ``vmap`` stacks their train states on
a leading axis (:func:`repr_jax.parallel.stack`) and ``jax.vmap``-s every step, evaluation
batch and method transition over it, so K small networks fill an accelerator as one program
compiled once (:class:`Population`); ``loop`` trains them one after another each epoch, each
calling the single run's compiled step (:class:`SeedLoop`) — on a CPU, where XLA computes a
convolution vmapped over its weights as a slow grouped convolution, that is the faster one,
and ``auto`` (the default) picks it there.

Each seed is an ordinary run directory ``<out>-seed<s>`` (the names the study scripts
already use): its own ``config.json`` (``seed`` = s, ``seeds`` = 1), ``metrics.jsonl``,
``pruning.jsonl``, ``summary.json`` (with a ``population`` entry), plots and checkpoints.
Everything that reads a run (``load_run_state``, export, the study reports) works on it, and
one seed can even be resumed on its own. ``--resume`` resumes the population: every
seed's newest usable checkpoint, rewound to the newest epoch all seeds hold (a kill between
two seeds' checkpoint writes leaves them one epoch apart; a population therefore keeps at
least 2 checkpoints per seed). A seed that diverges stops alone (its ``summary.json`` says
so); the others go on and the population ends with :class:`~repr_jax.errors.Diverged`.

Equality with K sequential runs: same initial states (built one by one, as a single run
builds its own), same epoch permutations and step keys; under ``loop`` the same programs, so
bit for bit; under ``vmap`` the convolutions are batched over their weights, which XLA
computes in another order, so metrics agree to float32 round-off (``tests/test_population.py``).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from repr_jax.config import RunConfig
from repr_jax.data import Dataset
from repr_jax.teacher import attach_teacher
from repr_jax.errors import Diverged, Interrupted, RunError, UnreadableImage
from repr_jax.run_state import all_finite, build_model, initial_state, load_source, warm_start
from repr_jax.epoch_loop import OneRun, epoch_loop
from repr_jax.session import Session, close, discard_unstarted, finish, start, stopped_at_unreadable_image
from repr_jax.masks import live_filters
from repr_jax.methods.base import Event
from repr_jax.parallel import batch_sharding, replicate, stack, sync_processes, unstack
from repr_jax.data.pipeline import epoch_indices, eval_indices
from repr_jax.run_dir import check_run_dir, read_summary
from repr_jax.train import (epoch_means, placed_like, population_eval_step, population_step_indexed,
                            train_step_indexed, zero_totals)


def member_configs(config: RunConfig) -> list[RunConfig]:
    """The K ordinary runs of a population: seed ``seed + i``, run directory ``<out>-seed<s>``."""
    return [dataclasses.replace(config, seed=config.seed + i, out=f"{config.out}-seed{config.seed + i}",
                                seeds=1, keep_checkpoints=max(config.keep_checkpoints, 2))
            for i in range(config.seeds)]


def _ended(config: RunConfig) -> dict | None:
    """The summary of a member that has already ended (on --resume), else None."""
    path = Path(config.out) / "summary.json"
    if config.resume and path.exists():
        summary = read_summary(Path(config.out))
        if summary.get("status") in ("completed", "diverged"):
            return summary
    return None


def vmap_transition(transition, states, epoch: int, inputs):
    """``transition(state, epoch, inputs) → (state, [Event])`` of every member at once; the
    events' arrays gain the leading member axis."""
    meta = []

    def one(state, member_inputs):
        state, events = transition(state, epoch, member_inputs)
        meta[:] = [(e.kind, e.epoch, e.round) for e in events]
        return state, [e.arrays for e in events]

    states, arrays = jax.vmap(one)(states, inputs)
    return states, [Event(kind, ep, rnd, a) for (kind, ep, rnd), a in zip(meta, arrays)]


def member_event(event: Event, index: int) -> Event:
    return event._replace(arrays=unstack(event.arrays, index))


def _rewind(s: Session, epoch: int) -> None:
    """Put a member back to the end of ``epoch`` (0: a fresh state)."""
    if epoch == 0:
        _, _, state = initial_state(s.config, s.data.train_count, build_model(s.config), s.method)
        state = attach_teacher(s.config, warm_start(s.config, state))
        s.state, s.prior_seconds = replicate(state, s.mesh), 0.0
    else:
        if epoch not in s.ckpt.epochs():
            raise RunError(f"{s.out} has no checkpoint of epoch {epoch}, the newest every seed of the "
                           f"population holds; resume its seeds one by one")
        s.state, extra = s.ckpt.restore(s.state, epoch)
        s.prior_seconds = float(extra["wall_seconds"])
    print(f"warning: {s.out} rewound from epoch {s.start_epoch} to epoch {epoch}, the newest every "
          "seed of the population holds", file=sys.stderr)
    s.start_epoch = epoch
    s.metrics = [m for m in s.metrics if m["epoch"] <= epoch]
    s.events = [e for e in s.events if e["epoch"] <= epoch]


def start_population(config: RunConfig, data: Dataset | None = None) -> tuple[list[Session], dict]:
    """Check every member's settings and directory, then start (or resume) them; returns the
    sessions still to train and the summaries of members that had already ended."""
    config.validate()
    members = member_configs(config)
    ended = {c.seed: s for c in members if (s := _ended(c)) is not None}
    todo = [c for c in members if c.seed not in ended]
    if not todo:
        raise RunError(f"every seed of the population {config.out}-seed* has already ended")
    if config.resume:   # a kill while the members were being created leaves some without a run
        if not any((Path(c.out) / "config.json").exists() for c in members):
            raise RunError(f"--resume: no seed of the population {config.out}-seed* holds a run to resume")
        todo = [c if (Path(c.out) / "config.json").exists() else dataclasses.replace(c, resume=False)
                for c in todo]
    for c in todo:   # every directory checked before anything is written
        check_run_dir(c)
    if data is None:
        data = load_source(config)   # DataError: one line
    sessions: list[Session] = []
    shared = config.data.train_limit is None and config.data.test_limit is None
    try:
        for c in todo:   # same slices for every seed unless a seed-dependent slice is asked for
            s = start(c, data, arrays=sessions[0].arrays if shared and sessions else None)
            s.population = config.seeds
            sessions.append(s)
        first = min(s.start_epoch for s in sessions)
        for s in sessions:
            if s.start_epoch > first:
                _rewind(s, first)
    except BaseException:
        for s in sessions:
            discard_unstarted(s)   # a fresh member with no epoch recorded leaves no directory
            close(s)
        raise
    return sessions, ended


def _population_epoch(states, arrays, keys, s0: Session, *, data_axis, layers, progress, sharding):
    config = s0.config
    images, labels = arrays[0], arrays[1]
    count = images.shape[-4]
    idx = jnp.swapaxes(jax.vmap(lambda k: epoch_indices(k, count, config.batch_size))(keys), 0, 1)
    members = keys.shape[0]
    states = placed_like(states, states)
    totals = placed_like(jax.tree_util.tree_map(lambda z: jnp.zeros((members,) + z.shape, z.dtype),
                                                zero_totals(s0.terms)), states)
    started = time.perf_counter()
    for i in range(idx.shape[0]):
        states, totals = population_step_indexed(
            states, totals, images, labels, idx[i], keys, layers=layers, ortho_lambda=config.ortho_loss,
            method=s0.method, augmentation=config.data.augment, batch_sharding=sharding, data_axis=data_axis,
            preprocess=s0.preprocess)
        if progress is not None:
            progress.update(s0.config.batch_size)
    jax.block_until_ready(states)
    seconds = time.perf_counter() - started
    return states, [epoch_means(unstack(totals, k), s0.terms, seconds) for k in range(members)]


def _population_eval(states, arrays, s0: Session, *, data_axis, sharding, members: int):
    images, labels = arrays[2], arrays[3]
    n = images.shape[-4]
    idx, w = eval_indices(n, min(s0.config.eval_batch_size, n))
    totals = placed_like(jax.tree_util.tree_map(lambda z: jnp.zeros((members,)), zero_totals()), states)
    for i in range(idx.shape[0]):
        totals = population_eval_step(states, totals, images, labels, idx[i], w[i], method=s0.method,
                                      batch_sharding=sharding, data_axis=data_axis, preprocess=s0.preprocess)
    return [{"loss": float(totals["loss"][k]) / float(totals["count"][k]),
             "accuracy": float(totals["correct"][k]) / float(totals["count"][k])} for k in range(members)]


@jax.jit
def _live_counts(states):
    """Per member: the live filters' count."""
    return jax.vmap(lambda st: sum(jnp.sum(v) for v in live_filters(st.masks, st.layers).values()))(states)


@jax.jit
def _finite(states):
    """Per member: whether parameters, batch stats and method parameters are all finite."""
    return jax.vmap(lambda st: all_finite((st.params, st.batch_stats, st.method_params)))(states)


class Population:
    """The :class:`~repr_jax.epoch_loop.OneRun` of K sessions: their states stacked on a
    leading axis, every step, evaluation batch and transition ``vmap``-ped."""

    def __init__(self, sessions: list[Session]):
        s0 = sessions[0]
        self.sessions, self.s0, self.members = sessions, s0, len(sessions)
        shared = all(s.arrays is s0.arrays for s in sessions)
        self.data_axis = None if shared else 0
        self.arrays = s0.arrays if shared else tuple(jnp.stack([s.arrays[j] for s in sessions]) for j in range(4))
        self.layers = s0.state.layers
        self.states = stack([s.state for s in sessions])
        self.inputs = stack([s.inputs for s in sessions])
        for s in sessions:
            s.state = s.arrays = None   # the stacked copies are the ones trained
        self.roots = jax.random.wrap_key_data(jnp.array(self.states.rng, copy=True))
        config = s0.config
        self.step_sharding = batch_sharding(s0.mesh, config.batch_size)
        self.eval_sharding = batch_sharding(s0.mesh, min(config.eval_batch_size, self.arrays[3].shape[-1]))

    def transition(self, hook, epoch: int) -> list:
        self.states, events = vmap_transition(hook, self.states, epoch, self.inputs)
        return events

    def member_events(self, events: list, i: int) -> list:
        return [member_event(e, i) for e in events]

    def steps(self) -> int:
        return self.arrays[1].shape[-1] // self.s0.config.batch_size

    def train_epoch(self, epoch: int, progress) -> list[dict]:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(self.roots, epoch)
        self.states, metrics = _population_epoch(self.states, self.arrays, keys, self.s0, data_axis=self.data_axis,
                                                 layers=self.layers, progress=progress, sharding=self.step_sharding)
        return metrics

    def evaluate(self) -> list[dict]:
        return _population_eval(self.states, self.arrays, self.s0, data_axis=self.data_axis,
                                sharding=self.eval_sharding, members=self.members)

    def live_counts(self) -> list[int]:
        return [int(n) for n in _live_counts(self.states)]

    def finite(self) -> list[bool]:
        return [bool(f) for f in _finite(self.states)]

    def member_state(self, i: int):
        return unstack(self.states, i)

    def done(self, diverged: dict) -> None:
        for i, s in enumerate(self.sessions):
            s.ckpt.close()
            if s.config.seed not in diverged:
                s.state = unstack(self.states, i)   # finish() exports and reports from each member's final state


class SeedLoop:
    """The :class:`~repr_jax.epoch_loop.OneRun` of K sessions trained one after another
    (``seeds_layout=loop``): each member keeps its own state and calls the same compiled
    step a single run calls (one compilation for all), so every member is bit-identical to
    its run trained alone, and the population is never slower than its runs one by one (it
    saves K−1 process starts, data loads and compilations)."""

    def __init__(self, sessions: list[Session]):
        self.runs = [OneRun(s) for s in sessions]
        self.layers = self.runs[0].layers

    def transition(self, hook, epoch: int) -> list:
        return [run.transition(hook, epoch) for run in self.runs]

    def member_events(self, events: list, i: int) -> list:
        return events[i]

    def steps(self) -> int:
        return sum(run.steps() for run in self.runs)      # the progress bar counts every member's images

    def train_epoch(self, epoch: int, progress) -> list[dict]:
        return [run.train_epoch(epoch, progress)[0] for run in self.runs]

    def evaluate(self) -> list[dict]:
        return [run.evaluate()[0] for run in self.runs]

    def live_counts(self) -> list[int]:
        return [run.live_counts()[0] for run in self.runs]

    def finite(self) -> list[bool]:
        return [run.finite()[0] for run in self.runs]

    def member_state(self, i: int):
        return self.runs[i].s.state

    def done(self, diverged: dict) -> None:
        for run in self.runs:
            run.done(diverged)


def seeds_layout(config: RunConfig) -> str:
    """``vmap`` or ``loop`` for ``config.seeds_layout`` (``auto``: ``loop`` on a CPU, where
    XLA computes a convolution vmapped over its weights as a slow grouped convolution —
    benchmarks/RESULTS.md measured a vmapped pair at 0.40× two runs — and with a streamed
    folder, each seed reading its own order of it; else ``vmap``)."""
    if config.seeds_layout != "auto":
        return config.seeds_layout
    return "loop" if jax.default_backend() == "cpu" or config.data.stream else "vmap"


def train_population(sessions: list[Session]) -> dict[int, Diverged]:
    """Every remaining epoch of every member (:func:`repr_jax.epoch_loop.epoch_loop`), laid
    out by :func:`seeds_layout`; returns the members that diverged (by seed)."""
    layout = seeds_layout(sessions[0].config)
    return epoch_loop(sessions, SeedLoop(sessions) if layout == "loop" else Population(sessions))


def run_population(config: RunConfig, data: Dataset | None = None) -> dict:
    """Train seeds ``config.seed … config.seed + config.seeds − 1`` together; every member's
    ``summary.json`` is written. Returns ``{"seeds", "runs": {seed: summary}, …}``; raises
    :class:`Diverged` (after the others finished) when a member diverged."""
    sessions, ended = start_population(config, data)
    try:
        t0, layout = time.perf_counter(), seeds_layout(config)
        try:
            diverged = train_population(sessions)
        except KeyboardInterrupt:
            raise Interrupted.during(sessions[0]) from None
        except UnreadableImage as err:   # a streamed image: every seed reads the folder
            stopped = stopped_at_unreadable_image(sessions, err)
            for s in sessions:
                discard_unstarted(s)
            raise stopped from None
        except BaseException:
            for s in sessions:
                discard_unstarted(s)   # failed before an epoch was recorded: nothing to keep
            raise
        seconds = time.perf_counter() - t0
        runs = dict(ended)
        seeds = [c.seed for c in member_configs(config)]
        for s in sessions:
            if s.config.seed in diverged:
                runs[s.config.seed] = diverged[s.config.seed].summary
                continue
            step = train_step_indexed if layout == "loop" else population_step_indexed
            runs[s.config.seed] = finish(s, {
                "train_step_compilations_this_process": int(step._cache_size()),
                "population": {"seeds": seeds, "trained_together": [t.config.seed for t in sessions],
                               "layout": layout}})
        sync_processes("repr_jax: population written")   # while process 0 exports alone (experiment.run)
    finally:
        for s in sessions:
            close(s)
    summary = {"seeds": seeds, "runs": {str(k): runs[k] for k in sorted(runs)},
               "population_wall_seconds": seconds}
    if diverged:
        lines = "; ".join(f"seed {seed}: {err}" for seed, err in sorted(diverged.items()))
        first = min(diverged.values(), key=lambda e: e.epoch)
        raise Diverged(f"{len(diverged)} of {len(seeds)} seeds diverged ({lines})", first.epoch,
                       first.quantity, summary)
    return summary


__all__ = ["Population", "SeedLoop", "member_configs", "member_event", "run_population", "start_population",
           "seeds_layout", "train_population", "vmap_transition"]
