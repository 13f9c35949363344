"""bot's version, as the worker record and `bot fleet` show it (pyproject.toml's)."""

__version__ = "0.1.0"
