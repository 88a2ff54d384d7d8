"""The seqedit version, in a module of its own so that subpackages can read it without importing
the package root (and without the cycles that invites). Keep it equal to pyproject.toml's."""

__version__ = "0.1.0"
