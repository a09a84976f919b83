"""The user's paths through `rbp`: train, eval (PGD, AutoAttack), resume, and bad input -> exit 2."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from rbp.cli import main

FAST = [
    "--set",
    "train.epochs=2",
    "--set",
    "model.width=8",
    "--set",
    "attack.steps=2",
    "--set",
    "eval.val_pgd_steps=2",
    "--set",
    "eval.test_pgd_steps=3",
    "--quiet",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *FAST, "--set", f"run.out_dir={out}"]) == 0
    (folder,) = out.iterdir()
    return folder


def test_train_prints_accuracy_and_kept_weights(tmp_path, capsys):
    assert main(["train", *FAST, "--set", f"run.out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "test clean accuracy" in out and "test PGD-3 accuracy" in out and "kept weights" in out
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert f"{summary['kept_params']:,}" in out


def test_quiet_train_prints_only_its_result(tmp_path):
    """`rbp train --quiet`: no informational lines on stderr (the data line included), the result on stdout."""
    command = [
        sys.executable,
        "-m",
        "rbp",
        "train",
        *FAST,
        "--set",
        "train.epochs=1",
        "--set",
        f"run.out_dir={tmp_path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "test clean accuracy" in done.stdout


def test_quiet_eval_and_ablate_print_only_their_result(run_dir, tmp_path):
    """--quiet means the same on every command that has it: nothing on stderr but errors."""
    evaluated = subprocess.run([sys.executable, "-m", "rbp", "eval", str(run_dir / "best.pt"), "--attack", "autoattack",
                                "--samples", "4", "--quiet"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert evaluated.returncode == 0 and evaluated.stderr == "", evaluated.stderr
    assert "autoattack_acc" in evaluated.stdout
    spec = tmp_path / "spec.yaml"
    base = {"train.epochs": 1, "model.width": 8, "attack.steps": 2, "eval.val_pgd_steps": 2, "eval.test_pgd_steps": 2}
    spec.write_text(yaml.safe_dump({"name": "q", "results": str(tmp_path / "out"), "base": base, "seeds": [0],
                                    "studies": {"s": {"cells": [{"name": "ours"}]}}}))  # fmt: skip
    ablated = subprocess.run([sys.executable, "-m", "rbp", "ablate", str(spec), "--quiet"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ablated.returncode == 0 and ablated.stderr == "", ablated.stderr
    assert "| ours |" in ablated.stdout
    rendered = subprocess.run([sys.executable, "-m", "rbp", "tables", str(spec), "--quiet"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert "| ours |" in rendered.stdout


def test_resume_of_a_finished_run_trains_nothing(run_dir, capsys):
    args = ["train", *FAST, "--set", f"run.out_dir={run_dir.parent}", "--resume"]
    assert main(args) == 0
    assert "epoch" not in capsys.readouterr().err.replace("best_epoch", "")


def test_eval_pgd_with_restarts(run_dir, tmp_path, capsys):
    out_file = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(run_dir / "best.pt"),
                "--attack",
                "pgd",
                "--steps",
                "5",
                "--restarts",
                "2",
                "--out",
                str(out_file),
            ]
        )
        == 0
    )
    result = json.loads(out_file.read_text())
    assert result["steps"] == 5 and result["restarts"] == 2
    assert 0 <= result["pgd_acc"] <= result["clean_acc"] <= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["clean_acc"] == pytest.approx(summary["test_clean_acc"])


def test_eval_steps_as_the_run_evaluated_unless_told(tmp_path):
    """The PGD step of `rbp eval` is the checkpoint's eval.step_scale * eps / steps, as training evaluated."""
    args = [
        "train",
        *FAST,
        "--set",
        f"run.out_dir={tmp_path}",
        "--set",
        "eval.step_scale=1.0",
        "--set",
        "train.epochs=1",
    ]
    assert main(args) == 0
    (folder,) = tmp_path.iterdir()
    result_file, told_file = tmp_path / "eval.json", tmp_path / "told.json"
    command = ["eval", str(folder / "best.pt"), "--steps", "4", "--samples", "20"]
    assert main([*command, "--out", str(result_file)]) == 0
    assert json.loads(result_file.read_text())["step_size"] == pytest.approx(1.0 * 0.1 / 4)  # digits eps 0.1
    assert main([*command, "--step-size", "0.05", "--out", str(told_file)]) == 0
    assert json.loads(told_file.read_text())["step_size"] == 0.05


