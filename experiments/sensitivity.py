#!/usr/bin/env python
"""Sensitivity analysis (Li et al. 2017, Fig. 2b) of a trained run: prune each layer alone.

  python experiments/sensitivity.py RUN_DIR --out DIR [--max-drop 0.01] [--step latest|best|EPOCH]

For every prunable layer and ratio 10 %, …, 90 % the smallest-L1 filters are removed from
the trained network (no retraining) and accuracy is measured — on the run's held-out
images when it has them (data.holdout), else on its test set (--split). Writes
DIR/sensitivity.json (curves, the per-layer ratios picked — the largest ratio within
--max-drop of the unpruned accuracy, 0 for sensitive layers — and them as an
``li-l1.ratios`` value) and DIR/sensitivity.png (one curve per layer). Then e.g.

  python experiments/cifar.py --method li-l1 --set init_from=RUN_DIR --set li-l1.ratios=$(jq -r .li_l1_ratios DIR/sensitivity.json) ...
"""
from __future__ import annotations

import argparse
import json
import sys

from repr_jax._xla_flags import enable_cpu_fusion

enable_cpu_fusion()  # before JAX starts its backend; REPR_JAX_NO_YNN=1 opts out

from repr_jax.cli import DefaultsHelpFormatter, fail  # noqa: E402
from repr_jax.config import RunError  # noqa: E402
from repr_jax.data import DataError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("run_dir", help="a trained run directory written by experiments/cifar.py")
    p.add_argument("--out", required=True, help="directory for sensitivity.json and sensitivity.png")
    p.add_argument("--step", default="latest", help="checkpoint: latest, best or an epoch number")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="accuracy (fraction) a layer's pick may lose against the unpruned network")
    p.add_argument("--all-layers", action="store_true",
                   help="also layers tied to residual sums (they cannot shrink in an export)")
    p.add_argument("--split", default="auto", choices=("auto", "heldout", "test"),
                   help="images the curves are measured on: the run's held-out images (data.holdout; "
                        "auto picks them when the run has any) or its test set (Li et al.'s)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on a fixed slice of N test images")
    p.add_argument("--data-dir", default=None, help="the run's data, if it moved")
    args = p.parse_args(argv)
    from repr_jax.studies.sensitivity import analyse
    try:
        if not 0 <= args.max_drop <= 1:
            raise RunError(f"--max-drop must be in [0, 1], got {args.max_drop}")
        if args.step not in ("latest", "best") and not args.step.isdigit():
            raise RunError(f"--step must be latest, best or an epoch number, got {args.step!r}")
        report = analyse(args.run_dir, args.out, step=args.step, data_dir=args.data_dir,
                         max_drop=args.max_drop, all_layers=args.all_layers, test_limit=args.test_limit,
                         split=args.split)
    except (RunError, DataError, FileNotFoundError) as err:
        return fail(err)
    print(json.dumps({k: report[k] for k in ("split", "images", "unpruned_accuracy", "picked", "sensitive")}, indent=2))
    print(f"--set li-l1.ratios={report['li_l1_ratios']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
