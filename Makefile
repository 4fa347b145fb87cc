# The two commands of the README: `make up` and `make test`.
VENV   ?= .venv
PY312  := $(shell pyenv which python3.12 2>/dev/null || command -v python3.12)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

.PHONY: up test lint venv test-deps index clean-data

# System packages the tests build real binaries with (Debian names).
TEST_DEBS := gcc clang lld zlib1g-dev gcc-aarch64-linux-gnu gcc-i686-linux-gnu \
             gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-i386-cross \
             libc6-dev-armhf-cross

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PY312)" || { echo "Python 3.12 is required (pyenv install 3.12)"; exit 1; }
	test -x $(VENV)/bin/python || $(PY312) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,eval]'
	rm -f $(VENV)/.installed-* && touch $@

up: venv
	./temporal-dev/up.sh

lint: venv
	$(VENV)/bin/ruff check .

test-deps:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

test: venv test-deps lint
	$(VENV)/bin/python -m pytest -q -ra

# Rebuild the shipped reference indexes (v0 and v1) from Debian packages: ~25 min of
# angr here, needs root for dpkg/apt (see festive/reference/README.md). Cached lifts of
# an older lift format are lifted again. `--stage index` refits only v0's index.
index: venv
	dpkg --add-architecture arm64 && dpkg --add-architecture i386 && dpkg --add-architecture armhf
	-apt-get update
	nice -n 10 $(VENV)/bin/python -m festive.reference.build
	nice -n 10 $(VENV)/bin/python -m festive.v1.index

clean-data:
	rm -rf data
