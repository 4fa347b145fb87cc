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
    split: str = "train"  # train | val | test | reference (reference corpus only)
    # shell command run once in the unpacked tree before the first build (configure,
    # amalgamation); its output files are then named in `sources`/`includes`
    prepare: str = ""


EXPAT_CONFIG = """
#define XML_NS 1
#define XML_DTD 1
#define XML_CONTEXT_BYTES 1024
#define XML_POOR_ENTROPY 1
#define HAVE_MEMMOVE 1
#define BYTEORDER 1234
"""

JANSSON_CONFIG = """
#define JSON_INLINE inline
#define JSON_INTEGER_IS_LONG_LONG 1
#define JSON_HAVE_LOCALECONV 1
#define JSON_HAVE_ATOMIC_BUILTINS 1
#define JSON_HAVE_SYNC_BUILTINS 1
#define JSON_PARSER_MAX_DEPTH 2048
"""

JANSSON_PRIVATE_CONFIG = """
#define HAVE_STDINT_H 1
#define HAVE_UNISTD_H 1
#define HAVE_FCNTL_H 1
#define HAVE_SCHED_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_TIME_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_OPEN 1
#define HAVE_CLOSE 1
#define HAVE_READ 1
#define HAVE_GETPID 1
#define HAVE_GETTIMEOFDAY 1
#define HAVE_SCHED_YIELD 1
#define HAVE_ATOMIC_BUILTINS 1
#define HAVE_SYNC_BUILTINS 1
#define HAVE_LOCALE_H 1
#define HAVE_SETLOCALE 1
#define USE_URANDOM 1
#define INITIAL_HASHTABLE_ORDER 3
"""

# version.h.in filled in (configure would write it next to the other sodium headers)
SODIUM_VERSION = """
#ifndef sodium_version_H
#define sodium_version_H
#include "export.h"
#define SODIUM_VERSION_STRING "1.0.18"
#define SODIUM_LIBRARY_VERSION_MAJOR 10
#define SODIUM_LIBRARY_VERSION_MINOR 3
SODIUM_EXPORT const char *sodium_version_string(void);
SODIUM_EXPORT int sodium_library_version_major(void);
SODIUM_EXPORT int sodium_library_version_minor(void);
SODIUM_EXPORT int sodium_library_minimal(void);
#endif
"""

# No Ogg container, no asm/intrinsics: the same portable C on every target.
FLAC_CONFIG = """
#define FLAC__HAS_OGG 0
#define FLAC__NO_ASM 1
#define FLAC__HAS_X86INTRIN 0
#define FLAC__HAS_NEONINTRIN 0
#define FLAC__HAS_A64NEONINTRIN 0
#define ENABLE_64_BIT_WORDS 1
#define HAVE_STDINT_H 1
#define HAVE_INTTYPES_H 1
#define HAVE_LROUND 1
#define HAVE_FSEEKO 1
#define HAVE_BSWAP32 1
#define HAVE_BSWAP16 1
#define HAVE_BYTESWAP_H 1
#define HAVE_SYS_PARAM_H 1
#define PACKAGE_VERSION "1.4.2"
#define _FILE_OFFSET_BITS 64
"""

