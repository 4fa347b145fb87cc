"""The Temporal dev server's flags, one home for `make up` (temporal-dev/up.sh reads them
from `python -m deploy.temporal_dev DB_FILE`), the benchmarks and the fault tests: the
search attributes operators filter on (common/search_attributes.py) and, for a server
that keeps its state in a file, how SQLite keeps it.

SQLite runs with a write-ahead log and synchronous=FULL. The dev server's own default, a
rollback journal, costs ~0.9 ms of fsyncs per commit on the 2-core machine here against
~0.26 ms, and every step of a workflow is a commit: in four alternated pairs of runs a
cached reanalysis of gzip took a median 146-153 ms with it against 128-144 ms
(BENCHMARKS.md, reanalysis round 4). FULL keeps every commit durable; NORMAL was no
faster there and may lose the last commits on a power cut.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from common.search_attributes import ALL

SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=full")


def dev_server_flags(db_file: Path | None = None,
                     pragmas: Sequence[str] = SQLITE_PRAGMAS) -> list[str]:
    """`temporal server start-dev` flags: the search attributes, and with `db_file` the
    file it keeps its state in (else it keeps it in memory) with `pragmas` (the
    benchmarks compare others)."""
    flags = [arg for key in ALL for arg in ("--search-attribute", f"{key.name}=Keyword")]
    if db_file is not None:
        flags += ["--db-filename", str(db_file)]
        flags += [arg for pragma in pragmas for arg in ("--sqlite-pragma", pragma)]
    return flags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the dev server's flags, one a line.")
    parser.add_argument("db_file", type=Path, help="the file the dev server keeps its state in")
    args = parser.parse_args(argv)
    print("\n".join(dev_server_flags(args.db_file)))


if __name__ == "__main__":
    main()
