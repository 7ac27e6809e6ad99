"""The installed package's version, on the lowest floor so any module can record it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlver-agents")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"
