"""The epoch loop, one for a single run and for K seeds trained together (vmapped or looped).

:func:`epoch_loop` runs every remaining epoch of its sessions: the method's ``before_epoch``
transition, one training epoch, evaluation, ``after_epoch``, then per session one line of
``metrics.jsonl``, the method's events into ``pruning.jsonl`` and a checkpoint
(:func:`log_epoch`) — or, when a loss, a parameter or a criterion score became non-finite,
the session's stop (:func:`diverge`). What differs between one run and a population is only
how those steps compute, a :class:`Trainer`: :class:`OneRun` here, the vmapped
``Population`` and the looped ``SeedLoop`` (K OneRuns) in :mod:`repr_jax.population`. A
session that diverges stops alone; the others go on. With ``checkpoint_every`` (one run)
positions inside the epoch are saved every N steps (:func:`in_epoch_saver`), and a run
resumed from one skips its epoch's ``before_epoch`` (already applied, its events saved) and
trains on from the next batch (:mod:`repr_jax.epoch_position`).
"""
from __future__ import annotations

import collections
import math
import sys
import time

import jax
import jax.numpy as jnp

from repr_jax._allocator import allocator_in_use
from repr_jax.epoch_position import EpochPosition, host_totals
from repr_jax.errors import Diverged, NonFiniteError
from repr_jax.masks import live_filters
from repr_jax.parallel import batch_sharding, process_rows
from repr_jax.run_dir import finite_row, write_json, write_jsonl
from repr_jax.run_state import state_is_finite
from repr_jax.data.streaming import prefetch_to_device
from repr_jax.train import evaluate, run_epoch, run_epoch_batches, train_step_indexed


class OneRun:
    """A :class:`Trainer` of one session: its state trained and evaluated as it is."""

    def __init__(self, s):
        self.s, self.layers = s, s.state.layers
        config = s.config
        self.root = jax.random.wrap_key_data(jnp.array(s.state.rng, copy=True))  # the state is donated
        self.step_sharding = batch_sharding(s.mesh, config.batch_size)
        self.eval_sharding = batch_sharding(s.mesh, min(config.eval_batch_size, len(s.arrays[3])))

    def transition(self, hook, epoch: int) -> list:
        self.s.state, events = hook(self.s.state, epoch, self.s.inputs)
        return events

    def member_events(self, events: list, i: int) -> list:
        return events

    def steps(self) -> int:
        return self.s.data.train_count // self.s.config.batch_size

    def train_epoch(self, epoch: int, progress, position: EpochPosition | None = None,
                    on_step=None) -> list[dict]:
        """One training epoch; a resumed one continues at ``position``; ``on_step(batches,
        state, totals, seconds, iterator)`` after every step (``iterator``: the streamed
        input's Grain state after those batches, None for data in memory)."""
        s, config = self.s, self.s.config
        resumed = {} if position is None else dict(start=position.batches, totals=position.device_totals(),
                                                    seconds=position.epoch_seconds)
        if progress is not None and position is not None:
            progress.update(position.batches * config.batch_size)
        if s.data.stream is not None:   # read from disk while the steps run (repr_jax.data.streaming)
            # each process reads only its rows of every batch (all of them in a one-process run)
            rows = process_rows(self.step_sharding, config.batch_size)
            reader = s.data.stream.epoch(epoch, rows=rows, seed=config.seed)
            if position is not None:
                reader.set_state(position.iterator)
            after = collections.deque()   # the reader's state after each batch read, not yet trained on

            def read():
                for batch in reader:
                    if on_step is not None:
                        after.append(reader.get_state())
                    yield batch

            def stepped(batches, state, totals, seconds):
                on_step(batches, state, totals, seconds, after.popleft())
            try:
                batches = prefetch_to_device(read(), sharding=self.step_sharding, batch_size=config.batch_size)
                s.state, metrics = run_epoch_batches(
                    s.state, batches, jax.random.fold_in(self.root, epoch), layers=s.state.layers,
                    ortho_lambda=config.ortho_loss, method=s.method, terms=s.terms, progress=progress,
                    augmentation=config.data.augment, batch_sharding=self.step_sharding, preprocess=s.preprocess,
                    on_step=stepped if on_step is not None else None, **resumed)
            finally:   # its reading threads stop now, also after a failure
                getattr(reader, "close", lambda: None)()
            return [metrics]
        stepped = None if on_step is None else (lambda b, st, t, sec: on_step(b, st, t, sec, None))
        s.state, metrics = run_epoch(s.state, s.arrays[0], s.arrays[1], jax.random.fold_in(self.root, epoch),
                                     batch_size=config.batch_size, layers=s.state.layers,
                                     ortho_lambda=config.ortho_loss, method=s.method, terms=s.terms,
                                     progress=progress, augmentation=config.data.augment,
                                     batch_sharding=self.step_sharding, preprocess=s.preprocess,
                                     on_step=stepped, **resumed)
        return [metrics]

    def evaluate(self) -> list[dict]:
        s = self.s
        return [evaluate(s.state, s.arrays[2], s.arrays[3], s.config.eval_batch_size, method=s.method,
                         batch_sharding=self.eval_sharding, preprocess=s.preprocess)]

    def live_counts(self) -> list[int]:
        live = live_filters(self.s.state.masks, self.s.state.layers)
        return [int(sum(float(jnp.sum(v)) for v in live.values()))]

    def finite(self) -> list[bool]:
        return [state_is_finite(self.s.state)]

    def member_state(self, i: int):
        return self.s.state

    def done(self, diverged: dict) -> None:
        self.s.ckpt.close()
        if self.s.in_epoch is not None:
            self.s.in_epoch.close()


