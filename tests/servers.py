"""A server a test starts on 127.0.0.1 (``mlflow models serve``, ``optuna-dashboard``), waited for and stopped."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], log: Path, health: str, timeout: float = 120) -> Iterator:
    """Run ``command`` until the block ends; enter once GET ``health`` answers 200 (fail if it exits first)."""
    server = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:  # until the server answers (a condition, polled), or gives up
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(health, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)


def request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    """GET (or POST ``body`` as JSON) ``url``: (status, the JSON answer; ``{"text": ...}`` if not JSON)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=60) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    try:
        return status, json.loads(text or b"{}")
    except ValueError:
        return status, {"text": text.decode(errors="replace")}
