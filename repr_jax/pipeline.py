"""Moved to :mod:`repr_jax.data.pipeline`; this name is kept for existing imports."""
from repr_jax.data.pipeline import *  # noqa: F401,F403
from repr_jax.data.pipeline import __all__  # noqa: F401
