"""The studies behind ``experiments/``: applications of the library, not parts of it.

``ablation`` (the criterion ablation), ``study`` (the RePr protocol study), ``compress_study``
(the structured-pruning table), ``weight_study`` (the weight-level tables), ``study_runner``
(their processes: skip finished runs, resume, N at a time) and ``sensitivity`` (Li et al.'s
per-layer sensitivity sweep). Each uses the runner (:mod:`repr_jax.experiment`) and the
report (:mod:`repr_jax.report`); nothing in the library imports them.
"""
