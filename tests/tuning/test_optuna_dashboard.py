"""optuna-dashboard (the ``dashboard`` extra), started on a study rbp opened, lists it with named objectives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from servers import free_port, request, serving

from rbp.tuning.study import open_storage, open_study, resolve_storage

pytest.importorskip("optuna_dashboard", reason="the dashboard extra: pip install -e '.[dashboard]'")


@pytest.mark.slow
def test_the_dashboard_lists_an_rbp_study_with_its_objectives_named(tmp_path):
    url = resolve_storage(None, tmp_path)  # the default: sqlite:///<results>/optuna.db
    study = open_study(open_storage(url), "digits_pareto", ["max", "min"], metrics=["val_pgd_acc", "kept_params"])
    study.tell(study.ask(), [0.8, 1200])
    port = free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), url, "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with serving(command, dict(os.environ), tmp_path / "dashboard.log", f"{base}/api/studies"):
        status, answer = request(f"{base}/api/studies")
        assert status == 200, answer
        (summary,) = answer["study_summaries"]
        assert summary["study_name"] == "digits_pareto" and summary["directions"] == ["maximize", "minimize"]
        status, detail = request(f"{base}/api/studies/{summary['study_id']}")
        assert status == 200 and detail["objective_names"] == ["val_pgd_acc", "kept_params"], detail
        assert [t["values"] for t in detail["trials"]] == [[0.8, 1200]]