# liblzma's config.h (what configure writes on glibc targets); the size of size_t comes
# from the compiler so one file serves 32- and 64-bit targets.
XZ_CONFIG = """
#define HAVE_CHECK_CRC32 1
#define HAVE_CHECK_CRC64 1
#define HAVE_CHECK_SHA256 1
#define HAVE_DECODERS 1
#define HAVE_ENCODERS 1
#define HAVE_DECODER_ARM 1
#define HAVE_DECODER_ARM64 1
#define HAVE_DECODER_ARMTHUMB 1
#define HAVE_DECODER_DELTA 1
#define HAVE_DECODER_IA64 1
#define HAVE_DECODER_LZMA1 1
#define HAVE_DECODER_LZMA2 1
#define HAVE_DECODER_POWERPC 1
#define HAVE_DECODER_SPARC 1
#define HAVE_DECODER_X86 1
#define HAVE_ENCODER_ARM 1
#define HAVE_ENCODER_ARM64 1
#define HAVE_ENCODER_ARMTHUMB 1
#define HAVE_ENCODER_DELTA 1
#define HAVE_ENCODER_IA64 1
#define HAVE_ENCODER_LZMA1 1
#define HAVE_ENCODER_LZMA2 1
#define HAVE_ENCODER_POWERPC 1
#define HAVE_ENCODER_SPARC 1
#define HAVE_ENCODER_X86 1
#define HAVE_MF_BT2 1
#define HAVE_MF_BT3 1
#define HAVE_MF_BT4 1
#define HAVE_MF_HC3 1
#define HAVE_MF_HC4 1
#define HAVE_LZIP_DECODER 1
#define HAVE_MICROLZMA 1
#define HAVE_INTTYPES_H 1
#define HAVE_STDBOOL_H 1
#define HAVE_STDINT_H 1
#define HAVE__BOOL 1
#define HAVE_VISIBILITY 1
#define HAVE_CLOCK_GETTIME 1
#define HAVE_DECL_CLOCK_MONOTONIC 1
#define HAVE_PTHREAD_CONDATTR_SETCLOCK 1
#define MYTHREAD_POSIX 1
#define TUKLIB_CPUCORES_SCHED_GETAFFINITY 1
#define TUKLIB_PHYSMEM_SYSCONF 1
#define TUKLIB_SYMBOL_PREFIX lzma_
#define ASSUME_RAM 128
#define PACKAGE_NAME "XZ Utils"
#define PACKAGE_URL "https://tukaani.org/xz/"
#define SIZEOF_SIZE_T __SIZEOF_SIZE_T__
#define _GNU_SOURCE 1
"""

# freetype's library is one C file per module (the "single object" build)
FREETYPE_SOURCES = tuple(f"src/{m}" for m in (
    "base/ftsystem.c", "base/ftinit.c", "base/ftdebug.c", "base/ftbase.c", "base/ftbbox.c",
    "base/ftbdf.c", "base/ftbitmap.c", "base/ftcid.c", "base/ftfstype.c", "base/ftgasp.c",
    "base/ftglyph.c", "base/ftgxval.c", "base/ftmm.c", "base/ftotval.c", "base/ftpatent.c",
    "base/ftpfr.c", "base/ftstroke.c", "base/ftsynth.c", "base/fttype1.c", "base/ftwinfnt.c",
    "autofit/autofit.c", "bdf/bdf.c", "cff/cff.c", "cid/type1cid.c", "gzip/ftgzip.c",
    "lzw/ftlzw.c", "pcf/pcf.c", "pfr/pfr.c", "psaux/psaux.c", "pshinter/pshinter.c",
    "psnames/psnames.c", "raster/raster.c", "sfnt/sfnt.c", "smooth/smooth.c",
    "truetype/truetype.c", "type1/type1.c", "type42/type42.c", "winfonts/winfnt.c"))

