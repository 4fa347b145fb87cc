"""Which Debian packages make up the reference corpus, and for which architectures.

Versions are pinned: the same source version is used on every architecture so that
cross-architecture matches compare the same code. Bookworm (Debian 12) versions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    family: str  # the label a match reports
    name: str  # Debian binary package
    version: str  # exact Debian version, identical across architectures


# Ordered cheap-to-lift first so that a time-boxed build still covers most families.
PACKAGES: tuple[Package, ...] = (
    Package("zlib", "zlib1g", "1:1.2.13.dfsg-1"),
    Package("bzip2", "libbz2-1.0", "1.0.8-5+b1"),
    Package("lz4", "liblz4-1", "1.9.4-1"),
    Package("expat", "libexpat1", "2.5.0-1+deb12u2"),
    Package("xz", "liblzma5", "5.4.1-1+deb12u1"),
    Package("libpng", "libpng16-16", "1.6.39-2+deb12u5"),
    Package("pcre2", "libpcre2-8-0", "10.42-1"),
    Package("zstd", "libzstd1", "1.5.4+dfsg2-5"),
    Package("sqlite3", "libsqlite3-0", "3.40.1-2+deb12u2"),
    Package("libxml2", "libxml2", "2.9.14+dfsg-1.3~deb12u6"),
)

# amd64 and arm64 are required; i386 and armhf are added when they download and lift.
ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64", "i386", "armhf")
