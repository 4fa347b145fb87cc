# The two commands of the README: `make up` and `make test`.
VENV   ?= .venv
PY312  := $(shell pyenv which python3.12 2>/dev/null || command -v python3.12)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

.PHONY: up test lint venv runtime-deps test-deps apt-sources tool-sources index clean-data

# System packages the service itself needs: bubblewrap sandboxes the children that parse
# samples (unpack, lift; see sandbox/ and the README's Sandbox section); libarchive reads
# RAR, CAB, ISO 9660, cpio and ar (through the libarchive-c package); unar decrypts RAR
# with the password list (unpacking/rar_unar.py).
RUNTIME_DEBS := bubblewrap libarchive13 unar

# System packages the tests build real binaries with (native and cross compilers), the
# browser that renders /docs offline, and the PostgreSQL server the store and pipeline
# tests start for their PostgreSQL half (tests/postgres.py: a temporary data directory,
# a free loopback port, run as `nobody`) (Debian names).
# The container tests build real containers with Debian's own writers: bsdtar
# (libarchive-tools), gcab, genisoimage, xorriso (zisofs), wixl (MSI), RARLAB's rar
# (bookworm's non-free section), and pack a real program with upx-ucl (bullseye's: the
# package left bookworm); see TOOL_SOURCES below.
TEST_DEBS := $(RUNTIME_DEBS) gcc clang lld zlib1g-dev chromium dpkg-dev postgresql gcc-aarch64-linux-gnu \
             gcc-i686-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross \
             libc6-dev-i386-cross libc6-dev-armhf-cross \
             libarchive-tools gcab genisoimage xorriso wixl rar upx-ucl

# whether Debian package $$p is installed (not merely known to dpkg: removed ones keep
# their configuration files)
INSTALLED = dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q ' installed$$'

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PY312)" || { echo "Python 3.12 is required (pyenv install 3.12)"; exit 1; }
	test -x $(VENV)/bin/python || $(PY312) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,eval]'
	rm -f $(VENV)/.installed-* && touch $@

up: venv runtime-deps
	./temporal-dev/up.sh

runtime-deps:
	@missing=$$(for p in $(RUNTIME_DEBS); do $(INSTALLED) || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# deb-src entries for the Debian suites whose sources the tests and the reference build
# compile (apt-get source NAME/SUITE); the suites' binary packages stay out of reach.
APT_SRC := /etc/apt/sources.list.d/attribution-engine-src.sources

apt-sources:
	@if ! apt-get source --print-uris -q zlib/bullseye >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bullseye bookworm trixie sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    | $$SUDO tee $(APT_SRC) >/dev/null && $$SUDO apt-get update -q; \
	fi

# Binary packages for the tests' tools only: bookworm's non-free section (rar) and
# bullseye's main (upx-ucl), bullseye pinned below bookworm so it only ever supplies
# what bookworm lacks.
TOOL_SOURCES := /etc/apt/sources.list.d/attribution-engine-tools.sources
TOOL_PIN := /etc/apt/preferences.d/attribution-engine-bullseye

tool-sources:
	@if [ ! -f $(TOOL_SOURCES) ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    | $$SUDO tee $(TOOL_SOURCES) >/dev/null; \
	  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' | $$SUDO tee $(TOOL_PIN) >/dev/null; \
	  $$SUDO apt-get update -q; \
	fi

test-deps: apt-sources tool-sources
	@missing=$$(for p in $(TEST_DEBS); do $(INSTALLED) || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

test: venv test-deps lint
	$(VENV)/bin/python -m pytest -q -ra

# Rebuild the shipped reference index (festive/weights/v1/reference.npz + card.json):
# every family of festive/data/projects.py compiled from Debian sources (bookworm's and
# sid's versions, see REFERENCE_BUILDS in festive/attribution/build.py) with gcc, clang
# and the aarch64 cross compiler, stripped, lifted by angr, labelled from the -g twin;
# then embedded, calibrated, merged and quantised. Hours of angr on 2 cores from
# nothing; every step is cached under data/ and resumes. Needs root (apt-get) and
# deb-src entries for bookworm and sid (and trixie, the fallback).
REF_DEBS := clang lld gcc-aarch64-linux-gnu libc6-dev-arm64-cross tcl dpkg-dev

index: venv apt-sources
	@missing=$$(for p in $(REF_DEBS); do $(INSTALLED) || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi
	nice -n 10 $(VENV)/bin/python -m festive.attribution.build --lift

clean-data:
	rm -rf data
