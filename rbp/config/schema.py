"""One validated config for a run: every public knob, its defaults, and a stable run id.

A config is built from defaults, then a YAML file, then ``--set a.b=c`` overrides
(:mod:`rbp.config.load`). Fields whose default depends on the data set (eps, step size, validation
fraction, augmentation) or on the model mode (init scheme) are ``None`` until the validators fill
them, so the resolved config written to a run folder is fully concrete and its hash identifies the
run. The checks that need the architecture registry live in :mod:`rbp.config.load`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

DatasetName = Literal["digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"]


InitScheme = Literal["binary", "signed_kaiming", "signed_kaiming_density", "scaled", "kaiming_normal", "pretrained"]


# Threat-model defaults per data set: (eps, step size), pixel units in [0, 1].
_ATTACK_DEFAULTS = {
    "digits": (0.1, 0.025),
    # Fashion-MNIST's usual eps (MNIST's usual is 0.3: set attack.eps), step 2.5 * eps / 10 as for digits.
    "fashion_mnist": (0.1, 0.025),
    "mnist": (0.1, 0.025),
    "cifar10": (8 / 255, 2 / 255),
    "svhn": (8 / 255, 2 / 255),
    "cifar100": (4 / 255, 1 / 255),
    "synthetic": (8 / 255, 2 / 255),
}


# Per data set, defaults of the fields a config leaves unset: the recipe of the default conv net on
# 2 CPU cores, chosen and timed in bench/RESULTS.md. ``model.width`` applies to the conv net only (other
# architectures keep their own).
_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"model.width": 64, "train.epochs": 20},
    **{name: {"model.width": 16, "train.epochs": 3} for name in ("fashion_mnist", "mnist")},
}


# (classes, (C, H, W)) of the file-backed data sets: what the loaders report, known without reading them.
DATA_SHAPES = {
    "digits": (10, (1, 8, 8)),
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
    "svhn": (10, (3, 32, 32)),
    "fashion_mnist": (10, (1, 28, 28)),
    "mnist": (10, (1, 28, 28)),
}


def data_shape(cfg: DataConfig) -> tuple[int, tuple[int, int, int]]:
    """(number of classes, (C, H, W)) of the configured data set, without reading its files.

    Enough to build a model's layers (e.g. to size a baseline) on a machine without the data.
    """
    if cfg.name == "synthetic":
        return cfg.synthetic_classes, tuple(cfg.synthetic_shape)
    return DATA_SHAPES[cfg.name]


class _Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are re-validated, floats are
    finite, and a boolean is no integer (pydantic would read ``epochs: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _is_number(annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _is_number(annotation: Any) -> bool:
    """``int``, ``float`` or an optional / union of them (not ``bool``, not a Literal)."""
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    return get_origin(annotation) in (Union, UnionType) and any(a in (int, float) for a in args) and bool not in args


class DataConfig(_Section):
    name: DatasetName = Field("digits", description="data set; digits is bundled, the others read data.root")
    root: Path | None = Field(
        None, description="folder of the data set files; fashion_mnist: /usr/share/datasets/fashion-mnist if unset"
    )
    download: bool = Field(False, description="download into root when missing (needs network)")
    val_fraction: float | None = Field(None, ge=0.0, lt=0.5, description="held out of train for model selection")
    augment: bool | None = Field(None, description="random crop (pad 4) + horizontal flip; default on for CIFAR")
    batch_size: int = Field(128, gt=0, description="training batch size")
    eval_batch_size: int = Field(500, gt=0, description="batch size of validation and test evaluation")
    split_seed: int = Field(0, description="seed of the train/val/test split, independent of the run seed")
    synthetic_shape: tuple[int, int, int] = Field((3, 32, 32), description="synthetic: [channels, height, width]")
    synthetic_classes: int = Field(10, ge=2, description="synthetic: number of classes")
    synthetic_size: int = Field(1024, gt=0, description="synthetic: training images (the test split has a fifth)")

    @field_validator("synthetic_shape")
    @classmethod
    def _positive_shape(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(shape) < 1:
            raise ValueError("must be [channels, height, width], each at least 1, e.g. [3, 32, 32]")
        return shape

    @model_validator(mode="after")
    def _data_set_defaults(self) -> DataConfig:
        """Concrete defaults that depend on the data set (validate_assignment re-enters: use __dict__)."""
        if self.val_fraction is None:
            self.__dict__["val_fraction"] = 0.1 if self.name == "digits" else 0.02
        if self.augment is None:
            self.__dict__["augment"] = self.name in ("cifar10", "cifar100")
        return self


class ModelConfig(_Section):
    arch: str = Field("convnet", description="architecture: mlp, convnet, resnet18, resnet34, resnet50, wrn34_10")
    mode: Literal["subnet", "binary", "dense", "adder"] = Field(
        "subnet",
        description="subnet: fixed ±s weights, trained scores pick the kept ones; binary: BNN (sign + STE); "
        "dense: full precision; adder: AdderNet (-L1 layers)",
    )
    width: int | None = Field(
        None,
        gt=0,
        description="None: the architecture's default (or the data set's recipe for convnet). "
        "mlp: hidden units (256); convnet: channels of the first conv, the second has twice as many (32); "
        "resnet*: channels of the first stage, doubled at each stage (64); wrn34_10: the widen factor (10)",
    )
    last_bn: Literal["none", "nonaffine", "lipschitz"] = Field("nonaffine", description="BN over the logits")
    activation: Literal["relu", "centered_softplus"] = Field("relu", description="hidden activation")
    norm: Literal["batchnorm", "lipschitz"] = Field("batchnorm", description="hidden BNs; lipschitz caps their gain")
    spectral_norm: bool = Field(False, description="spectrally normalised conv/linear weights (dense mode)")
    stem: Literal["cifar", "imagenet"] = Field(
        "cifar", description="resnet* first layer: cifar 3x3 conv; imagenet 7x7 stride-2 conv + max pool"
    )


class InitConfig(_Section):
    scheme: InitScheme | None = Field(None, description="None: binary for subnet/binary, else kaiming_normal")
    alpha: float = Field(1.0, gt=0, description="multiplier of the 'scaled' scheme")
    score_scale: float = Field(0.01, gt=0, description="scores start as U(-a, a)")
    score_fan_in: bool = Field(False, description="divide the score scale by sqrt(fan_in)")
    pretrained: Path | None = Field(None, description="scheme 'pretrained': a dense checkpoint whose weights are kept")


class SparsityConfig(_Section):
    density: float = Field(0.1, gt=0.0, le=1.0, description="global kept fraction K in (0, 1]")
    allocation: Literal["adaptive", "uniform", "erk", "explicit"] = Field(
        "adaptive", description="how the global density is split over the layers (explicit: layer_densities)"
    )
    p: float = Field(0.1, ge=0.0, le=1.0, description="adaptive exponent: layer i keeps c * n_i**p weights")
    layer_densities: dict[str, float] | None = Field(None, description="explicit per-layer densities")

    @field_validator("layer_densities")
    @classmethod
    def _densities_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, density in (value or {}).items():
            if not 0.0 < density <= 1.0:
                raise ValueError(f"density of layer {name!r} must be in (0, 1], got {density}")
        return value

    @model_validator(mode="after")
    def _explicit_needs_dict(self) -> SparsityConfig:
        if self.allocation == "explicit" and not self.layer_densities:
            raise ValueError("allocation 'explicit' needs layer_densities: {layer name: density}")
        return self


class AttackConfig(_Section):
    """The threat model: used to train (pgd, fgsm, trades) and to evaluate."""

    norm: Literal["linf", "l2"] = Field("linf", description="norm of the threat model's ball")
    eps: float | None = Field(None, ge=0.0, description="radius in pixel units ([0, 1] images)")
    step_size: float | None = Field(
        None, gt=0.0, description="training attack step in pixel units; None: the data set's (fgsm: 1.25 * eps)"
    )
    steps: int = Field(10, ge=1, description="PGD steps of the training attack (fgsm takes one)")
    random_start: bool = Field(True, description="start the training attack at a random point of the ball")
    best_loss: bool = Field(False, description="return the iterate with the highest loss, not the last")


class TrainConfig(_Section):
    method: Literal["pgd", "fgsm", "trades", "clean"] = Field(
        "pgd", description="adversarial training: PGD-AT, FGSM with random start, TRADES, or none (clean)"
    )
    trades_beta: float = Field(6.0, ge=0.0, description="TRADES weight of the robustness (KL) term")
    attack_bn: Literal["train", "eval"] | None = Field(
        None,
        description="BN mode while the training attack runs; None: eval for trades (as published), train otherwise",
    )
    epochs: int = Field(15, ge=1, description="training epochs (digits and MNIST-likes: their recipe's if unset)")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="optimizer of the scores (or weights)")
    lr: float = Field(0.1, gt=0.0, description="initial learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD with Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0.0, description="L2 weight decay")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="learning-rate schedule")
    milestones: list[float] = Field([0.5, 0.75], description="step schedule: fractions of the epochs")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: lr factor at each milestone")
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="autocast dtype of training steps (fp16: scaled)")
    channels_last: bool = Field(False, description="channels-last memory format for model and images")
    adder_eta: float = Field(0.1, gt=0.0, description="AdderNet's adaptive lr: adder weight grads scaled to eta·√k")
    curvature_penalty: float = Field(0.0, ge=0.0, description="weight of sum(b) + sum(|log gamma|) (LCNN: 0.01)")
    grad_norm_penalty: float = Field(0.0, ge=0.0, description="weight of the mean ||dCE/dx||^2 penalty")
    compile: bool = Field(False, description="torch.compile the model for training steps (masks stay eager)")
    cuda_graph: bool = Field(
        False, description="capture the whole training step in a CUDA graph and replay it (GPU; eager on the CPU)"
    )

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _graphable(self) -> TrainConfig:
        if self.cuda_graph and self.amp == "fp16":
            raise ValueError("train.cuda_graph cannot capture fp16 loss scaling (it syncs with the host); use amp bf16")
        return self

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in value) or value != sorted(value):
            raise ValueError("milestones must be increasing fractions of the epochs in (0, 1)")
        return value


class EvalConfig(_Section):
    """Validation and test attacks: their own step size, independent of the training attack's."""

    step_scale: float = Field(
        2.5, gt=0.0, description="PGD step of validation and test attacks = step_scale * eps / steps (Madry et al.)"
    )
    val_pgd_steps: int = Field(10, ge=1, description="PGD steps on the validation split, picks the best checkpoint")
    test_pgd_steps: int = Field(20, ge=1, description="PGD steps on the test split (the reported robust accuracy)")
    test_restarts: int = Field(1, ge=1, description="random restarts of the test PGD attack")
    autoattack: bool = Field(False, description="run AutoAttack (standard) on the test split after training")
    autoattack_samples: int | None = Field(None, gt=0, description="evaluate AutoAttack on the first N test images")


