"""Training end to end on digits: frozen weights, trained scores, every method, resume, checkpoints."""

import json

import pytest
import torch

from rbp.artefacts.checkpoint import load_model
from rbp.base.errors import RbpError
from rbp.config.load import load_config
from rbp.nn import subnet_layers
from rbp.runs.epochs import train_run
from rbp.runs.folder import read_metrics
from rbp.training.trainer import Diverged, Trainer

FAST = [
    "train.epochs=1",
    "model.width=8",
    "attack.steps=2",
    "eval.val_pgd_steps=2",
    "eval.test_pgd_steps=2",
    "run.progress=false",
]


def _cfg(tmp_path, *overrides):
    return load_config(None, [*FAST, f"run.out_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("method", ["pgd", "fgsm", "trades", "clean"])
def test_training_changes_scores_only_and_keeps_weights_bit_identical(tmp_path, method):
    trainer = Trainer(_cfg(tmp_path, f"train.method={method}"))
    layers = subnet_layers(trainer.model)
    weights = {n: layer.weight.clone() for n, layer in layers.items()}
    scores = {n: layer.scores.detach().clone() for n, layer in layers.items()}
    metrics = trainer.run_epoch()
    assert metrics["epoch"] == 1 and 0 <= metrics["val_pgd_acc"] <= metrics["val_clean_acc"] <= 1
    for name, layer in layers.items():
        assert torch.equal(layer.weight, weights[name]), f"{name}: frozen weights changed"
        assert set(layer.weight.abs().unique().tolist()) == {1.0}
        assert not torch.equal(layer.scores, scores[name]), f"{name}: scores not trained"


def test_binary_mode_trains_and_clips_latent_weights(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "model.mode=binary", "train.lr=5"))
    trainer.run_epoch()
    latent = [m.weight for n, m in trainer.model.named_modules() if hasattr(m, "clip_")]
    assert latent and all(w.abs().max() <= 1 for w in latent)


def test_adam_and_step_schedule(tmp_path):
    trainer = Trainer(
        _cfg(
            tmp_path,
            "train.optimizer=adam",
            "train.lr=0.01",
            "train.schedule=step",
            "train.epochs=4",
            "train.milestones=[0.5]",
        )
    )
    lrs = [trainer.run_epoch()["lr"] for _ in range(4)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_dense_divergence_is_reported(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "model.mode=dense", "train.lr=1e30", "model.last_bn=none"))
    with pytest.raises(Diverged, match="epoch 1"):
        trainer.run_epoch()


def test_run_folder_contents_and_reload(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=2")
    summary = train_run(cfg)
    run_dir = tmp_path / cfg.run_id()
    for name in ("config.yaml", "densities.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert [m["epoch"] for m in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]
    densities = json.loads((run_dir / "densities.json").read_text())
    assert sum(row["kept"] for row in densities) == summary["kept_params"]
    assert load_config(run_dir / "config.yaml").run_id() == cfg.run_id()  # the resolved config re-runs
    model, loaded_cfg, _ = load_model(run_dir / "best.pt")
    x = torch.rand(5, 1, 8, 8)
    again, _, _ = load_model(run_dir / "best.pt")
    torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
    with pytest.raises(RbpError, match="--resume"):
        train_run(cfg)  # never overwrites a finished run by accident


def test_save_load_gives_identical_outputs(tmp_path):
    cfg = _cfg(tmp_path)
    trainer = Trainer(cfg)
    trainer.run_epoch()
    from dataclasses import asdict

    from rbp.artefacts.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", cfg, asdict(trainer.splits.info), trainer.model)
    model, _, _ = load_model(tmp_path / "m.pt")
    trainer.model.eval()
    x = torch.rand(8, 1, 8, 8)
    assert torch.equal(trainer.model(x), model(x))


def test_resume_continues_at_the_right_epoch_and_matches_an_uninterrupted_run(tmp_path):
    straight = train_run(_cfg(tmp_path / "a", "train.epochs=3"))
    cfg = _cfg(tmp_path / "b", "train.epochs=3")

    # Interrupt after epoch 2: a callback that raises, as a kill would stop the loop.
    class Kill(Exception):
        pass

    def stop_at_two(metrics):
        if metrics["epoch"] == 2:
            raise Kill

    with pytest.raises(Kill):
        train_run(cfg, callback=stop_at_two)
    run_dir = tmp_path / "b" / cfg.run_id()
    assert not (run_dir / "summary.json").exists()
    seen = []
    resumed = train_run(cfg, resume=True, callback=lambda m: seen.append(m["epoch"]))
    assert seen == [3]  # continued after epoch 2, not from 0
    assert [m["epoch"] for m in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]
    for key in ("test_clean_acc", "test_pgd2_acc", "best_epoch"):
        assert resumed[key] == straight[key], key
    assert train_run(cfg, resume=True) == resumed  # a finished run is not trained again