@pytest.mark.slow
def test_eval_autoattack_on_a_few_images(run_dir, capsys, caplog):
    caplog.set_level("INFO")
    assert main(["eval", str(run_dir / "best.pt"), "--attack", "autoattack", "--samples", "24"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 24 and 0 <= result["autoattack_acc"] <= result["clean_acc"]
    # AutoAttack's own reports (accuracy after each attack) reach our log.
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "autoattack:" in messages and "APGD-CE" in messages.upper()


@pytest.mark.slow
def test_eval_autoattack_with_state_continues_where_the_state_ends(run_dir, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    state = tmp_path / "aa.json"
    command = ["eval", str(run_dir / "best.pt"), "--attack", "autoattack", "--samples", "24", "--state", str(state)]
    assert main(command) == 0
    first = json.loads(capsys.readouterr().out)
    saved = json.loads(state.read_text())
    assert len(saved["robust"]) == 24 and saved["accuracy_after"]
    caplog.clear()
    assert main(command) == 0  # every attack finished: nothing is attacked again, the same result
    assert json.loads(capsys.readouterr().out)["autoattack_acc"] == first["autoattack_acc"]
    assert "resuming after" in caplog.text and "running apgd" not in caplog.text


def test_eval_state_without_autoattack_exits_2(run_dir, tmp_path, capsys):
    err = _bad(["eval", str(run_dir / "best.pt"), "--attack", "pgd", "--state", str(tmp_path / "aa.json")], capsys)
    assert "--state" in err and "--attack autoattack" in err


def _bad(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("rbp: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.depth=3", "model.depth"),
        ("sparsity.density=1.2", "sparsity.density"),
        ("sparsity.p=-1", "sparsity.p"),
        ("attack.eps=-0.5", "attack.eps"),
        ("model.arch=alexnet", "model.arch"),
        ("data.name=imagenet", "data.name"),
    ],
)
def test_config_errors_exit_2(override, needle, capsys):
    assert needle in _bad(["train", "--set", override], capsys)


def test_missing_data_root_exits_2(tmp_path, capsys):
    err = _bad(
        [
            "train",
            "--set",
            "data.name=cifar10",
            "--set",
            f"data.root={tmp_path / 'nowhere'}",
            "--set",
            f"run.out_dir={tmp_path}",
        ],
        capsys,
    )
    assert "data.root" in err
    assert "data.root" in _bad(["train", "--set", "data.name=svhn", "--set", f"run.out_dir={tmp_path}"], capsys)


def test_bad_checkpoints_exit_2(run_dir, tmp_path, capsys):
    assert "no such file" in _bad(["eval", str(tmp_path / "none.pt")], capsys)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert "unreadable or corrupt" in _bad(["eval", str(garbage)], capsys)
    truncated = tmp_path / "truncated.pt"
    data = (run_dir / "best.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert "unreadable or corrupt" in _bad(["eval", str(truncated)], capsys)
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    key = next(k for k in payload["model"] if k.endswith(".weight"))
    payload["model"][key] = -payload["model"][key]  # flip frozen weights
    torch.save(payload, tmp_path / "flipped.pt")
    assert "tampered" in _bad(["eval", str(tmp_path / "flipped.pt")], capsys)
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    payload["config"]["sparsity"]["density"] = 0.5  # config edited after training
    torch.save(payload, tmp_path / "edited.pt")
    assert "tampered" in _bad(["eval", str(tmp_path / "edited.pt")], capsys)
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    payload["model"].pop(next(iter(payload["model"])))
    torch.save(payload, tmp_path / "short.pt")
    assert "tampered" in _bad(["eval", str(tmp_path / "short.pt")], capsys)
    assert zipfile.is_zipfile(run_dir / "best.pt")  # the original is untouched


def test_existing_run_is_never_overwritten_by_accident(run_dir, capsys):
    before = (run_dir / "summary.json").read_bytes()
    err = _bad(["train", *FAST, "--set", f"run.out_dir={run_dir.parent}"], capsys)
    assert "--resume" in err and (run_dir / "summary.json").read_bytes() == before


def test_console_script_reports_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("rbp")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "rbp"]
    proc = subprocess.run(
        [*command, "train", "--set", "sparsity.density=1.2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "sparsity.density" in proc.stderr


def test_console_script_prints_everything_and_runs_exit_handlers_before_its_fast_exit(run_dir, capsys):
    """`rbp` skips the interpreter's teardown (rbp.cli.run): output and atexit work must survive that."""
    args = ["eval", str(run_dir / "best.pt"), "--attack", "clean"]
    assert main(args) == 0
    expected = capsys.readouterr().out
    script = (
        "import atexit, sys; from rbp.cli import run; "
        "atexit.register(lambda: print('exit handler ran', file=sys.stderr)); "
        f"sys.argv = ['rbp', *{args!r}]; run()"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout == expected and '"clean_acc"' in expected
    assert proc.stderr.strip().endswith("exit handler ran")


def test_train_and_eval_on_cifar10_files(cifar10_root, tmp_path, capsys):
    """The README's CIFAR path on a tiny set of files in the real on-disk format."""
    data = ["data.name=cifar10", f"data.root={cifar10_root}", "data.batch_size=4", "data.val_fraction=0.2"]
    args = ["train", *FAST, "--set", f"run.out_dir={tmp_path / 'runs'}"]
    args += [arg for kv in data for arg in ("--set", kv)]
    assert main(args) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    cfg_text = (folder / "config.yaml").read_text()
    assert "name: cifar10" in cfg_text and "augment: true" in cfg_text
    capsys.readouterr()
    assert main(["eval", str(folder / "best.pt"), "--steps", "2", "--data-root", str(cifar10_root)]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3
