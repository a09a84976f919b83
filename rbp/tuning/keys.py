"""The names a search shares between its driver, its trials and its stores: the search's own keys in a
trial's config, the Optuna study's user attributes, and the MLflow tags of its runs. A leaf module:
it imports nothing, so every part of :mod:`rbp.tuning` reads the same spelling.
"""

# Keys of a Ray trial's flat config that are the search's own, not core-config keys (they start with "_").
TRIAL_KEY = "_study_trial"  # the Optuna trial number
REPEATS_KEY = "_repeats"  # seeds per sampled config (the spec's ``repeats``)

# User attributes of the study (what ``rbp tune`` needs to continue a search).
TRACKING_ATTR = "rbp.tracking_uri"
PARENT_ATTR = "rbp.mlflow_parent_run"
RUNS_ATTR = "rbp.runs_dir"
RAY_ATTR = "rbp.ray_experiment"  # the newest Ray experiment folder of the search (what --resume restores)
ROOT_ATTR = "rbp.results_root"  # the results folder the paths above were recorded under (a moved search follows)

# MLflow tags of a search's runs.
TRIAL_TAG = "rbp.trial_id"
SEARCH_TAG = "rbp.search"
SPEC_TAG = "rbp.spec"
SEARCHED_TAG = "rbp.searched"  # JSON list of the spec's searched keys (rbp best shows them)
SAMPLED_TAG = "rbp.sampled"  # JSON {key: value} of the searched keys this trial drew
STATUS_TAG = "rbp.status"  # finished | early_stopped | diverged | error
REASON_TAG = "rbp.failure_reason"
RUN_ID_TAG = "rbp.run_id"  # the config hash
GIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: the UI shows it
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nesting: a trial's run under its search's run
NOTE_TAG = "mlflow.note.content"  # MLflow's description (experiment and run pages)
KIND_TAG = "mlflow.experimentKind"  # MLflow 3 opens the GenAI view unless this says otherwise
KIND = "custom_model_development"  # the traditional ML view: runs, params, metrics, charts
STUDY_TRIAL_TAG = "rbp.study_trial"  # the Optuna trial number
