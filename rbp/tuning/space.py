"""The search space as an Optuna define-by-run function, the samplers, and the searcher Ray drives.

Ray's ``OptunaSearch`` calls :class:`SpaceSampler` with an Optuna trial for every new Ray trial;
the parameters it suggests become the trial's config (flat dotted core-config keys) together with
the spec's constants, which it returns. Define-by-run is what makes conditional parameters work:
``sparsity.p`` is only suggested when the allocation drawn (or fixed) is ``adaptive``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from rbp.tuning.keys import REPEATS_KEY, TRIAL_KEY
from rbp.tuning.spec import LoadedSpec, Param, grid_size

log = logging.getLogger(__name__)


class SpaceSampler:
    """Define-by-run function: suggests the active parameters, returns the constants.

    A plain picklable object (not a closure): Ray saves the searcher, this included, with the
    experiment state, and ``rbp tune --resume`` loads it back.
    """

    def __init__(self, loaded: LoadedSpec) -> None:
        self.params: dict[str, Param] = dict(loaded.spec.space)
        self.conditions = {name: loaded.conditions(name) for name in self.params}
        self.constants = dict(loaded.constants)
        self.resolved = dict(loaded.resolved)
        self.grid = loaded.spec.sampler.type == "grid"
        self.repeats = loaded.spec.repeats

    def active(self, name: str, values: dict[str, Any]) -> bool:
        """Whether ``name`` is sampled given the values drawn or fixed so far."""
        return all(values.get(key) in allowed for key, allowed in self.conditions[name].items())

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest the active parameters; return the constants and ``None`` for inactive ones.

        Every searched key is in every trial config (Ray's console reporter looks each one up);
        ``None`` means "not drawn, use the default" (:func:`rbp.tuning.trainable.trial_config`).
        The study's trial number and the repeats travel along under ``_``-keys.
        """
        values = dict(self.resolved)
        inactive = {}
        for name, param in self.params.items():
            if self.active(name, values):
                values[name] = self._suggest(trial, name, param)
            else:
                inactive[name] = None
        return {**self.constants, **inactive, TRIAL_KEY: trial.number, REPEATS_KEY: self.repeats}

    def _suggest(self, trial: optuna.Trial, name: str, p: Param) -> Any:
        if p.type == "categorical" or self.grid:
            return trial.suggest_categorical(name, p.choices)
        if p.type == "int":
            step = int(p.step or 1)
            return trial.suggest_int(name, int(p.low), int(p.high), step=step, log=p.is_log)  # type: ignore[arg-type]
        return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.is_log)  # type: ignore[arg-type]


class RayGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask/tell under Ray: the trial budget, not ``study.stop()``, ends it.

    The stock ``after_trial`` calls ``study.stop()`` when the grid is exhausted, which raises
    outside ``study.optimize`` (Ray tells results through ask/tell).
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


_LOCK, _RLOCK = type(threading.Lock()), type(threading.RLock())


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler that pickles without its locks and makes new ones when unpickled.

    Ray's ``Tuner`` pickles the search algorithm, sampler included, when the search starts and at
    every experiment checkpoint; Optuna 5.1's genetic samplers hold a ``threading.Lock``
    (``_thread_lock``), which cannot be pickled. A lock guards one process's threads, so a fresh
    one in the unpickling process is equivalent.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        reentrant = {name: isinstance(v, _RLOCK) for name, v in state.items() if isinstance(v, (_LOCK, _RLOCK))}
        for name in reentrant:
            del state[name]
        return {**state, "_rbp_locks": reentrant}

    def __setstate__(self, state: dict[str, Any]) -> None:
        reentrant = state.pop("_rbp_locks", {})
        self.__dict__.update(state)
        for name, is_reentrant in reentrant.items():
            setattr(self, name, threading.RLock() if is_reentrant else threading.Lock())


def make_sampler(loaded: LoadedSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names, seeded."""
    s = loaded.spec.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.type == "grid":
        size = grid_size(loaded.spec)
        if size != loaded.spec.trials:
            log.warning("grid of %d configs but a budget of %d trials", size, loaded.spec.trials)
        space = {name: list(p.choices or []) for name, p in loaded.spec.space.items()}
        return RayGridSampler(space, seed=s.seed)
    if s.type == "nsga2":
        return PicklableNSGAIISampler(seed=s.seed, population_size=s.population_size)
    # constant_liar: trials running in parallel count as pessimistic results, so TPE does not
    # propose the same region to every free worker at once.
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.startup_trials, constant_liar=True)


class RbpOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a diverged trial FAILED instead of feeding it NaN."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("diverged") or self._ended_in_study(trial_id):
            return
        super().on_trial_result(trial_id, result)

    def _ended_in_study(self, trial_id: str) -> bool:
        """The study already holds this trial's end: a driver killed after telling Optuna, before Ray
        saved its own state, restores the trial as running; its repeated reports must not reach Optuna
        (``Trial.report`` on a finished trial raises, which Ray's ``OptunaSearch`` does not catch)."""
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return False
        return self._ot_study.get_trials(deepcopy=False)[trial.number].state.is_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get("diverged"):
            result, error = None, True
        super().on_trial_complete(trial_id, result, error)


def make_searcher(loaded: LoadedSpec, storage: optuna.storages.BaseStorage) -> RbpOptunaSearch:
    """The searcher for ``loaded``: define-by-run space, sampler, metric(s) and mode(s), in the persistent study.

    The study (named after the experiment) is loaded from ``storage`` if it exists, so the sampler
    sees every trial it ever ended. Start points are enqueued in the study by the launcher, once,
    not passed as ``points_to_evaluate`` (Ray would enqueue them again at every extension).
    """
    spec = loaded.spec
    metric = spec.metrics if spec.multi_objective else spec.metrics[0]
    mode = spec.modes if spec.multi_objective else spec.modes[0]
    return RbpOptunaSearch(
        space=SpaceSampler(loaded),
        metric=metric,
        mode=mode,
        sampler=make_sampler(loaded),
        study_name=spec.experiment,
        storage=storage,
    )
