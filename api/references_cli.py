"""Reference samples from the command line, through the REST API.

    python -m api.references_cli add FILE|DIR --family F --version V [--tags a,b] [--wait]
    python -m api.references_cli list
    python -m api.references_cli show SHA256
    python -m api.references_cli relabel SHA256 [--family F] [--version V] [--tags a,b]
    python -m api.references_cli remove SHA256

The API's address and key come from the environment: AE_URL (default
http://127.0.0.1:8000) and AE_API_KEY (an internal key: the operations are internal).
A directory adds every regular file under it, each as its own reference.
Exit status: 0 done; 1 the API refused something, or (with --wait) a reference failed;
2 bad usage; 3 the API could not be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
BASE = "/internal/references"
FINAL = frozenset({"SUCCESS", "FAILURE"})


class ApiError(Exception):
    """The API answered with an error: its status and detail."""


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # 422: pydantic's errors
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}"
                           for e in detail if isinstance(e, dict))
    return f"{response.status_code} {detail}"


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise ApiError(_detail(response))
    return response.json()


def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    else:
        yield path


def _line(ref: dict[str, Any]) -> str:
    tags = ",".join(ref.get("tags") or []) or "-"
    functions = ref.get("functions")
    line = (f"{ref['sha256']}  {ref['status']:<8} {ref['family']} {ref['version']}  "
            f"tags={tags}  functions={'-' if functions is None else functions}  "
            f"{ref.get('filename') or ''}")
    if ref.get("error_details"):
        line += f"\n    error: {ref['error_details']}"
    return line


def add(http: httpx.Client, args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return EXIT_USAGE
    form = {"family": args.family, "version": args.version}
    if args.tags:
        form["tags"] = args.tags
    added, failed = [], 0
    for file in _files(path):
        try:
            with file.open("rb") as handle:
                response = http.post(BASE, data=form, files={"sample": (file.name, handle)})
            ref = _checked(response)
        except (ApiError, OSError) as exc:
            print(f"{file}: {exc}", file=sys.stderr)
            failed += 1
            continue
        word = "added" if response.status_code == 201 else "exists"
        print(f"{word} {file}: {_line(ref)}")
        added.append(ref["sha256"])
    if args.wait:
        for sha256 in added:
            ref = _wait(http, sha256, args.timeout)
            print(f"done {_line(ref)}")
            failed += ref["status"] != "SUCCESS"
    return EXIT_FAILED if failed else EXIT_OK


def _wait(http: httpx.Client, sha256: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        ref = _checked(http.get(f"{BASE}/{sha256}"))
        if ref["status"] in FINAL:
            return ref
        if time.monotonic() > deadline:
            raise ApiError(f"{sha256} is still {ref['status']} after {timeout_s:g} s")
        time.sleep(1.0)


def list_all(http: httpx.Client, _args: argparse.Namespace) -> int:
    after, count, version = "", 0, ""
    while True:
        page = _checked(http.get(BASE, params={"after": after, "limit": 500}))
        version = page["index_version"]
        for ref in page["references"]:
            print(_line(ref))
            count += 1
        if not page["next_cursor"]:
            break
        after = page["next_cursor"]
    print(f"{count} reference(s); index version {version}")
    return EXIT_OK


def show(http: httpx.Client, args: argparse.Namespace) -> int:
    print(_line(_checked(http.get(f"{BASE}/{args.sha256}"))))
    return EXIT_OK


def relabel(http: httpx.Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.family is not None:
        body["family"] = args.family
    if args.version is not None:
        body["version"] = args.version
    if args.tags is not None:
        body["tags"] = [t.strip() for t in args.tags.split(",") if t.strip()]
    if not body:
        print("error: give --family, --version and/or --tags", file=sys.stderr)
        return EXIT_USAGE
    print(_line(_checked(http.patch(f"{BASE}/{args.sha256}", json=body))))
    return EXIT_OK


def remove(http: httpx.Client, args: argparse.Namespace) -> int:
    print(_checked(http.delete(f"{BASE}/{args.sha256}"))["detail"])
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m api.references_cli",
                                  description="Reference samples of the Attribution Engine.")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("add", help="add a file, or every file under a directory")
    p.add_argument("path")
    p.add_argument("--family", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--tags", default="", help="comma-separated")
    p.add_argument("--wait", action="store_true", help="wait until each is done")
    p.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits for one")
    p.set_defaults(run=add)
    sub.add_parser("list", help="every reference").set_defaults(run=list_all)
    p = sub.add_parser("show", help="one reference")
    p.add_argument("sha256")
    p.set_defaults(run=show)
    p = sub.add_parser("relabel", help="change family, version and/or tags")
    p.add_argument("sha256")
    p.add_argument("--family")
    p.add_argument("--version")
    p.add_argument("--tags", help="comma-separated; '' clears them")
    p.set_defaults(run=relabel)
    p = sub.add_parser("remove", help="stop searching a reference")
    p.add_argument("sha256")
    p.set_defaults(run=remove)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = os.environ.get("AE_URL", "http://127.0.0.1:8000").rstrip("/")
    key = os.environ.get("AE_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            return args.run(http, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except httpx.TransportError as exc:
        print(f"error: the API at {url} is not reachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
