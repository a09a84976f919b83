"""`rbp train --print-config` / `rbp config`: the resolved config, commented, loads back to the same run;
`rbp config --schema`: a JSON Schema that editors can check config files against."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from rbp.cli import main
from rbp.config.load import load_config

SET = ["--set", "model.arch=mlp", "--set", "train.method=trades", "--set", "sparsity.layer_densities={a: 0.5}"]
FIELD = re.compile(r"^\s*(\w+):")


def _out(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_print_config_loads_back_to_the_same_config_and_run_id(tmp_path, capsys):
    text = _out(["train", "--print-config", *SET, "--set", f"run.out_dir={tmp_path / 'runs'}"], capsys)
    (tmp_path / "config.yaml").write_text(text)
    given = load_config(None, [*SET[1::2], f"run.out_dir={tmp_path / 'runs'}"])
    again = load_config(tmp_path / "config.yaml")
    assert again == given and again.run_id() == given.run_id()
    assert _out(["train", "--config", str(tmp_path / "config.yaml"), "--print-config"], capsys) == text
    assert not (tmp_path / "runs").exists(), "--print-config trained"


def test_every_printed_field_is_under_its_description(capsys):
    lines = _out(["config", *SET], capsys).splitlines()
    fields = [i for i, line in enumerate(lines) if FIELD.match(line)]
    assert len(fields) > 60  # every field of every section
    for i in fields:
        assert lines[i - 1].lstrip().startswith("# "), f"{lines[i]!r} has no comment above it"
    text = "\n".join(lines)
    assert "# hidden activation (one of: relu, centered_softplus)\n  activation: relu" in text
    assert "layer_densities: {a: 0.5}" in text


def _schema(capsys) -> dict:
    return json.loads(_out(["config", "--schema"], capsys))


def test_schema_describes_every_section_and_field_and_forbids_unknown_keys(capsys):
    schema = _schema(capsys)
    assert schema["$schema"].startswith("https://json-schema.org/")
    sections = {"data", "model", "init", "sparsity", "attack", "train", "eval", "run"}
    assert sections | {"seed"} == set(schema["properties"]) and schema["additionalProperties"] is False
    for name, section in schema["$defs"].items():
        assert section["additionalProperties"] is False, name
        for field, spec in section["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    assert all(spec.get("description") for spec in schema["properties"].values())


def test_configs_validate_against_the_schema_and_a_typo_does_not(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_schema(capsys))
    validator.check_schema(validator.schema)
    validator.validate(load_config().to_dict())
    validator.validate(yaml.safe_load(_out(["config", *SET], capsys)))
    assert not validator.is_valid({"train": {"epoch": 3}})
    assert not validator.is_valid({"model": {"mode": "sparse"}})
    assert not validator.is_valid({"sparsity": {"density": 1.5}})
