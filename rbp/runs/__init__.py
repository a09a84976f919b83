"""Runs: the run folder and its commit protocol (:mod:`~rbp.runs.folder`), and the one epoch path
that ``rbp train`` and a Ray trial share (:mod:`~rbp.runs.epochs`)."""
