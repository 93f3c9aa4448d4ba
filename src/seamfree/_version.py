"""The package version, importable without torch (the CLI's ``--version`` and ``--help`` need nothing else)."""

__version__ = "0.1.0"
