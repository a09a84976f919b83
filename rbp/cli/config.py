"""``rbp config``: the resolved config with every field's description, or the JSON Schema of config files."""

from __future__ import annotations

import argparse
import json

from rbp.base.errors import RbpError
from rbp.cli.options import add_command, add_config_args


def _config(args: argparse.Namespace) -> int:
    from rbp.config.describe import commented_yaml, json_schema

    if args.schema:
        if args.config is not None or args.overrides:
            raise RbpError("--schema describes every config file; it takes no --config or --set")
        print(json.dumps(json_schema(), indent=2))
        return 0
    from rbp.config.load import load_config  # the architecture registry: torch, only when a config is resolved

    print(commented_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rbp config`` to the ``rbp`` parser's commands."""
    config = add_command(
        commands,
        "config",
        "print the resolved config, every key under its description (as rbp train --print-config), or its JSON Schema",
        [
            "rbp config --set data.name=fashion_mnist > fashion.yaml",
            "rbp config --schema > rbp-config.schema.json",
        ],
        details="Editors complete and check a config file against the schema: with the YAML language server\n"
        "(VS Code's YAML extension, among others), start the file with the line\n"
        "  # yaml-language-server: $schema=rbp-config.schema.json",
    )
    add_config_args(config)
    config.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of config files instead (for editors)"
    )
    config.set_defaults(handler=_config)
