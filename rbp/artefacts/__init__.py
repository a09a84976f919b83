"""Artefacts: ``.pt`` checkpoints, the compact ``.rbpz`` export, and loading either."""
