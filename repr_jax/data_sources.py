"""Moved to :mod:`repr_jax.data.sources`; this name is kept for existing imports."""
from repr_jax.data.sources import *  # noqa: F401,F403
from repr_jax.data.sources import __all__  # noqa: F401
