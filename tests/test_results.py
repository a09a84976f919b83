"""Parquet results: one atomic row per run, a folder read as one table, corrupt files skipped."""

import pandas as pd

from rbp.config.load import load_config
from rbp.results import flatten, read_results, result_row, write_row


def test_row_holds_identity_config_metrics_and_provenance():
    cfg = load_config(None, ["seed=3", "sparsity.density=0.2"])
    row = result_row(cfg, {"test_clean_acc": 0.9, "autoattack_log": ["x"]}, extra={"trial_id": "t1"})
    assert row["run_id"] == cfg.run_id() and row["status"] == "finished" and row["trial_id"] == "t1"
    assert row["config.seed"] == 3 and row["config.sparsity.density"] == 0.2
    assert row["test_clean_acc"] == 0.9 and "autoattack_log" not in row
    assert row["rbp_version"] and row["git_commit"] and row["finished_at"]


def test_flatten_keeps_lists_as_json():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}


def test_rows_are_written_atomically_and_replaced_by_name(tmp_path):
    cfg = load_config()
    write_row(tmp_path, result_row(cfg, {"acc": 0.1}), name="trial_0")
    write_row(tmp_path, result_row(cfg, {"acc": 0.2}), name="trial_0")  # a restarted trial
    write_row(tmp_path / "sub", result_row(load_config(None, ["seed=1"]), {"acc": 0.3}))
    table = read_results(tmp_path)
    assert sorted(table["acc"]) == [0.2, 0.3]
    assert not list(tmp_path.glob(".*tmp"))


def test_corrupt_file_is_skipped_and_reported(tmp_path, caplog):
    write_row(tmp_path, result_row(load_config(), {"acc": 0.5}))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    table = read_results(tmp_path)
    assert list(table["acc"]) == [0.5]
    assert "broken.parquet" in caplog.text and "delete it to rebuild it" in caplog.text and "rbp ablate" in caplog.text


def test_empty_folder_is_an_empty_table(tmp_path):
    assert isinstance(read_results(tmp_path), pd.DataFrame) and read_results(tmp_path).empty


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    import pytest

    from rbp.base.atomic import atomic_path

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_writes_reach_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    import os

    from rbp.base import atomic
    from rbp.base.atomic import atomic_path

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    target = tmp_path / "table.md"
    with atomic_path(target) as tmp:
        tmp.write_text("| a |")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text() == "| a |"
