"""The versioned reference index on disk: vectors and who each row is.

One compressed npz per model version (`festive/weights/<engine>/reference.npz`):
- vectors: int8 codes + a float scale per row (dense models), or float16 CSR (sparse);
- per row: family, the builds it stands for (near-duplicates of one function across
  builds are merged into one row), function name, basic blocks, and its rarity (1 /
  the number of families that hold a near-identical function: shared code weighs less);
- per build: a label ("zlib 1.3.1 gcc-x86_64-O2"), architecture, and upstream version;
- a JSON header with the index version (sha256 of the content), sources and format.
The model that made the vectors is not in here: it is named (engine, weights sha256)
so that a query is never searched against another model's rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from festive.attribution.csr import Csr
from festive.attribution.search import Quantised, Reference

INDEX_FORMAT = "festive-index/2"


@dataclass
class ExtraBuild:
    """Rows of one more build to search beside an index's own (a reference a user added):
    unit vectors of its functions, their names and sizes, and who the build is."""

    label: str  # "acme 1.0 user:1c0ffee1234a"
    family: str  # an index family or a new one
    version: str
    arch: str
    vectors: np.ndarray  # float32 (n, d) unit rows
    names: list[str]  # function name (or address): with the family, its identity
    blocks: np.ndarray  # int per row


@dataclass
class ReferenceIndex:
    vectors: Reference  # Quantised (dense models) or Csr (sparse)
    families: list[str]  # family id -> name
    builds: list[str]  # build id -> label
    build_arch: list[str]  # build id -> architecture
    build_version: list[str]  # build id -> upstream version ("1.3.1")
    row_family: np.ndarray  # int16 per row
    row_builds: list[np.ndarray]  # int32 build ids per row (first = representative)
    row_name: list[str]
    row_blocks: np.ndarray  # int32 per row
    row_rarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.row_rarity) != len(self.row_name):
            self.row_rarity = np.ones(len(self.row_name), np.float32)

    @property
    def n_rows(self) -> int:
        return len(self.row_name)

    @property
    def version(self) -> str:
        return str(self.meta.get("index_version", ""))

    def row_build(self) -> np.ndarray:
        """Representative build of every row (the first one merged into it)."""
        return np.asarray([b[0] for b in self.row_builds], dtype=np.int32)

    def identities(self) -> np.ndarray:
        """An id per (family, function name): the unit of one-to-one matching."""
        seen: dict[tuple[int, str], int] = {}
        return np.asarray([seen.setdefault((int(f), n), len(seen))
                           for f, n in zip(self.row_family, self.row_name, strict=True)],
                          dtype=np.int64)

    def rows_of_builds(self, builds: np.ndarray) -> np.ndarray:
        """Bool mask of rows that stand for no build outside `builds` (bool per build)."""
        return np.asarray([bool(builds[b].all()) for b in self.row_builds], dtype=bool)

    def with_builds(self, extra: list[ExtraBuild], version: str) -> ReferenceIndex:
        """A new index: these rows after this index's own (rarity 1: no near-duplicate
        merging across them), under `version`. Dense (int8) indexes only."""
        if not isinstance(self.vectors, Quantised):
            raise TypeError("rows can be appended to a dense (int8) index only")
        families = list(self.families)
        family_id = {name: i for i, name in enumerate(families)}
        codes, scale = [self.vectors.codes], [self.vectors.scale]
        row_family, row_blocks = [self.row_family.astype(np.int16)], [self.row_blocks]
        row_builds, row_name = list(self.row_builds), list(self.row_name)
        builds, build_arch = list(self.builds), list(self.build_arch)
        build_version = list(self.build_version)
        for build in extra:
            rows = np.asarray(build.vectors, np.float32)
            if rows.ndim != 2 or rows.shape[1] != self.vectors.shape[1]:
                raise ValueError(f"{build.label}: vectors of shape {rows.shape}, expected "
                                 f"(n, {self.vectors.shape[1]})")
            if not (len(rows) == len(build.names) == len(build.blocks)):
                raise ValueError(f"{build.label}: vectors, names and blocks differ in length")
            fam = family_id.setdefault(build.family, len(families))
            if fam == len(families):
                families.append(build.family)
            build_id = len(builds)
            builds.append(build.label)
            build_arch.append(build.arch)
            build_version.append(build.version)
            quantised = Quantised.of(rows)
            codes.append(quantised.codes)
            scale.append(quantised.scale)
            row_family.append(np.full(len(rows), fam, np.int16))
            row_blocks.append(np.asarray(build.blocks, np.int32))
            row_builds += [np.asarray([build_id], np.int32)] * len(rows)
            row_name += list(build.names)
        n_extra = len(row_name) - self.n_rows
        return ReferenceIndex(
            Quantised(np.concatenate(codes), np.concatenate(scale)), families, builds,
            build_arch, build_version, np.concatenate(row_family), row_builds, row_name,
            np.concatenate(row_blocks),
            np.concatenate([self.row_rarity, np.ones(n_extra, np.float32)]),
            {**self.meta, "index_version": version},
        )

    # -- persistence -------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write deterministically; sets and returns meta["index_version"]."""
        arrays: dict[str, np.ndarray] = {
            "row_family": self.row_family.astype(np.int16),
            "row_blocks": self.row_blocks.astype(np.int32),
            "row_rarity": self.row_rarity.astype(np.float16),
            "row_builds_len": np.asarray([len(b) for b in self.row_builds], np.int32),
            "row_builds": (np.concatenate(self.row_builds).astype(np.int32)
                           if self.row_builds else np.zeros(0, np.int32)),
        }
        if isinstance(self.vectors, Quantised):
            arrays["codes"], arrays["scale"] = self.vectors.codes, self.vectors.scale
        elif isinstance(self.vectors, Csr):
            arrays["row_nnz"] = np.diff(self.vectors.indptr).astype(np.int32)
            arrays["indices"] = self.vectors.indices.astype(np.int32)
            arrays["data"] = self.vectors.data.astype(np.float16)
            arrays["n_cols"] = np.asarray([self.vectors.n_cols], np.int64)
        else:
            raise TypeError(f"cannot store vectors of type {type(self.vectors).__name__}")
        content = hashlib.sha256()
        for name in sorted(arrays):
            content.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
        body = {"families": self.families, "builds": self.builds,
                "build_arch": self.build_arch, "build_version": self.build_version,
                "row_name": self.row_name}
        content.update(json.dumps(body, sort_keys=True).encode())
        content.update(json.dumps({k: v for k, v in self.meta.items()
                                   if k != "index_version"}, sort_keys=True).encode())
        self.meta["index_version"] = content.hexdigest()[:16]
        header = {"format": INDEX_FORMAT, **body, "meta": self.meta}
        arrays["header"] = np.frombuffer(json.dumps(header, separators=(",", ":")).encode(),
                                         np.uint8)
        # a fixed zip timestamp: the same content gives the same bytes
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, member.getvalue())
        path.write_bytes(buf.getvalue())
        return self.version

    @classmethod
    def load(cls, path: Path) -> ReferenceIndex:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("format") != INDEX_FORMAT:
                raise ValueError(f"{path}: not a {INDEX_FORMAT} file "
                                 f"(found {header.get('format')!r}); rebuild it (make index)")
            vectors: Reference
            if "codes" in z:
                vectors = Quantised(z["codes"], z["scale"].astype(np.float32))
            else:
                indptr = np.zeros(len(z["row_nnz"]) + 1, dtype=np.int64)
                np.cumsum(z["row_nnz"], out=indptr[1:])
                vectors = Csr(indptr, z["indices"], z["data"].astype(np.float32),
                              int(z["n_cols"][0]))
            bounds = np.concatenate([[0], np.cumsum(z["row_builds_len"])])
            flat = z["row_builds"]
            row_builds = [flat[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
            return cls(vectors, header["families"], header["builds"], header["build_arch"],
                       header["build_version"], z["row_family"], row_builds,
                       header["row_name"], z["row_blocks"],
                       z["row_rarity"].astype(np.float32), header.get("meta", {}))
