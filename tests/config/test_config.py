"""One validated config: defaults, YAML, overrides, run ids and one-line errors that name the field."""

import pytest

from rbp.base.errors import RbpError
from rbp.config.load import load_config
from rbp.config.schema import Config


def test_defaults_are_the_digits_recipe():
    cfg = load_config()
    assert cfg.data.name == "digits" and cfg.model.mode == "subnet" and cfg.model.last_bn == "nonaffine"
    assert cfg.sparsity.density == 0.1 and cfg.attack.eps == 0.1 and cfg.init.scheme == "binary"


def test_data_set_dependent_defaults():
    cifar10 = load_config(None, ["data.name=cifar10"])
    assert cifar10.attack.eps == pytest.approx(8 / 255) and cifar10.attack.step_size == pytest.approx(2 / 255)
    assert cifar10.data.val_fraction == 0.02 and cifar10.data.augment is True
    cifar100 = load_config(None, ["data.name=cifar100"])
    assert cifar100.attack.eps == pytest.approx(4 / 255) and cifar100.attack.step_size == pytest.approx(1 / 255)
    # Given eps without step size: the step keeps the data set's eps/step ratio.
    assert load_config(None, ["attack.eps=0.2"]).attack.step_size == pytest.approx(0.05)
    assert load_config(None, ["train.method=fgsm"]).attack.step_size == pytest.approx(0.125)
    assert load_config(None, ["model.mode=dense"]).init.scheme == "kaiming_normal"


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("model:\n  arch: resnet18\ndata:\n  name: cifar10\n")
    cfg = load_config(path, ["sparsity.density=0.01", "train.milestones=[0.3, 0.6]", "data.root=~/data"])
    assert cfg.model.arch == "resnet18" and cfg.sparsity.density == 0.01 and cfg.train.milestones == [0.3, 0.6]
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(cfg.to_yaml())
    assert load_config(resolved) == cfg


def test_run_id_is_stable_and_ignores_the_run_section():
    a = load_config(None, ["seed=3"])
    assert a.run_id() == load_config(None, ["seed=3"]).run_id()
    assert a.run_id() == load_config(None, ["seed=3", "run.out_dir=/elsewhere", "run.device=cpu"]).run_id()
    assert a.run_id() != load_config(None, ["seed=4"]).run_id()
    assert len(a.run_id()) == 12
    # Explicit defaults hash like implicit ones: the id is a function of the resolved config.
    assert load_config(None, ["attack.eps=0.1"]).run_id() == Config().run_id()


@pytest.mark.parametrize(
    "override,field",
    [
        ("model.archh=mlp", "model.archh"),
        ("sparsity.density=1.2", "sparsity.density"),
        ("sparsity.density=0", "sparsity.density"),
        ("sparsity.p=1.5", "sparsity.p"),
        ("attack.eps=-0.1", "attack.eps"),
        ("model.arch=vgg99", "model.arch"),
        ("data.name=imagenet", "data.name"),
        ("train.milestones=[0.8, 0.2]", "train.milestones"),
        ("sparsity.allocation=explicit", "sparsity"),
        ("sparsity.layer_densities={body.0: 1.5}", "sparsity.layer_densities"),
        ("train.epochs=zero", "train.epochs"),
    ],
)
def test_bad_values_name_the_field_in_one_line(override, field):
    with pytest.raises(RbpError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "\n" not in message and message.startswith("config error: ") and field in message


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(RbpError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RbpError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(RbpError, match="mapping"):
        load_config(listy)
    with pytest.raises(RbpError, match="KEY=VALUE"):
        load_config(None, ["model.arch"])
    with pytest.raises(RbpError, match="not a section"):
        load_config(None, ["seed=1", "seed.x=2"])


def test_run_id_ignores_fields_at_their_default():
    """A new knob whose default keeps old behaviour must not change existing run ids."""
    from rbp.config.schema import _non_defaults

    cfg = load_config(None, ["seed=2", "model.arch=mlp"])
    body = _non_defaults(cfg, exclude={"run"})
    assert body["seed"] == 2 and body["model"] == {"arch": "mlp"}
    assert body["train"] == {"attack_bn": "train", "epochs": 20}  # resolved per method / data set; others default
    assert "eval" not in body
    assert load_config(None, ["seed=2", "model.arch=mlp", "train.epochs=20"]).run_id() == cfg.run_id()


@pytest.mark.parametrize(
    "overrides,expected",
    [([], "train"), (["train.method=trades"], "eval"), (["train.method=trades", "train.attack_bn=train"], "train")],
)
def test_trades_attacks_with_bn_in_eval_mode_unless_told(overrides, expected):
    assert load_config(None, overrides).train.attack_bn == expected


def test_evaluation_step_is_independent_of_the_training_attack(monkeypatch):
    """FGSM trains with step 1.25 eps; validation and test PGD-k still step 2.5 eps / k."""
    import rbp.training.trainer
    from rbp.training.trainer import Trainer

    seen = []
    monkeypatch.setattr(rbp.training.trainer, "accuracy", lambda *a, **k: seen.append(k["step_size"]) or {})
    cfg = load_config(None, ["train.method=fgsm", "model.arch=mlp", "model.width=8"])
    assert cfg.attack.step_size == pytest.approx(1.25 * 0.1)
    trainer = Trainer(cfg)
    trainer.evaluate("val", steps=10)
    trainer.evaluate("test", steps=20)
    assert seen == pytest.approx([2.5 * 0.1 / 10, 2.5 * 0.1 / 20])
    trainer.cfg.eval.step_scale = 1.0
    trainer.evaluate("test", steps=20)
    assert seen[-1] == pytest.approx(0.1 / 20)
