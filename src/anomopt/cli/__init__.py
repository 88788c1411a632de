"""The ``anomopt`` command line. Each sub-command lives in its own module with a ``register``."""

from anomopt.cli.main import main

__all__ = ["main"]
