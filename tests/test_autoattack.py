"""AutoAttack one attack at a time: the same robust images as one pyautoattack call, and an
evaluation stopped between its attacks resumes after the last one it finished."""

import json
from dataclasses import asdict

import pytest
import torch
from pyautoattack import AutoAttack
from torch import nn

from rbp.config.load import load_config
from rbp.evaluation import autoattack_accuracy
from rbp.runs.epochs import train_run
from rbp.runs.folder import RunFolder, run_dir_of
from rbp.training.trainer import Trainer

EPS = 0.2  # breaks most of the test's images, not all


class NearestPrototype(nn.Module):
    """A linear classifier with an exact margin: image x goes to the closest of 10 prototypes."""

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(prototypes.flatten(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prototypes
        return x.flatten(1) @ p.T - 0.5 * (p * p).sum(dim=1)


@pytest.fixture(autouse=True)
def short_attacks(monkeypatch):
    """Every attack shortened (10 iterations, Square 100 queries): the order in which the attacks run
    and which images each is given are under test here, not their strength."""
    original = AutoAttack.__init__

    def shortened(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.apgd.n_iter = self.apgd_targeted.n_iter = self.fab.n_iter = 10
        self.square.n_queries = 100

    monkeypatch.setattr(AutoAttack, "__init__", shortened)


@pytest.fixture(scope="module")
def problem():
    """Images at several distances from their class prototype: some robust at EPS, some not."""
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.rand(10, 1, 6, 6, generator=gen)
    y = torch.arange(40) % 10
    noise = (torch.rand(40, 1, 6, 6, generator=gen) - 0.5) * torch.linspace(0.1, 1.2, 40).view(-1, 1, 1, 1)
    x = (prototypes[y] + noise).clamp(0, 1)
    return NearestPrototype(prototypes).eval(), x, y


def _robust_flags(path) -> list[int]:
    return json.loads(path.read_text())["robust"]


def test_one_attack_at_a_time_breaks_the_same_images_as_one_call(problem, tmp_path):
    model, x, y = problem
    one_call = AutoAttack(model, norm="Linf", eps=EPS, version="standard", device="cpu", seed=0)
    _, predicted = one_call.run_standard_evaluation(x, y, batch_size=16)
    expected = (predicted == y).int().tolist()
    assert 0 < sum(expected) < sum((model(x).argmax(1) == y).tolist())  # the attacks break some images, not all

    result = autoattack_accuracy(model, x, y, eps=EPS, batch_size=16, state_path=tmp_path / "aa.json")
    assert _robust_flags(tmp_path / "aa.json") == expected
    assert result["autoattack_acc"] == pytest.approx(sum(expected) / len(y))


class Stopped(Exception):
    """Stands for a kill during one of AutoAttack's attacks."""


def _attacks_run(monkeypatch, stop_at: str | None = None) -> list[str]:
    """Record the attacks AutoAttack runs from now on; raise Stopped when ``stop_at`` starts."""
    run, original = [], AutoAttack.run_standard_evaluation

    def recording(self, x, y, **kwargs):
        (name,) = self.attacks_to_run
        if name == stop_at:
            raise Stopped(name)
        run.append(name)
        return original(self, x, y, **kwargs)

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", recording)
    return run


def test_a_stopped_evaluation_resumes_after_its_last_finished_attack(problem, tmp_path, monkeypatch):
    model, x, y = problem
    state = tmp_path / "aa.json"
    uninterrupted = autoattack_accuracy(model, x, y, eps=EPS, batch_size=16)

    with monkeypatch.context() as mp:
        before = _attacks_run(mp, stop_at="fab-t")
        with pytest.raises(Stopped):
            autoattack_accuracy(model, x, y, eps=EPS, batch_size=16, state_path=state)
    assert before == ["apgd-ce", "apgd-t"]
    assert set(json.loads(state.read_text())["accuracy_after"]) == {"apgd-ce", "apgd-t"}

    after = _attacks_run(monkeypatch)
    resumed = autoattack_accuracy(model, x, y, eps=EPS, batch_size=16, state_path=state)
    assert after == ["fab-t", "square"]
    assert resumed["autoattack_acc"] == uninterrupted["autoattack_acc"]
    assert resumed["clean_acc"] == uninterrupted["clean_acc"]


@pytest.mark.parametrize("content", ["{not json", '{"robust": [1]}', "other eps"])
def test_a_state_of_another_evaluation_or_unreadable_starts_from_the_first_attack(
    problem, tmp_path, monkeypatch, caplog, content
):
    model, x, y = problem
    state = tmp_path / "aa.json"
    if content == "other eps":
        with monkeypatch.context() as mp:
            _attacks_run(mp, stop_at="fab-t")
            with pytest.raises(Stopped):
                autoattack_accuracy(model, x, y, eps=EPS / 2, batch_size=16, state_path=state)
    else:
        state.write_text(content)
    run = _attacks_run(monkeypatch)
    result = autoattack_accuracy(model, x, y, eps=EPS, batch_size=16, state_path=state)
    assert run[0] == "apgd-ce"
    assert "attacking from the start" in caplog.text
    assert result["autoattack_acc"] == pytest.approx(sum(_robust_flags(state)) / len(y))


def test_a_run_stopped_during_autoattack_resumes_there_with_the_same_summary(tmp_path, monkeypatch):
    def config(out):
        return load_config(None, [
            "train.epochs=2", "model.arch=mlp", "model.width=16", "attack.steps=2", "eval.val_pgd_steps=2",
            "eval.test_pgd_steps=2", "eval.autoattack=true", "eval.autoattack_samples=30",
            "run.progress=false", f"run.out_dir={out}",
        ])  # fmt: skip

    uninterrupted = train_run(config(tmp_path / "uninterrupted"))
    cfg = config(tmp_path / "stopped")
    run_dir = run_dir_of(cfg)
    with monkeypatch.context() as mp:
        _attacks_run(mp, stop_at="apgd-t")
        with pytest.raises(Stopped):
            train_run(cfg)
    assert (run_dir / "test.json").exists() and (run_dir / "autoattack.json").exists()
    assert not (run_dir / "summary.json").exists()
    progress = {name: (run_dir / name).read_bytes() for name in ("test.json", "autoattack.json")}
    trainer = Trainer(cfg)
    folder = RunFolder(run_dir, cfg, asdict(trainer.splits.info))
    folder.commit(trainer, folder.restore(trainer))  # an epoch committed again: the progress belongs to no model now
    assert not (run_dir / "test.json").exists() and not (run_dir / "autoattack.json").exists()
    for name, content in progress.items():
        (run_dir / name).write_bytes(content)

    evaluated, evaluate = [], Trainer.evaluate
    monkeypatch.setattr(
        Trainer, "evaluate", lambda self, split="val", **kw: evaluated.append(split) or evaluate(self, split, **kw)
    )
    attacks = _attacks_run(monkeypatch)
    summary = train_run(cfg, resume=True)
    assert evaluated == [] and attacks[0] == "apgd-t"  # clean, PGD and APGD-CE were not measured again
    assert {**summary, "run_dir": None} == {**uninterrupted, "run_dir": None}
    assert not (run_dir / "test.json").exists() and not (run_dir / "autoattack.json").exists()
