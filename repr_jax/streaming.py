"""Moved to :mod:`repr_jax.data.streaming`; this name is kept for existing imports."""
from repr_jax.data.streaming import *  # noqa: F401,F403
from repr_jax.data.streaming import __all__  # noqa: F401
