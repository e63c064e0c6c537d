#!/usr/bin/env python
"""Export a run directory's checkpoint as a physically smaller dense model.

  python experiments/export.py RUN_DIR --out DIR [--step latest|best|EPOCH] [--data-dir PATH]

Writes DIR/architecture.json (the model with its per-conv widths), DIR/export.json
(params_before/after, flops_before/after — multiply–adds per image of convs and dense
layers — and the measured max |logit difference| between the masked and the exported model
on a batch of the run's test images) and DIR/checkpoint/ (load it with
``repr_jax.compress.load_exported(DIR)``).
"""
from __future__ import annotations

import argparse
import json
import sys

from repr_jax._xla_flags import enable_cpu_fusion

enable_cpu_fusion()  # before JAX starts its backend; REPR_JAX_NO_YNN=1 opts out

from repr_jax.cli import DefaultsHelpFormatter, fail  # noqa: E402
from repr_jax.compress import ExportError, GraphError  # noqa: E402
from repr_jax.export_runs import export_run  # noqa: E402
from repr_jax.models.user import trust  # noqa: E402
from repr_jax.config import RunError  # noqa: E402
from repr_jax.data import DataError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("run_dir", help="a run directory written by experiments/cifar.py")
    p.add_argument("--out", required=True, help="directory for the exported model (must be new or empty)")
    p.add_argument("--model", default=None, metavar="FILE.py:FACTORY",
                   help="the run's own model code, named again so that it may be imported (a run directory "
                        "never imports code by itself)")
    p.add_argument("--trust-model", action="store_true", help="import the model code the run directory names")
    p.add_argument("--step", default="latest", help="checkpoint to export: latest, best or an epoch number")
    p.add_argument("--data-dir", default=None,
                   help="the run's data, if it moved (the logit check uses a batch of its test images)")
    p.add_argument("--batch", type=int, default=64, help="images in the logit check")
    args = p.parse_args(argv)
    try:
        if args.batch < 1:
            raise RunError(f"--batch must be >= 1, got {args.batch}")
        trust(args.model, everything=args.trust_model)
        report = export_run(args.run_dir, args.out, step=args.step, data_dir=args.data_dir, batch=args.batch)
    except (RunError, DataError, ExportError, GraphError) as err:
        return fail(err)
    print(json.dumps({k: v for k, v in report.items() if k != "channels"}, indent=2))
    print(f"exported model: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
