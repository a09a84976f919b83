"""Figures are drawn without pyplot: importing and drawing them leaves the process's matplotlib backend alone."""

import json
import os
import subprocess
import sys

import yaml

# In a fresh interpreter: the backend the process chose (MPLBACKEND) before and after rbp drew figures
# into files, and whether pyplot (which would pick or switch a backend) was imported on the way.
DRAW = """
import json, sys
import matplotlib
before = matplotlib.rcParams["backend"]
from rbp.ablation.figures import write_figures
from rbp.ablation.jobs import load_spec
from rbp.results import read_results
spec = load_spec(sys.argv[1])
written = write_figures(spec, read_results(spec.folder / "rows"))
print(json.dumps({"before": before, "after": matplotlib.rcParams["backend"],
                  "pyplot": "matplotlib.pyplot" in sys.modules, "written": sorted(p.name for p in written)}))
"""


def test_drawing_figures_keeps_the_backend_and_never_imports_pyplot(tmp_path):
    spec = tmp_path / "spec.yaml"
    body = {"name": "t", "results": str(tmp_path / "out"), "seeds": [0], "studies": {"s": {"cells": [{"name": "a"}]}},
            "figures": [{"kind": "layer_densities", "name": "alloc"}]}  # fmt: skip
    spec.write_text(yaml.safe_dump(body))
    env = {**os.environ, "MPLBACKEND": "svg"}  # not the Agg that figures are saved with
    done = subprocess.run([sys.executable, "-c", DRAW, str(spec)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"before": "svg", "after": "svg", "pyplot": False, "written": ["alloc.pdf", "alloc.png"]}
