#!/usr/bin/env python
"""Train a conv net on CIFAR with any registered method; writes a run directory.

Examples:
  python experiments/cifar.py --model convnet --epochs 10 --data-dir ../shared/datasets/cifar10-jpeg.tar.gz
  python experiments/cifar.py --method repr --set repr.s1=20 --set repr.s2=10 --set repr.iterations=3 \\
      --epochs 100 --out runs/c3-repr          # same as --repr-s1 20 --repr-s2 10 --repr-iterations 3
  python experiments/cifar.py --method repr --repr-criterion taylor --repr-reinit random ...
  python experiments/cifar.py --config runs/c3-repr/config.json --set seed=1 --out runs/c3-repr-seed1
  python experiments/cifar.py --method repr --seeds 8 --out runs/c3-repr   # runs/c3-repr-seed0 … -seed7, one program
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__":   # before anything else is imported: the process may be re-executed
    from repr_jax._allocator import use_tcmalloc
    use_tcmalloc()   # the system's tcmalloc when it has one (faster XLA:CPU steps); REPR_JAX_NO_TCMALLOC=1 opts out

from repr_jax._xla_flags import enable_cpu_fusion  # noqa: E402

enable_cpu_fusion()  # before JAX starts its backend; REPR_JAX_NO_YNN=1 opts out

from repr_jax.cli import build_parser, config_from_args, fail, start_processes_from_args  # noqa: E402
from repr_jax.data import DataError  # noqa: E402
from repr_jax.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, Diverged, RunError  # noqa: E402
from repr_jax.supervisor import exit_at_once, peer_stopped, supervise, supervised  # noqa: E402


def main(argv=None) -> int:
    """Exit codes: 0 completed, 2 bad input (one line), 3 diverged (one line; the last finite
    checkpoint is kept), 130 interrupted by Ctrl-C (one line; --resume continues), 1 a crash."""
    args = build_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.coordinator is not None and not supervised():   # one process of several: watched
        return supervise([sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    code = _main(args)
    if args.coordinator is not None and code != 0:   # a failed process of several: no shutdown barrier
        exit_at_once(code, grace=2.0 if args.process_id == 0 else 0.0)
    return code


def _main(args) -> int:
    try:
        config = config_from_args(args)
        start_processes_from_args(args)   # before anything touches JAX
        from repr_jax.experiment import run  # JAX, Orbax, Matplotlib: not needed for --help
        summary = run(config)
    except (RunError, DataError) as err:
        lost = peer_stopped(err) if args.coordinator is not None else None
        return fail(RunError(lost) if lost else err)
    except Diverged as err:
        return fail(err, EXIT_DIVERGED)
    except MemoryError:
        return fail(RunError("out of memory: the model, the batch or the data does not fit in this process's "
                             "memory; use a smaller --batch-size, --width or data set (a new run's directory is "
                             "removed when no epoch was recorded; a resumed run keeps its checkpoints)"))
    except Exception as err:   # XLA's allocation failures surface as its runtime error
        lost = peer_stopped(err) if args.coordinator is not None else None
        if lost:   # a collective whose peer process is gone
            return fail(RunError(lost))
        if "RESOURCE_EXHAUSTED" not in str(err) and "Out of memory" not in str(err):
            raise
        return fail(RunError(f"out of memory on {type(err).__name__}: {str(err).splitlines()[0][:160]}; use a "
                             "smaller --batch-size, --width or data set (a new run's directory is removed when no "
                             "epoch was recorded; a resumed run keeps its checkpoints)"))
    except KeyboardInterrupt as err:   # Interrupted names the epoch; before training, nothing to say
        return fail(err if str(err) else KeyboardInterrupt("interrupted before training began; nothing was "
                                                            "changed"), EXIT_INTERRUPTED)
    print(json.dumps(summary, indent=2))
    if config.seeds > 1:
        print(f"run directories: {config.out}-seed{config.seed} … {config.out}-seed{config.seed + config.seeds - 1}")
    else:
        print(f"run directory: {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
