"""Every model committed under ``results/*/models/`` loads from the file alone and reproduces its row.

A model is loaded with :func:`rbp.load` from a folder where nothing else of the study exists (no run
folders, no dense checkpoint a HYDRA-style model was pruned from), then its clean accuracy on the
test split is compared with its table row, exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rbp
from rbp.ablation.jobs import jobs, load_spec, model_path
from rbp.data import Batches, load_splits
from rbp.evaluation import accuracy
from rbp.results import read_results

REPO = Path(__file__).resolve().parents[2]


def committed_models() -> list[tuple[Path, Path]]:
    """(spec, model) for every model file a spec in ``ablations/`` keeps."""
    found = []
    for spec_path in sorted((REPO / "ablations").glob("*.yaml")):
        spec = load_spec(spec_path)
        folder = REPO / spec.folder
        models = {model_path(folder, job) for job in jobs(spec) if job.seed == spec.seeds[0]}
        found += [(spec_path, model) for model in sorted(models) if model.is_file()]
    return found


def test_every_committed_model_file_belongs_to_a_spec():
    listed = {model for _, model in committed_models()}
    on_disk = set((REPO / "results").glob("*/models/*"))
    assert on_disk and on_disk <= listed


@pytest.mark.slow  # about 35 models, a clean pass over each test split
@pytest.mark.parametrize("spec_path, model", committed_models(), ids=lambda p: p.name)
def test_a_committed_model_loads_from_its_file_alone_and_reproduces_its_row(spec_path, model, tmp_path, monkeypatch):
    spec = load_spec(spec_path)
    first_seed = [job for job in jobs(spec) if job.seed == spec.seeds[0]]  # the seed whose model is kept
    (job,) = {job.run_id: job for job in first_seed if model_path(REPO / spec.folder, job) == model}.values()
    if job.config.data.name == "fashion_mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("the Fashion-MNIST files are not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.chdir(tmp_path)  # no relative path of the study (runs/, a dense best.pt) resolves here
    net = rbp.load(model)
    test = load_splits(job.config.data).test
    torch.manual_seed(0)
    clean = accuracy(net, Batches(test, 500), eps=0.0, step_size=0.0, steps=0)["clean_acc"]
    rows = read_results(REPO / spec.folder / "rows")
    assert clean == rows.loc[rows["run_id"] == job.run_id, "test_clean_acc"].iloc[0]
