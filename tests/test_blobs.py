"""The blob store's contract, the same cases against both implementations: the local
directory and the S3 store, the latter against a real S3-compatible server (moto's
server mode, tests/s3.py) on loopback. Two store objects over one location stand for two
machines: each has its own scratch directory and sees what the other wrote."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from store.blobs import BlobMissing, BlobStore, BlobTooLarge, open_blobs
from tests.s3 import LocalS3

MakeStore = Callable[[str], BlobStore]


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """make_store(machine) -> a store over one shared location, with that machine's own
    scratch directory. Every scratch directory must be empty at the end."""
    if request.param == "local":
        url = str(tmp_path / "blobs")
        endpoint = None
    else:
        server: LocalS3 = request.getfixturevalue("s3_server")
        url, endpoint = f"s3://{server.create_bucket()}/deployment-1", server.endpoint_url
    made: list[BlobStore] = []

    def make(machine: str) -> BlobStore:
        store = open_blobs(url, tmp_path / f"scratch-{machine}", s3_endpoint_url=endpoint)
        made.append(store)
        return store

    yield make
    for store in made:
        assert list(store.scratch.iterdir()) == [], f"left in {store.scratch}"


def test_bytes_are_stored_under_their_sha256(make_store: MakeStore) -> None:
    blobs = make_store("a")
    data = os.urandom(3 * 1024 * 1024 + 17)  # larger than one chunk and a multipart part
    sha = blobs.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert blobs.exists(sha) and blobs.size(sha) == len(data) and blobs.read_bytes(sha) == data
    assert blobs.put_bytes(data) == sha  # the same content again: the same blob
    assert blobs.put_bytes(b"") == hashlib.sha256(b"").hexdigest()
    assert blobs.read_bytes(hashlib.sha256(b"").hexdigest()) == b""


def test_another_machine_sees_the_blobs(make_store: MakeStore) -> None:
    first, second = make_store("a"), make_store("b")
    sha = first.put_bytes(b"written on machine a")
    assert second.exists(sha) and second.read_bytes(sha) == b"written on machine a"
    second.set_derived("lift-test", sha, second.put_json({"functions": [1, 2]}))
    assert first.read_json(first.get_derived("lift-test", sha)) == {"functions": [1, 2]}


def test_streams_are_hashed_counted_and_capped(make_store: MakeStore) -> None:
    blobs = make_store("a")
    sha, size = blobs.put_chunks(iter([b"ab", b"cd", b"ef"]), max_bytes=6)
    assert (sha, size) == (hashlib.sha256(b"abcdef").hexdigest(), 6)
    with pytest.raises(BlobTooLarge):
        blobs.put_chunks(iter([b"abcd", b"efg"]), max_bytes=6)
    assert not blobs.exists(hashlib.sha256(b"abcdefg").hexdigest())

    def failing() -> Iterator[bytes]:
        yield b"half a blob"
        raise OSError("the client went away")

    with pytest.raises(OSError, match="went away"):
        blobs.put_chunks(failing())
    assert not blobs.exists(hashlib.sha256(b"half a blob").hexdigest())


async def test_async_streams_are_stored_like_sync_ones(make_store: MakeStore) -> None:
    blobs = make_store("a")

    async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    sha, size = await blobs.put_async_chunks(chunks([b"up", b"load"]), max_bytes=100)
    assert size == 6 and blobs.read_bytes(sha) == b"upload"
    with pytest.raises(BlobTooLarge):
        await blobs.put_async_chunks(chunks([b"x" * 60, b"y" * 60]), max_bytes=100)


def test_json_is_gzipped_and_deterministic(make_store: MakeStore) -> None:
    blobs = make_store("a")
    first = blobs.put_json({"b": [1, "ü"], "a": None})
    assert blobs.put_json({"a": None, "b": [1, "ü"]}) == first
    assert blobs.read_json(first) == {"a": None, "b": [1, "ü"]}
    assert gzip.decompress(blobs.read_bytes(first)) == b'{"a":null,"b":[1,"\\u00fc"]}'


def test_a_local_copy_is_a_read_only_file_of_the_blob(make_store: MakeStore) -> None:
    blobs = make_store("a")
    sha = blobs.put_bytes(b"\x7fELF for angr")
    with blobs.local_copy(sha) as path:
        assert path.read_bytes() == b"\x7fELF for angr"
        assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IXUSR)


async def test_an_async_local_copy_is_the_same_file(make_store: MakeStore) -> None:
    blobs = make_store("a")
    sha = blobs.put_bytes(b"async copy")
    async with blobs.local_copy_async(sha) as path:
        assert path.read_bytes() == b"async copy"


def test_missing_blobs_are_reported_as_missing(make_store: MakeStore) -> None:
    blobs = make_store("a")
    absent = "0" * 64
    assert not blobs.exists(absent)
    for read in (blobs.read_bytes, blobs.size):
        with pytest.raises(BlobMissing):
            read(absent)
    with pytest.raises(BlobMissing), blobs.local_copy(absent):
        pass


@pytest.mark.parametrize("name", ["../../etc/passwd", "A" * 64, "0" * 63, "sha256/ab", ""])
def test_only_sha256_digests_name_blobs(make_store: MakeStore, name: str) -> None:
    blobs = make_store("a")
    for call in (blobs.exists, blobs.read_bytes, blobs.size):
        with pytest.raises(ValueError, match="sha256"):
            call(name)
    with pytest.raises(ValueError):
        blobs.get_derived("lift", name)


def test_derived_results_point_at_blobs_that_exist(make_store: MakeStore) -> None:
    blobs = make_store("a")
    key = hashlib.sha256(b"input").hexdigest()
    assert blobs.get_derived("lift-angr-10", key) is None
    target = blobs.put_bytes(b"lifted")
    blobs.set_derived("lift-angr-10", key, target)
    assert blobs.get_derived("lift-angr-10", key) == target
    assert blobs.get_derived("lift-angr-11", key) is None  # another tool version
    blobs.set_derived("lift-angr-10", key, "f" * 64)  # a blob that is not there
    assert blobs.get_derived("lift-angr-10", key) is None
    for kind in ("../x", "Upper", ""):
        with pytest.raises(ValueError):
            blobs.set_derived(kind, key, target)
    with pytest.raises(ValueError):
        blobs.set_derived("lift", key, "not a digest")


def test_concurrent_writers_of_one_content_agree(make_store: MakeStore) -> None:
    stores = [make_store("a"), make_store("b")]
    data = os.urandom(200_000)
    with ThreadPoolExecutor(max_workers=8) as pool:
        shas = list(pool.map(lambda i: stores[i % 2].put_bytes(data), range(16)))
    assert set(shas) == {hashlib.sha256(data).hexdigest()}
    assert stores[1].read_bytes(shas[0]) == data


def test_unknown_blob_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported blob store URL"):
        open_blobs("ftp://example/blobs", tmp_path)
    with pytest.raises(ValueError, match="s3://bucket"):
        open_blobs("s3://", tmp_path)


def test_a_failed_multipart_upload_leaves_no_parts(s3_server: LocalS3, tmp_path: Path) -> None:
    """The S3 server fails the second part of a large blob's multipart upload (a botocore
    hook raises before that request is sent): the write fails, and afterwards there is
    no object, no multipart upload in progress, and nothing in the scratch directory."""
    bucket = s3_server.create_bucket()
    blobs = open_blobs(f"s3://{bucket}/deployment-1", tmp_path / "scratch",
                       s3_endpoint_url=s3_server.endpoint_url)
    parts: list[int] = []

    def fail_second_part(params: dict[str, object], **_: object) -> None:
        parts.append(1)
        if len(parts) == 2:
            raise ConnectionError("the network went away mid-upload")

    blobs.client.meta.events.register("before-call.s3.UploadPart", fail_second_part)  # type: ignore[attr-defined]
    data = os.urandom(20 * 1024 * 1024)  # over boto3's 8 MiB multipart threshold
    with pytest.raises(ConnectionError):
        blobs.put_bytes(data)
    assert len(parts) >= 2
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not blobs.exists(hashlib.sha256(data).hexdigest())
    assert list(blobs.scratch.iterdir()) == []
