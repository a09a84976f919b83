"""The package version, written into every checkpoint, artefact and result row."""

__version__ = "0.1.0"
