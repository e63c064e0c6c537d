"""Moved to :mod:`repr_jax.data.formats`; this name is kept for existing imports."""
from repr_jax.data.formats import *  # noqa: F401,F403
from repr_jax.data.formats import __all__  # noqa: F401
