"""The package version, importable without torch (the CLI's ``--version`` and ``--help`` need nothing else)."""

__version__ = "0.1.0"

# Every deprecated name (option, field, attribute, module) is deleted in this version; a test fails once
# __version__ reaches it while any of them is still here.
REMOVED_IN = "0.2.0"