def epoch_loop(sessions: list, trainer) -> dict[int, Diverged]:
    """Every remaining epoch of ``sessions`` (they share settings and start epoch); returns
    the sessions that diverged, by seed."""
    s0 = sessions[0]
    config, method = s0.config, s0.method
    total_filters = sum(layer.num_filters for layer in trainer.layers)
    diverged: dict[int, Diverged] = {}
    started = time.perf_counter()

    def stop(i, epoch, quantity):
        try:
            diverge(sessions[i], epoch, quantity)
        except Diverged as err:
            diverged[sessions[i].config.seed] = err

    for epoch in range(s0.start_epoch, config.epochs):
        for s in sessions:
            s.epoch = epoch
        active = [i for i, s in enumerate(sessions) if s.config.seed not in diverged]
        if not active:
            break
        phase = method.phase(epoch)
        # a run resumed inside this epoch: its start's transition ran before the position was saved
        position = s0.position if s0.position is not None and s0.position.epoch == epoch else None
        s0.position = None
        if position is None:
            before = trainer.transition(method.before_epoch, epoch)
            for i in active:
                try:
                    for event in trainer.member_events(before, i):
                        method.check_event(event)
                except NonFiniteError as err:
                    stop(i, epoch, str(err))
        else:
            before = list(position.records)
        active = [i for i in active if sessions[i].config.seed not in diverged]
        progress = progress_bar(config, epoch, phase.name, trainer.steps())
        if s0.in_epoch is not None or position is not None:   # one run (config refuses --seeds K with it)
            saving = in_epoch_saver(s0, epoch, before, trainer.steps(), started) if s0.in_epoch is not None else None
            train_ms = trainer.train_epoch(epoch, progress, position=position, on_step=saving)
        else:
            train_ms = trainer.train_epoch(epoch, progress)
        if progress is not None:
            progress.close()
        test_ms = trainer.evaluate()
        live = trainer.live_counts()          # as trained and evaluated this epoch
        after = trainer.transition(method.after_epoch, epoch)
        finite = trainer.finite()             # what the checkpoint would hold
        elapsed = time.perf_counter() - started
        for i in active:
            s = sessions[i]
            bad = non_finite(train_ms[i], test_ms[i])
            events = list(trainer.member_events(before, i))
            if bad is None:
                try:
                    for event in trainer.member_events(after, i):
                        method.check_event(event)
                    events += trainer.member_events(after, i)
                except NonFiniteError as err:
                    bad = str(err)
            bad = bad or (None if finite[i] else "parameters")
            try:
                log_epoch(s, trainer.member_state(i), epoch, train_ms[i], test_ms[i], events, bad,
                          live=(live[i], total_filters), elapsed=s.prior_seconds + elapsed)
            except Diverged as err:
                diverged[s.config.seed] = err
    trainer.done(diverged)
    return diverged


def in_epoch_saver(s, epoch: int, before: list, steps: int, started: float):
    """The ``on_step`` of a run with ``checkpoint_every = N``: every N steps (but not at the
    epoch's end, where the epoch checkpoint follows) an :class:`EpochPosition` into
    ``s.in_epoch`` (:mod:`repr_jax.epoch_position`)."""
    every = s.config.checkpoint_every
    records = [e if isinstance(e, dict) else s.method.record(e) for e in before]

    def save(batches: int, state, totals, seconds: float, iterator) -> None:
        if batches % every or batches >= steps:
            return
        position = EpochPosition(epoch, batches, host_totals(totals), records, seconds,
                                 s.prior_seconds + time.perf_counter() - started, iterator)
        s.in_epoch.save(int(state.step), state, None, position.extra())
    return save


def non_finite(train_m: dict, test_m: dict) -> str | None:
    values = {"train_loss": train_m["loss"], "test_loss": test_m["loss"],
              **{f"loss term {k}": v for k, v in train_m.get("loss_terms", {}).items()}}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    return ", ".join(bad) if bad else None


