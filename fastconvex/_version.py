"""The package version, in one place (read by the CLI and recorded in stores)."""

__version__ = "0.1.0"
