"""The names of the files in a run folder, ``<run.out_dir>/<run id>/`` (written by :mod:`rbp.runs`).

- ``config.yaml``      the resolved config (``rbp train --config`` accepts it as is)
- ``densities.json``   per-layer shape, weights, density and kept count
- ``determinism.json`` torch's determinism flags the run trains under (``run.deterministic``), as last (re)started
- ``metrics.jsonl``    one JSON object per finished epoch
- ``last.pt``          the latest epoch's model + trainer state and metrics history (the commit point)
- ``best.pt``          the model of the epoch with the best validation PGD accuracy
- ``summary.json``     test metrics of ``best.pt`` and the model's size, when finished
- ``test.json``        the test metrics of ``best.pt`` measured so far, while the evaluation runs
- ``autoattack.json``  AutoAttack's progress: the images no attack has broken yet, after each attack
- ``.lock``            held (``flock``) by the one process writing the folder

A Ray trial's checkpoint folder holds the same files (one folder per seed, ``seed<S>/``, when a
trial repeats its config over seeds), so ``rbp export`` and ``rbp eval`` read it like any run.
"""

CONFIG = "config.yaml"
DENSITIES = "densities.json"
DETERMINISM = "determinism.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
TEST_PROGRESS = "test.json"
AUTOATTACK_PROGRESS = "autoattack.json"
LOCK = ".lock"