def diverge(s, epoch: int, quantity: str) -> None:
    """Stop the run at 0-based ``epoch``: summary.json says why; the newest checkpoint kept
    (written after the last finite epoch) is the state to go back to."""
    last = s.ckpt.latest_epoch()
    s.ckpt.close()
    if s.tensorboard is not None:
        s.tensorboard.close()
    finite = [m for m in s.metrics if "non_finite" not in m]
    summary = {"status": "diverged", "diverged_epoch": epoch + 1, "non_finite": quantity,
               "last_finite_checkpoint": last,
               "last_finite_test_accuracy": finite[-1]["test_accuracy"] if finite else None,
               **summary_fields(s)}
    if s.main:
        write_json(s.out / "summary.json", summary)
    kept = f"kept the checkpoint of epoch {last}" if last else "no finite checkpoint was written"
    raise Diverged(f"the run diverged at epoch {epoch + 1}: {quantity} not finite; stopped and {kept} "
                   f"(summary.json: status diverged)", epoch + 1, quantity, summary)


def progress_bar(config, epoch: int, phase: str, steps: int):
    """A tqdm bar over the epoch's training images (img/s, as the epoch line reports), the ETA
    averaged over the whole epoch; none with ``--quiet`` or when stderr is not a terminal
    (a log file under nohup would fill with redrawn bars)."""
    if config.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=steps * config.batch_size, unit="img", smoothing=0.0,
                desc=f"epoch {epoch + 1}/{config.epochs} [{phase}]", leave=False, dynamic_ncols=True)


def log_epoch(s, state, epoch: int, train_m: dict, test_m: dict, events: list, bad: str | None,
              *, live: tuple[int, int], elapsed: float) -> None:
    """After 0-based ``epoch``: the method's events into ``pruning.jsonl``, one line of
    ``metrics.jsonl``, then stop (``bad`` names what is not finite) or checkpoint ``state``."""
    config, phase = s.config, s.method.phase(epoch)
    records = [event if isinstance(event, dict) else s.method.record(event) for event in events]
    s.events += records
    seed = f"seed {config.seed} " if s.population > 1 else ""
    main = s.main      # the other processes of a multi-process run log nothing
    for line in (line for record in records for line in s.method.describe(record)) if main else ():
        if line.startswith("warning:"):
            print(f"warning: {seed}{line[len('warning: '):]}", file=sys.stderr, flush=True)
        elif not config.quiet:
            print(f"{seed}{line}", flush=True)
    row = {"epoch": epoch + 1, "phase": phase.name, "round": phase.round,
           "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
           "test_loss": test_m["loss"], "test_accuracy": test_m["accuracy"],
           "learning_rate": float(s.schedule(int(state.step))),
           "images_per_second": train_m["images_per_second"],
           "epoch_seconds": train_m["train_seconds"], "elapsed_seconds": elapsed,
           "live_filters": live[0], "total_filters": live[1]}
    if "loss_terms" in train_m:
        row["loss_terms"] = train_m["loss_terms"]
    s.metrics.append(finite_row(row))
    if main:
        write_jsonl(s.out / "metrics.jsonl", s.metrics)
        if s.tensorboard is not None:
            s.tensorboard.write(s.metrics[-1])
        if s.events:
            write_jsonl(s.out / "pruning.jsonl", s.events)
    if bad is not None:
        diverge(s, epoch, bad)
    s.ckpt.save(epoch + 1, state, {"test_accuracy": row["test_accuracy"]},
                {"epochs_done": epoch + 1, "wall_seconds": row["elapsed_seconds"], "events": len(s.events)})
    if s.in_epoch is not None:   # the epoch's positions are superseded by its checkpoint
        s.in_epoch.discard()
    if main and not config.quiet:
        print(f"{seed}epoch {epoch + 1:3d} [{phase.name:4s}] train {100 * row['train_accuracy']:5.2f}% "
              f"test {100 * row['test_accuracy']:5.2f}% loss {row['train_loss']:.3f} "
              f"{row['images_per_second']:.0f} img/s live {live[0]}/{live[1]}", flush=True)


def summary_fields(s) -> dict:
    config, metrics, events = s.config, s.metrics, s.events
    return {
        "method": config.method.name, "model": config.model.name, "dataset": config.data.dataset,
        "data_source": s.data.source, "train_images": int(s.data.train_count),
        "test_images": int(len(s.data.test_y)), "epochs": config.epochs,
        "wall_seconds": metrics[-1]["elapsed_seconds"] if metrics else 0.0,
        "train_step_compilations_this_process": int(train_step_indexed._cache_size()),
        "memory_allocator": allocator_in_use(),
        "drops": sum(e["event"] == "drop" for e in events),
        "reinits": sum(e["event"] == "reinit" for e in events),
    }


__all__ = ["OneRun", "diverge", "epoch_loop", "log_epoch", "non_finite", "progress_bar", "summary_fields"]
