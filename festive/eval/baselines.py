"""Baselines scored in the same run as FESTIVE v1, all on the same function list.

Each method exposes `score(query, candidates) -> similarities` (higher = more similar):
* mnemonic-hash: exact hash of the normalised mnemonic sequence (capstone), 1 or 0;
* opcode-hist: cosine of mnemonic histograms;
* tlsh / ssdeep: fuzzy hashes of the function's bytes (py-tlsh, ppdeep);
* v0: FESTIVE v0 (festive.v0 TF-IDF over VEX ops + bigrams + structure, cosine), its
  idf fitted on the evaluated functions themselves (unsupervised, no labels);
* v1: the trained GNN (dot product of unit embeddings).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from typing import Any

import numpy as np

from festive.data.corpus import Fn

CAPSTONE_MODES: dict[str, tuple[str, str]] = {
    "x86_64": ("CS_ARCH_X86", "CS_MODE_64"),
    "i686": ("CS_ARCH_X86", "CS_MODE_32"),
    "aarch64": ("CS_ARCH_ARM64", "CS_MODE_ARM"),
    "armhf": ("CS_ARCH_ARM", "CS_MODE_ARM"),  # Thumb when the address is odd
    "mipsel": ("CS_ARCH_MIPS", "CS_MODE_MIPS32"),
}


def mnemonics(arch: str, addr: str, code: bytes) -> list[str]:
    """Mnemonic sequence of the function's bytes (operands dropped = normalised)."""
    import capstone

    cs_arch, cs_mode = CAPSTONE_MODES[arch]
    mode = getattr(capstone, cs_mode)
    if arch == "armhf" and int(addr, 16) & 1:
        mode = capstone.CS_MODE_THUMB
    if arch == "mipsel":
        mode |= capstone.CS_MODE_LITTLE_ENDIAN
    md = capstone.Cs(getattr(capstone, cs_arch), mode)
    return [insn[2] for insn in md.disasm_lite(code, 0)]


def raw_features(func: dict[str, Any], lift: dict[str, Any]) -> dict[str, Any]:
    """What the byte/mnemonic baselines need from a lifted function (kept small)."""
    import ppdeep
    import tlsh

    from festive.features import FeatureConfig, function_tokens

    code = bytes.fromhex(func["bytes"])
    arch = lift["build"]["arch"]
    mnem = mnemonics(arch, func["addr"], code)
    return {
        "mnem_hash": hashlib.sha1(" ".join(mnem).encode()).hexdigest(),
        "mnem_hist": Counter(mnem),
        "tlsh": tlsh.hash(code) if len(code) >= 50 else "TNULL",
        "ssdeep": ppdeep.hash(code),
        "v0_bag": function_tokens(func, FeatureConfig()),
    }


def eval_features(func: dict[str, Any], lift: dict[str, Any]) -> dict[str, Any]:
    """Everything every method needs (module-level: `load` may run it in workers)."""
    from festive.v1.graph import to_graph

    out = raw_features(func, lift)
    out["graph"] = to_graph(func)
    return out


class Method:
    name = ""

    def score(self, query: int, candidates: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Dense(Method):
    """Unit vectors; similarity = dot product."""

    def __init__(self, name: str, matrix: np.ndarray):
        self.name = name
        self.matrix = matrix.astype(np.float32)

    def score(self, query: int, candidates: np.ndarray) -> np.ndarray:
        return self.matrix[candidates] @ self.matrix[query]


class ExactHash(Method):
    name = "mnemonic-hash"

    def __init__(self, fns: list[Fn]):
        ids: dict[str, int] = {}
        self.codes = np.asarray([ids.setdefault(f.data["mnem_hash"], len(ids)) for f in fns])

    def score(self, query: int, candidates: np.ndarray) -> np.ndarray:
        return (self.codes[candidates] == self.codes[query]).astype(np.float32)


def opcode_histograms(fns: list[Fn]) -> Dense:
    vocab: dict[str, int] = {}
    for f in fns:
        for m in f.data["mnem_hist"]:
            vocab.setdefault(m, len(vocab))
    matrix = np.zeros((len(fns), len(vocab)), dtype=np.float32)
    for i, f in enumerate(fns):
        for m, n in f.data["mnem_hist"].items():
            matrix[i, vocab[m]] = n
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)
    return Dense("opcode-hist", matrix)


class Tlsh(Method):
    name = "tlsh"

    def __init__(self, fns: list[Fn]):
        self.hashes = [f.data["tlsh"] for f in fns]

    def score(self, query: int, candidates: np.ndarray) -> np.ndarray:
        import tlsh

        q = self.hashes[query]
        if q == "TNULL":
            return np.full(len(candidates), -10_000.0, dtype=np.float32)
        out = np.empty(len(candidates), dtype=np.float32)
        for k, c in enumerate(candidates):
            h = self.hashes[c]
            out[k] = -10_000.0 if h == "TNULL" else -float(tlsh.diff(q, h))
        return out


class Ssdeep(Method):
    """ppdeep compare is pure Python: skip pairs whose block sizes cannot match (score 0)."""

    name = "ssdeep"

    def __init__(self, fns: list[Fn]):
        self.hashes = [f.data["ssdeep"] for f in fns]
        self.block = np.asarray([int(h.split(":", 1)[0]) for h in self.hashes])

    def score(self, query: int, candidates: np.ndarray) -> np.ndarray:
        import ppdeep

        q, qb = self.hashes[query], self.block[query]
        cb = self.block[candidates]
        ok = (cb == qb) | (cb == 2 * qb) | (2 * cb == qb)
        out = np.zeros(len(candidates), dtype=np.float32)
        for k in np.nonzero(ok)[0]:
            out[k] = ppdeep.compare(q, self.hashes[candidates[k]])
        return out


class V0(Method):
    """festive.v0's Vectoriser; sparse rows scored with torch sparse x dense per query."""

    name = "v0-tfidf"

    def __init__(self, fns: list[Fn]):
        import torch

        from festive.features import FeatureConfig
        from festive.v0 import Vectoriser

        bags = [f.data["v0_bag"] for f in fns]
        vec = Vectoriser.fit(bags, FeatureConfig())
        csr = vec.transform(bags)
        self.csr = csr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.matrix = torch.sparse_csr_tensor(
                torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices.astype(np.int64)),
                torch.from_numpy(csr.data), size=(csr.n_rows, csr.n_cols), dtype=torch.float32)
        self.cache: dict[int, np.ndarray] = {}

    def score(self, query: int, candidates: np.ndarray) -> np.ndarray:
        import torch

        if query not in self.cache:
            idx, val = self.csr.row(query)
            dense = torch.zeros(self.csr.n_cols, 1)
            dense[torch.from_numpy(idx.astype(np.int64)), 0] = torch.from_numpy(val)
            self.cache[query] = (self.matrix @ dense)[:, 0].numpy().astype(np.float16)
        return self.cache[query][candidates].astype(np.float32)
