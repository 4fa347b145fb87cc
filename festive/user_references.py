"""References users add: the vectors blob a reference workflow writes, and the set the
engine searches beside the shipped index.

A reference's blob is an npz (no pickles): its considered functions' unit vectors as
float16, their names (or addresses, when the binary names none), basic blocks, the
binary's architecture, and the sha256 of the weights that made the vectors (a query is
never searched against another model's rows). Its labels (family, version) are not in
the blob: they live in the database, so a relabel needs no new blob, and reach the
engine with the set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from festive import npz

VECTORS_FORMAT = "festive-user-reference/1"


@dataclass
class ReferenceVectors:
    vectors: np.ndarray  # float32 (n, d) unit rows
    names: list[str]
    blocks: np.ndarray  # int32 (n,)
    arch: str
    weights_sha256: str


def encode(ref: ReferenceVectors) -> bytes:
    """The npz bytes of one reference."""
    header = {"names": ref.names, "arch": ref.arch, "weights_sha256": ref.weights_sha256}
    return npz.pack(VECTORS_FORMAT, header, vectors=np.asarray(ref.vectors, np.float16),
                    blocks=np.asarray(ref.blocks, np.int32))


def decode(data: bytes) -> ReferenceVectors:
    header, arrays = npz.unpack(data, VECTORS_FORMAT)
    return ReferenceVectors(arrays["vectors"].astype(np.float32), list(header["names"]),
                            arrays["blocks"].astype(np.int32), str(header["arch"]),
                            str(header["weights_sha256"]))


@dataclass(frozen=True)
class ActiveReference:
    """One entry of the set: who the reference is and where its vectors are."""

    sha256: str
    family: str
    version: str
    vectors_sha256: str


@dataclass
class ReferenceSet:
    """The references to search beside the shipped index, and how to read their blobs
    (called only when the engine has not loaded this set yet)."""

    references: list[ActiveReference]
    read_blob: Callable[[str], bytes]

    def labels(self) -> list[tuple[str, str, str]]:
        """What the index version is computed from (festive.card.index_version)."""
        return [(r.sha256, r.family, r.version) for r in self.references]
