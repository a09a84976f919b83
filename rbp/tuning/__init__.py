"""The search platform: Ray Tune runs the core Trainer, Optuna proposes configs, MLflow records them.

Modules, one job each:

- :mod:`rbp.tuning.keys`      the search's own config keys, study attributes and MLflow tags (a leaf)
- :mod:`rbp.tuning.spec`      search specs (``tune/*.yaml``): validated data, checked against the core config
- :mod:`rbp.tuning.configkeys` flat dotted config keys and their values as text (params, ``rbp best``)
- :mod:`rbp.tuning.space`     the define-by-run search space, Optuna samplers, the divergence-aware searcher
- :mod:`rbp.tuning.study`     the persistent Optuna study: storage, warm starts, the Pareto front
- :mod:`rbp.tuning.trainable` the Ray function trainable: the epoch path of :mod:`rbp.runs`, report + checkpoint
- :mod:`rbp.tuning.tracking`  MLflow plumbing: tracking URI checks, experiments, run lookup by trial id
- :mod:`rbp.tuning.record`    the driver callback that turns trial events into MLflow runs and Parquet rows
- :mod:`rbp.tuning.trial_end` the end of a trial (artefacts, tags, rows, status) and the repairs after a search
- :mod:`rbp.tuning.options`   what ``rbp tune`` was asked and what it opened
- :mod:`rbp.tuning.cluster`   the Ray cluster: address checks, a local start, trials that fit
- :mod:`rbp.tuning.tuner`     one Ray experiment: the Tuner, fitted once, Ctrl-C made a clean stop
- :mod:`rbp.tuning.summary`   the closing summary of a search
- :mod:`rbp.tuning.launcher`  ``rbp tune``: run, extend or resume a spec's search
- :mod:`rbp.tuning.progress`  the live console progress table
- :mod:`rbp.tuning.best`      ``rbp best``: the top MLflow runs, cast back to a config ``rbp train`` accepts
- :mod:`rbp.tuning.mlflow_model` each trial's model as an MLflow Model (pyfunc), ``rbp best --register``
- :mod:`rbp.tuning.reaper`    the watchdog that stops a killed driver's local Ray processes by PID
- :mod:`rbp.tuning.report`    console tables and the Pareto front

Importing this package imports nothing heavy; Ray, Optuna and MLflow load in the modules that use them.
"""
