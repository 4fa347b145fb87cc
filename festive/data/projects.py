"""Corpus A recipes: which Debian source packages we build, how, and which split each is in.

Only the library's own C files are compiled (no package build system): it is fast and
the same recipe works for every compiler and target. The split is by project, so no
function of a test project is ever seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Project:
    """One source package: where its library sources sit inside the unpacked tree."""

    name: str  # Debian source package name
    sources: tuple[str, ...]  # globs relative to the unpacked tree
    exclude: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    defines: tuple[str, ...] = ()
    # files written into a generated include dir: name -> content
    generated: dict[str, str] = field(default_factory=dict)
    # copies inside the generated dir: target name -> source path relative to tree
    copies: dict[str, str] = field(default_factory=dict)
    split: str = "train"


EXPAT_CONFIG = """
#define XML_NS 1
#define XML_DTD 1
#define XML_CONTEXT_BYTES 1024
#define XML_POOR_ENTROPY 1
#define HAVE_MEMMOVE 1
#define BYTEORDER 1234
"""

PROJECTS: tuple[Project, ...] = (
    # --- test: never seen in training or model selection
    Project("zlib", ("*.c",), split="test", defines=("HAVE_UNISTD_H", "HAVE_STDARG_H")),
    Project("expat", ("expat/lib/xml*.c",), split="test", includes=("expat/lib",),
            generated={"expat_config.h": EXPAT_CONFIG}),
    Project("lz4", ("lib/*.c",), split="test", includes=("lib",)),
    Project("libyaml", ("src/*.c",), split="test", includes=("include", "src"),
            defines=("YAML_VERSION_MAJOR=0", "YAML_VERSION_MINOR=2", "YAML_VERSION_PATCH=5",
                     'YAML_VERSION_STRING="0.2.5"')),
    Project("utf8proc", ("utf8proc.c",), split="test"),
    # --- validation: early stopping / model selection
    Project("bzip2", ("blocksort.c", "huffman.c", "crctable.c", "randtable.c", "compress.c",
                      "decompress.c", "bzlib.c"), split="val"),
    Project("zopfli", ("src/zopfli/*.c",), exclude=("src/zopfli/zopfli_bin.c",), split="val"),
    # --- train
    Project("lua5.4", ("src/*.c",), exclude=("src/lua.c", "src/luac.c"), includes=("src",),
            generated={"lua5.4-deb-multiarch.h": '#define DEB_HOST_MULTIARCH "linux-gnu"\n'}),
    Project("libtommath", ("bn_*.c",), includes=(".",)),
    Project("brotli", ("c/common/*.c", "c/dec/*.c", "c/enc/*.c"), includes=("c/include",)),
    # Defined but not in the default build (DEFAULT_PROJECTS): compile+lift cost here.
    Project("libzstd", ("lib/common/*.c", "lib/compress/*.c", "lib/decompress/*.c"),
            includes=("lib", "lib/common"), defines=("ZSTD_DISABLE_ASM",)),
    Project("libdeflate", ("lib/*.c", "lib/x86/*.c", "lib/arm/*.c"), includes=(".",)),
    Project("mbedtls", ("library/*.c",), includes=("include", "library")),
    Project("pcre2", ("src/pcre2_*.c",),
            exclude=("src/pcre2_jit_*.c", "src/pcre2_dftables.c", "src/pcre2_fuzzsupport.c",
                     "src/pcre2_printint.c", "src/pcre2_ucptables.c", "src/pcre2demo.c"),
            includes=("src",),
            defines=("HAVE_CONFIG_H", "PCRE2_CODE_UNIT_WIDTH=8", "SUPPORT_UNICODE"),
            copies={"config.h": "src/config.h.generic", "pcre2.h": "src/pcre2.h.generic",
                    "pcre2_chartables.c": "src/pcre2_chartables.c.dist"}),
    Project("xxhash", ("xxhash.c",), includes=(".",)),
)

BY_NAME = {p.name: p for p in PROJECTS}

# Target triples and the GNU cross toolchain prefix for each architecture.
ARCHES: dict[str, tuple[str, str]] = {
    "x86_64": ("x86_64-linux-gnu", ""),
    "i686": ("i686-linux-gnu", "i686-linux-gnu-"),
    "aarch64": ("aarch64-linux-gnu", "aarch64-linux-gnu-"),
    "armhf": ("arm-linux-gnueabihf", "arm-linux-gnueabihf-"),
    "mipsel": ("mipsel-linux-gnu", "mipsel-linux-gnu-"),
}
COMPILERS = ("gcc", "clang")
OPTS = ("O0", "O1", "O2", "O3", "Os")

# Build order: most diverse configurations first, so a corpus cut short by time still
# spans compilers, architectures and optimisation levels. (The rest of the full
# matrix follows; `--configs` picks a prefix or any other list.)
PRIORITY_CONFIGS = (
    "gcc-x86_64-O0", "gcc-x86_64-O2", "gcc-aarch64-O2", "clang-x86_64-O2", "gcc-armhf-O2",
    "gcc-i686-O2", "gcc-mipsel-O2", "clang-aarch64-O2", "gcc-aarch64-O0", "clang-x86_64-O0",
    "gcc-armhf-O0", "gcc-i686-O0", "gcc-mipsel-O0", "clang-armhf-O2", "clang-i686-O2",
    "clang-mipsel-O2", "clang-aarch64-O0", "clang-armhf-O0", "clang-i686-O0", "clang-mipsel-O0",
)


def all_configs() -> list[str]:
    """PRIORITY_CONFIGS, then the rest of compilers x arches x opts."""
    rest = [f"{c}-{a}-{o}" for o in OPTS for a in ARCHES for c in COMPILERS]
    return list(PRIORITY_CONFIGS) + [c for c in rest if c not in PRIORITY_CONFIGS]

# xxhash is vendored inside lz4 (a test project): never train on it.
SLOW_OR_LEAKY = ("libzstd", "mbedtls", "xxhash")
DEFAULT_PROJECTS = tuple(p.name for p in PROJECTS if p.name not in SLOW_OR_LEAKY)
