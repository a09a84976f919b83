"""The config layer: the schema of every knob (:mod:`~rbp.config.schema`), its text forms (YAML and
``--set``, :mod:`~rbp.config.io`), and the loading that also checks what needs the architecture
registry (:mod:`~rbp.config.load`).

The schema's names are re-exported here (``rbp.config.schema.Config``): objects pickled before the
config became a package (a Ray experiment's state) still find their classes.
"""

from rbp.config.schema import (
    AttackConfig,
    Config,
    DataConfig,
    EvalConfig,
    InitConfig,
    ModelConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
)

__all__ = [
    "AttackConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "InitConfig",
    "ModelConfig",
    "RunConfig",
    "SparsityConfig",
    "TrainConfig",
]