class RunConfig(_Section):
    """Where and how to run; not part of the run id (the same experiment on another machine)."""

    out_dir: Path = Field(Path("runs"), description="a run is written to out_dir/<run id>")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    progress: bool = Field(True, description="a progress bar per epoch")
    data_on_device: bool = Field(False, description="keep the training split on the device (GPU-resident data)")
    deterministic: bool = Field(
        False,
        description="deterministic torch algorithms, cuDNN and cuBLAS: a GPU run repeatable bit for bit, "
        "slower; false lets cuDNN pick its fastest algorithms",
    )


class Config(_Section):
    """One run of rbp train: every public knob; unset fields take their defaults."""

    seed: int = Field(0, description="run seed: weights, scores, batch order, attack starts (split: data.split_seed)")
    data: DataConfig = Field(DataConfig(), description="the data set and its batches")
    model: ModelConfig = Field(ModelConfig(), description="the architecture and its kind of weights")
    init: InitConfig = Field(InitConfig(), description="initial weights and scores")
    sparsity: SparsityConfig = Field(SparsityConfig(), description="how many weights each layer keeps")
    attack: AttackConfig = Field(AttackConfig(), description="the threat model: trains and evaluates")
    train: TrainConfig = Field(TrainConfig(), description="the training recipe")
    eval: EvalConfig = Field(EvalConfig(), description="validation (model selection) and test attacks")
    run: RunConfig = Field(RunConfig(), description="where and how it runs; not part of the run id")

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Config:
        """Fill data-set and mode dependent defaults, so the config is concrete."""
        for dotted, value in _RECIPE_DEFAULTS.get(self.data.name, {}).items():
            section, field = dotted.split(".")
            if dotted == "model.width" and self.model.arch != "convnet":
                continue
            if field not in getattr(self, section).model_fields_set:  # a value given, even the default, wins
                getattr(self, section).__dict__[field] = value
        eps, step = _ATTACK_DEFAULTS[self.data.name]
        # Assign through __dict__: validate_assignment would re-enter this validator.
        attack = self.attack.__dict__
        if attack["eps"] is None:
            attack["eps"] = eps
        if attack["step_size"] is None:
            scale = attack["eps"] / eps if eps else 1.0
            attack["step_size"] = 1.25 * attack["eps"] if self.train.method == "fgsm" else step * scale
        if self.train.attack_bn is None:
            self.train.__dict__["attack_bn"] = "eval" if self.train.method == "trades" else "train"
        real = self.model.mode in ("dense", "adder")  # full-precision weights
        if self.init.scheme is None:
            self.init.__dict__["scheme"] = "kaiming_normal" if real else "binary"
        mode, scheme = self.model.mode, self.init.scheme
        if not real and scheme == "kaiming_normal":
            raise ValueError("init.scheme kaiming_normal is for dense/adder models; binary/subnet weights are ±s")
        if real and scheme != "kaiming_normal":
            raise ValueError(f"init.scheme {scheme} is not for {mode} models; they use kaiming_normal")
        if mode == "adder" and self.model.last_bn == "none":
            raise ValueError("model.last_bn none: adder logits are -L1 distances and need a batch norm (AdderNet)")
        if scheme == "pretrained" and (mode != "subnet" or self.init.pretrained is None):
            raise ValueError("init.scheme pretrained (HYDRA-style) needs model.mode=subnet and init.pretrained=CKPT")
        if self.model.spectral_norm and mode != "dense":
            raise ValueError("model.spectral_norm is for dense models (subnet/binary weights are fixed ±s)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe nested dict (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")

    def run_id(self) -> str:
        """12 hex digits identifying the experiment: a hash of the resolved config but where it runs.

        Left out: the ``run`` section and where the data lives (``data.root``, ``data.download``),
        so the same experiment on another machine or cluster has the same id.

        Fields equal to their declared default are left out of the hash, so adding a new knob
        (with a default that keeps the old behaviour) leaves every existing run id unchanged.
        """
        canonical = json.dumps(_non_defaults(self, exclude=_NOT_IN_RUN_ID), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{_RUN_ID_VERSION}:{canonical}".encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Bumped when a default or the meaning of a field changes, so that results computed under the old
# meaning never pass for new ones (2: evaluation step eval.step_scale, TRADES attack_bn eval, recipe).
_RUN_ID_VERSION = 2


_NOT_IN_RUN_ID = frozenset({"run", "data.root", "data.download"})


def _non_defaults(section: BaseModel, exclude: frozenset[str] = frozenset(), prefix: str = "") -> dict[str, Any]:
    """The section's fields (JSON-safe) whose value differs from the field's declared default.

    ``exclude`` holds dotted paths (from the top section) left out entirely.
    """
    values = section.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        if f"{prefix}{name}" in exclude:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            nested = _non_defaults(value, exclude, f"{prefix}{name}.")
            if nested:
                out[name] = nested
        elif values[name] != _json_default(field):
            out[name] = values[name]
    return out


def _json_default(field: Any) -> Any:
    default = field.get_default(call_default_factory=True)
    return json.loads(json.dumps(default, default=str)) if not isinstance(default, tuple) else list(default)
