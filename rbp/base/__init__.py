"""The bottom layer, imported by every other: the version, the user-facing error and its one-line
helpers, atomic file writes, the names of a run folder's files, and the metric registry.

Nothing here imports torch or another part of rbp.
"""
