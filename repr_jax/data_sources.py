"""Moved to :mod:`repr_jax.data.sources`; this name is kept for existing imports (every public
name of the module, ``__all__`` or not)."""
from repr_jax.data import sources as _home

globals().update({name: value for name, value in vars(_home).items() if not name.startswith("_")})
__all__ = _home.__all__
