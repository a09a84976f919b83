"""What Ray Tune wrote for each trial of a search: its reported results (``result.json``), read back."""

from __future__ import annotations

import json
from pathlib import Path


def trial_results(search: Path) -> dict[str, list[dict]]:
    """Ray's per-trial results (``result.json`` of every trial folder of ``search``), by trial id, in report order."""
    trials = {}
    for path in search.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            trials[lines[0]["trial_id"]] = lines
    return trials


def worker_pids(storage: Path) -> dict[str, int]:
    """The worker process of each trial of the searches under ``storage`` (its last result's), by trial id."""
    return {
        trial_id: lines[-1]["pid"]
        for search in storage.iterdir()
        if search.is_dir()
        for trial_id, lines in trial_results(search).items()
    }
