"""Open-loop HTTP load: GETs at a fixed rate over keep-alive connections, on raw asyncio
streams, from a process of its own.

    python bench/http_load.py --rate 500 --seconds 10 --paths FILE URL [URL ...]

Request i is sent at start + i/rate to URL i mod n, for path i mod len(paths), on an idle
connection to that URL (a new one when none is idle). Its latency counts from when it was
due, not from when it was sent, so a generator or server that falls behind shows in the
figures instead of slowing the offered rate (no coordinated omission). A request whose
reused connection the server had closed (keep-alive timeout) is sent again on a new one,
as HTTP clients do. Prints one JSON object: requests, offered and achieved rate,
p50/p99/max and the p99 of each second, the status codes other than 200, the CPU
seconds this process used (on one machine the generator shares the server's cores, and
httpx cost ~1 ms of CPU a request where this costs a small fraction), and, for Get
Status answers, how many views came from Temporal and from the database row and how old
the Temporal ones were (their `as_of`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime
from urllib.parse import urlsplit

MAX_CONNECTIONS = 512  # per URL


class Target:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0

    async def get(self, path: str) -> tuple[int, bytes]:
        reused = bool(self.idle)
        try:
            return await self._get(path)
        except _Stale:
            if not reused:
                raise ConnectionError("the server closed a new connection") from None
            # The server closed an idle keep-alive connection (uvicorn: after 5 s) as the
            # request went out on it: sent again on a new one, as HTTP clients do.
            return await self._get(path, fresh=True)

    async def _get(self, path: str, fresh: bool = False) -> tuple[int, bytes]:
        if self.idle and not fresh:
            reader, writer = self.idle.pop()
        else:
            if self.open >= MAX_CONNECTIONS:
                raise ConnectionError("too many connections")
            self.open += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.open -= 1
                raise
        try:
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
                first = await reader.readline()
            except (ConnectionResetError, BrokenPipeError):
                raise _Stale from None
            if not first:
                raise _Stale
            status = int(first.split(b" ", 2)[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length)
        except (_Stale, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            writer.close()
            self.open -= 1
            raise
        if close:
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer))
        return status, body


class _Stale(Exception):
    """The connection closed before the response began."""


async def run(urls: list[str], paths: list[str], rate: float, seconds: float
              ) -> dict[str, object]:
    targets = [Target(u) for u in urls]
    latencies: list[float] = []
    by_second: dict[int, list[float]] = {}
    codes: dict[str, int] = {}
    sources = {"temporal": 0, "database": 0}
    ages: list[float] = []  # seconds between a Temporal view's as_of and its arrival

    async def one(i: int, due: float) -> None:
        try:
            status, body = await targets[i % len(targets)].get(paths[i % len(paths)])
            key = str(status)
            _note_view(body)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            key = type(exc).__name__
        latencies.append(time.perf_counter() - due)
        by_second.setdefault(int(due - begin), []).append(latencies[-1])
        if key != "200":
            codes[key] = codes.get(key, 0) + 1

    def _note_view(body: bytes) -> None:
        if b'"source":"database"' in body:
            sources["database"] += 1
        elif (at := body.find(b'"as_of":"')) >= 0 and b'"source":"temporal"' in body:
            sources["temporal"] += 1
            as_of = body[at + 9:body.index(b'"', at + 9)].decode()
            ages.append(time.time() - datetime.fromisoformat(as_of).timestamp())

    cpu0 = time.process_time()
    begin = time.perf_counter()
    total = int(rate * seconds)
    tasks = []
    for i in range(total):
        due = begin + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begin
    ordered = sorted(latencies)
    views: dict[str, object] = {}
    if ages or sources["database"]:
        views["views"] = {**sources, **({
            "age_p50_ms": round(1000 * sorted(ages)[len(ages) // 2], 1),
            "age_p99_ms": round(1000 * _p99(ages), 1)} if ages else {})}
    return {
        "requests": total, "offered_rate": rate, "achieved_rate": round(total / elapsed, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
        "p99_ms": round(1000 * ordered[max(0, int(len(ordered) * 0.99) - 1)], 1),
        "max_ms": round(1000 * ordered[-1], 1),
        # p99 of the requests due in each second of the run: a slow start or a stall shows
        "p99_by_second_ms": [round(1000 * _p99(by_second[k]), 1) for k in sorted(by_second)],
        "errors": codes, "generator_cpu_s": round(time.process_time() - cpu0, 2),
        "connections": sum(t.open for t in targets),
        **views,
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--paths", required=True, help="a file: one request path a line")
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with open(args.paths) as handle:
        paths = [line.strip() for line in handle if line.strip()]
    print(json.dumps(asyncio.run(run(args.urls, paths, args.rate, args.seconds))))


if __name__ == "__main__":
    main()