PROJECTS: tuple[Project, ...] = (
    # --- test: never seen in training or model selection
    Project("zlib", ("*.c",), split="test", defines=("HAVE_UNISTD_H", "HAVE_STDARG_H")),
    # HAVE_EXPAT_CONFIG_H: expat before 2.4 includes expat_config.h only when it is set
    Project("expat", ("expat/lib/xml*.c",), split="test", includes=("expat/lib",),
            defines=("HAVE_EXPAT_CONFIG_H",), generated={"expat_config.h": EXPAT_CONFIG}),
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
    Project("cjson", ("cJSON.c", "cJSON_Utils.c")),
    Project("giflib", ("dgif_lib.c", "egif_lib.c", "gifalloc.c", "gif_err.c", "gif_font.c",
                       "gif_hash.c", "openbsd-reallocarray.c", "quantize.c")),
    # dict.c is #included by async.c (static functions)
    Project("hiredis", ("*.c",), exclude=("dict.c",)),
    Project("http-parser", ("http_parser.c",)),
    Project("jansson", ("src/*.c",), includes=("src",), defines=("HAVE_CONFIG_H",),
            generated={"jansson_config.h": JANSSON_CONFIG,
                       "jansson_private_config.h": JANSSON_PRIVATE_CONFIG}),
    Project("lmdb", ("libraries/liblmdb/mdb.c", "libraries/liblmdb/midl.c"),
            includes=("libraries/liblmdb",)),
    # lzo_util.c/lzo_crc.c: adler32/crc32 adapted from zlib (a test project)
    Project("lzo2", ("src/*.c",), exclude=("src/lzo_util.c", "src/lzo_crc.c"),
            includes=("include", "src")),
    # one.c #includes every other file; main.c and pp.c are programs
    Project("mujs", ("js*.c", "regexp.c", "utf.c"), includes=(".",)),
    # LTC_SOURCE as its makefile sets it (internal pk declarations); no math provider
    Project("libtomcrypt", ("src/*/*.c", "src/*/*/*.c", "src/*/*/*/*.c", "src/*/*/*/*/*.c"),
            includes=("src/headers",), defines=("LTC_SOURCE",)),
    Project("libsodium", ("src/libsodium/*/*.c", "src/libsodium/*/*/*.c",
                          "src/libsodium/*/*/*/*.c", "src/libsodium/*/*/*/*/*.c"),
            includes=("src/libsodium/include/sodium", "src/libsodium/include/sodium/private"),
            defines=("CONFIGURED", "NATIVE_LITTLE_ENDIAN", "HAVE_INLINE_ASM=0"),
            generated={"version.h": SODIUM_VERSION}),
    # the SIMD dsp files compile to nothing where their ISA is absent
    Project("libwebp", ("src/dec/*.c", "src/demux/*.c", "src/dsp/*.c", "src/enc/*.c",
                        "src/mux/*.c", "src/utils/*.c"), includes=(".",)),
    Project("flac", ("src/libFLAC/*.c",), exclude=("src/libFLAC/ogg_*.c",),
            includes=("include", "src/libFLAC/include"), defines=("HAVE_CONFIG_H",),
            generated={"config.h": FLAC_CONFIG}),
    # float build, no SIMD/intrinsics (their dirs are not globbed)
    Project("opus", ("celt/*.c", "silk/*.c", "silk/float/*.c", "src/*.c"),
            exclude=("celt/opus_custom_demo.c", "src/opus_demo.c", "src/opus_compare.c",
                     "src/repacketizer_demo.c",
                     # 1.6: a comparison program and the FFT only it uses
                     "src/qext_compare.c", "celt/mini_kfft.c"),
            includes=("include", "celt", "silk", "silk/float"),
            defines=("OPUS_BUILD", "USE_ALLOCA", "HAVE_LRINTF", "HAVE_LRINT")),
    # libzstd, mbedtls: ~60 s / ~30 s compile+lift per config (gcc-x86_64-O2)
    # lib/common/xxhash.c is a copy of xxhash (vendored in lz4, a test project)
    Project("libzstd", ("lib/common/*.c", "lib/compress/*.c", "lib/decompress/*.c"),
            exclude=("lib/common/xxhash.c",), includes=("lib", "lib/common"),
            defines=("ZSTD_DISABLE_ASM",)),
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
    # --- reference only: families of the reference corpus that no model trains on
    # zlib.h/zconf.h come from the build machine's zlib1g-dev (headers only, any target)
    Project("libpng1.6", ("png.c", "pngerror.c", "pngget.c", "pngmem.c", "pngpread.c",
                          "pngread.c", "pngrio.c", "pngrtran.c", "pngrutil.c", "pngset.c",
                          "pngtrans.c", "pngwio.c", "pngwrite.c", "pngwtran.c", "pngwutil.c"),
            includes=(".",), defines=("PNG_ARM_NEON_OPT=0", "PNG_INTEL_SSE_OPT=0"),
            copies={"pnglibconf.h": "scripts/pnglibconf.h.prebuilt",
                    "zlib.h": "/usr/include/zlib.h", "zconf.h": "/usr/include/zconf.h"},
            split="reference"),
    Project("xz-utils", ("src/liblzma/*/*.c", "src/common/tuklib_cpucores.c",
                         "src/common/tuklib_physmem.c"),
            exclude=("src/liblzma/check/*tablegen.c", "src/liblzma/check/crc*_small.c",
                     "src/liblzma/lzma/fastpos_tablegen.c",
                     "src/liblzma/rangecoder/price_tablegen.c"),
            includes=("src/liblzma/api", "src/liblzma/common", "src/liblzma/check",
                      "src/liblzma/lz", "src/liblzma/lzma", "src/liblzma/rangecoder",
                      "src/liblzma/delta", "src/liblzma/simple", "src/common"),
            defines=("HAVE_CONFIG_H",), generated={"config.h": XZ_CONFIG},
            split="reference"),
    Project("freetype", FREETYPE_SOURCES, includes=("include",),
            defines=("FT2_BUILD_LIBRARY",), split="reference"),
    # the amalgamation (sqlite3.c) is generated by the source tree's own makefile (tclsh)
    Project("sqlite3", ("sqlite3.c",), includes=(".",),
            defines=("SQLITE_THREADSAFE=1", "SQLITE_ENABLE_FTS5", "SQLITE_ENABLE_JSON1",
                     "SQLITE_ENABLE_RTREE", "SQLITE_OMIT_LOAD_EXTENSION"),
            prepare="test -f sqlite3.c || { ./configure >/dev/null && make sqlite3.c >/dev/null; }",
            split="reference"),
    # config.h and xmlversion.h from configure (host values; the library's C is portable)
    Project("libxml2", ("*.c",),
            exclude=("run*.c", "test*.c", "xmllint.c", "xmlcatalog.c", "DOCBparser.c",
                     "trio*.c"),
            includes=(".", "include"), defines=("HAVE_CONFIG_H",),
            prepare="test -f config.h || ./configure --without-python --without-zlib "
                    "--without-lzma --without-icu >/dev/null",
            split="reference"),
)

