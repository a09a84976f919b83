"""Compact artefacts (``.rbpz``): a trained subnet stored as config + seed + masks + BN statistics.

The frozen ±s weights of a subnet are regenerated from ``(seed, layer name)`` (``rbp.nn.init``), so
a trained subnet is fully described by its resolved config, its masks and the state that training
changed besides the scores (the batch-norm running statistics). The file is a zip (stored, no
compression; written deterministically) with exactly three members, and never holds pickles:

- ``header.json``  format name + version, rbp version, run id, seed, the resolved config,
  ``data_info``, training metrics, one entry per subnet layer (name, shape, the layer's exact
  density float, kept count, mask encoding, Rice parameter, byte offset and length in
  ``masks.bin``), one entry per state tensor (name, dtype, shape, offset, length in
  ``state.bin``), and the length and sha256 of both blobs.
- ``masks.bin``    the layers' masks, one after another, each in the smaller of two encodings
  (:func:`encode_mask`): ``bitmap`` (``numpy.packbits``, 1 bit a weight) or Rice-coded gaps
  between the positions of the minority class (``rice-kept`` / ``rice-pruned``).
- ``state.bin``    every remaining state-dict tensor (BN ``running_mean``/``running_var`` float32,
  ``num_batches_tracked`` int64), raw little-endian, so outputs are bit-identical.

Loading builds the model from the config (the seed regenerates the frozen weights), sets each
subnet layer's ``scores`` to its 0/1 mask, so that the top-``kept`` selection picks exactly the
stored entries, and checks every layer's mask against the decoded one. Any inconsistency is one
:class:`RbpError` line naming the file, and no model is returned.

:func:`size_breakdown` is the one place where sizes are accounted (export, ``rbp info``, tables):
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rbp.artefacts.checkpoint import claims_digest
from rbp.config.schema import Config

FORMAT, VERSION = "rbpz", 2


SUFFIX = ".rbpz"


HEADER, MASKS, STATE = "header.json", "masks.bin", "state.bin"


MEMBERS = (HEADER, MASKS, STATE)


# numpy dtype (little-endian) of each state dtype the format stores.
DTYPES: dict[str, tuple[torch.dtype, str]] = {"float32": (torch.float32, "<f4"), "int64": (torch.int64, "<i8")}


# Zip structures per stored member (local header 30 B + central directory entry 46 B, each plus
# the name) and the end-of-central-directory record (22 B): what ``zipfile`` writes for small,
# stored members without extra fields or comments (tested against real files).
ZIP_PER_MEMBER, ZIP_END = 30 + 46, 22


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same model gives the same bytes


@dataclass
class Artefact:
    """An ``.rbpz`` in memory: the parsed header, its exact bytes, both blobs and what they decode to.

    ``masks``: layer name -> flat bool array (n,) with exactly ``kept`` set. ``tensors``: state
    name -> numpy array in native byte order, shaped as in the state dict.
    """

    header: dict[str, Any]
    header_bytes: bytes
    masks_blob: bytes
    state_blob: bytes
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    config: Config | None = None  # the header's config, validated

    def members(self) -> dict[str, bytes]:
        return {HEADER: self.header_bytes, MASKS: self.masks_blob, STATE: self.state_blob}


def header_digest(header: dict[str, Any]) -> str:
    """sha256 over everything the header says (claims, layer and tensor tables, the blobs' sha256), so
    an edit of any field that changes outputs or claims is caught; like every keyless digest it
    detects edits, not a forger who recomputes it."""
    body = {key: value for key, value in header.items() if key != "digest"}
    canonical = json.dumps({"claims": claims_digest(header), "body": body}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
