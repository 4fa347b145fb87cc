"""The blob store in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, …), which
the API and the workers of several machines share: `s3://bucket[/prefix]`.

Objects `<prefix>/sha256/ab/cd/<digest>` hold the blobs, `<prefix>/derived/<kind>/ab/<key>`
the digest a derived result (a lift) is stored under. An object appears whole or not at
all, so a reader never sees half a blob. The bucket must exist. Credentials and region
come from boto3's usual sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION, ~/.aws); AE_S3_ENDPOINT_URL names a server other than AWS.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from store.blobs import BlobMissing, BlobStore, check_sha256

NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore(BlobStore):
    def __init__(self, url: str, scratch: Path, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        self.url, self.bucket = url, parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        # Path-style addressing works with every S3-compatible server; a client is
        # thread-safe, so one serves the activities' threads.
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(s3={"addressing_style": "path"},
                          retries={"max_attempts": 8, "mode": "standard"}),
        )

    @property
    def location(self) -> str:
        return self.url

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _blob_key(self, sha256: str) -> str:
        check_sha256(sha256)
        return self._key("sha256", sha256[:2], sha256[2:4], sha256)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                return None
            raise

    def exists(self, sha256: str) -> bool:
        return self._head(self._blob_key(sha256)) is not None

    def size(self, sha256: str) -> int:
        head = self._head(self._blob_key(sha256))
        if head is None:
            raise BlobMissing(sha256)
        return int(head["ContentLength"])

    def _get(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                return None
            raise
        with contextlib.closing(answer["Body"]) as body:
            return body.read()

    def read_bytes(self, sha256: str) -> bytes:
        data = self._get(self._blob_key(sha256))
        if data is None:
            raise BlobMissing(sha256)
        return data

    @contextlib.contextmanager
    def local_copy(self, sha256: str) -> Iterator[Path]:
        key = self._blob_key(sha256)
        fd, name = tempfile.mkstemp(dir=self.scratch, prefix=f"copy-{sha256[:12]}-")
        os.close(fd)
        path = Path(name)
        try:
            try:
                self.client.download_file(self.bucket, key, name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                    raise BlobMissing(sha256) from exc
                raise
            path.chmod(0o400)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _publish(self, tmp: Path, sha256: str) -> None:
        """One PUT, or a multipart upload for a large blob. A failed multipart upload is
        aborted (boto3's transfer manager does so; any it left is aborted here), so no
        parts are left stored and billed; the caller removes the local file."""
        key = self._blob_key(sha256)
        if self._head(key) is not None:  # content-addressed: an existing object is this one
            return
        try:
            self.client.upload_file(str(tmp), self.bucket, key)
        except BaseException:
            self._abort_multipart(key)
            raise

    def _abort_multipart(self, key: str) -> None:
        """Abort the multipart uploads in progress for this key (those of another process
        writing the same blob at this moment too: it fails and its caller retries)."""
        with contextlib.suppress(ClientError):
            listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listed.get("Uploads", []):
                if upload["Key"] == key:
                    with contextlib.suppress(ClientError):
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                        )

    def _ref_key(self, kind: str, key: str) -> str:
        return self._key("derived", kind, key[:2], key)

    def _read_ref(self, kind: str, key: str) -> str | None:
        data = self._get(self._ref_key(kind, key))
        return None if data is None else data.decode("ascii", "replace").strip()

    def _write_ref(self, kind: str, key: str, value: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._ref_key(kind, key),
                               Body=value.encode("ascii"))