BY_NAME = {p.name: p for p in PROJECTS}

# The family a match reports, where it differs from the Debian source package's name.
FAMILY_NAMES = {"lua5.4": "lua", "lzo2": "lzo", "libzstd": "zstd", "xz-utils": "xz",
                "libpng1.6": "libpng"}
# Families whose library carries another family's code (copied or vendored): lz4 and
# zstd build xxhash in; freetype's gzip module is zlib's inflate.
EMBEDS = {"lz4": ["xxhash"], "zstd": ["xxhash"], "freetype": ["zlib"]}


def family_of(project: str) -> str:
    return FAMILY_NAMES.get(project, project)

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
    # tier 1: O0/O2 across every architecture
    "gcc-x86_64-O0", "gcc-x86_64-O2", "gcc-aarch64-O2", "clang-x86_64-O2", "gcc-armhf-O2",
    "gcc-i686-O2", "gcc-mipsel-O2", "clang-aarch64-O2", "gcc-aarch64-O0", "clang-x86_64-O0",
    "gcc-armhf-O0", "gcc-i686-O0", "gcc-mipsel-O0",
    # tier 2: the other optimisation levels and clang's 32-bit targets, interleaved
    "clang-i686-O2", "gcc-x86_64-O3", "gcc-aarch64-Os", "clang-armhf-O2", "gcc-x86_64-O1",
    "clang-x86_64-O3", "gcc-mipsel-Os", "clang-aarch64-O1", "gcc-armhf-O3", "gcc-i686-Os",
    "clang-mipsel-O2", "gcc-aarch64-O1", "clang-x86_64-Os", "gcc-i686-O3", "clang-armhf-Os",
)


def all_configs() -> list[str]:
    """PRIORITY_CONFIGS, then the rest of compilers x arches x opts."""
    rest = [f"{c}-{a}-{o}" for o in OPTS for a in ARCHES for c in COMPILERS]
    return list(PRIORITY_CONFIGS) + [c for c in rest if c not in PRIORITY_CONFIGS]

# xxhash is vendored inside lz4 (a test project): never train on it.
SLOW_OR_LEAKY = ("xxhash",)
DEFAULT_PROJECTS = tuple(p.name for p in PROJECTS if p.name not in SLOW_OR_LEAKY)
