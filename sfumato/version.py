"""The package version (its own module: the lowest layer may read it)."""

__version__ = "0.1.0"
