"""The search platform: Ray Tune runs the core Trainer, Optuna proposes configs, MLflow records them.

Modules, one job each:

- :mod:`rbp.tuning.spec`      search specs (``tune/*.yaml``): validated data, checked against the core config
- :mod:`rbp.tuning.space`     the define-by-run search space, Optuna samplers, the divergence-aware searcher
- :mod:`rbp.tuning.trainable` the Ray function trainable: epoch loop, report + checkpoint, resume
- :mod:`rbp.tuning.tracking`  MLflow plumbing: tracking URI checks, experiments, run lookup by trial id
- :mod:`rbp.tuning.record`    the driver callback that turns trial events into MLflow runs and Parquet rows
- :mod:`rbp.tuning.launcher`  ``rbp tune``: Ray start/connect, Tuner build/restore, summary, Pareto front
- :mod:`rbp.tuning.best`      ``rbp best``: the top MLflow runs, cast back to a config ``rbp train`` accepts
- :mod:`rbp.tuning.report`    console tables and the Pareto front

Importing this package imports nothing heavy; Ray, Optuna and MLflow load in the modules that use them.
"""
