"""S3 storage through aiobotocore: any S3-compatible service (AWS, MinIO, SeaweedFS, Garage).

aiobotocore is botocore, the AWS SDK's own request signing, retries and error
model, on aiohttp; one client per process, its connection pool shared by every
request. Big files go up as multipart uploads of PART_SIZE parts read from disk
one at a time, so memory stays flat whatever the file's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiobotocore.session
import aiohttp
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from server.core.storage import MARKER, STORAGE_KEY_RE, StorageLocation, StorageUnavailable, unlink

from .store import content_type_of

log = logging.getLogger(__name__)

PART_SIZE = 16 * 1024 * 1024
CHUNK = 256 * 1024
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
T = TypeVar("T")


def translate(exc: BaseException, key: str) -> BaseException:
    """A client error as the store's errors: FileNotFoundError or StorageUnavailable."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in MISSING_CODES:
            return FileNotFoundError(key)
        return StorageUnavailable(f"S3 {code or 'error'} on {key}")
    return StorageUnavailable(f"S3 unreachable ({type(exc).__name__}: {exc})")


STORE_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class S3Range:
    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                data = await self._body.read(CHUNK)
            except STORE_ERRORS as exc:
                raise translate(exc, self._key) from exc
            if not data:
                return
            yield data

    def close(self) -> None:
        self._body.close()


class S3Store:
    remote = True

    def __init__(self, location: StorageLocation, client: Any) -> None:
        self._bucket = location.bucket
        self._prefix = location.prefix
        self._client = client

    @classmethod
    async def open(cls, location: StorageLocation) -> tuple[S3Store, contextlib.AsyncExitStack]:
        """A store with its client; close the stack to close the client."""
        config = BotoConfig(
            signature_version="s3v4",
            connect_timeout=5, read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=64,
            # Services other than AWS seldom have a DNS name per bucket.
            s3={"addressing_style": "path" if location.endpoint else "auto"},
        )
        stack = contextlib.AsyncExitStack()
        session = aiobotocore.session.get_session()
        client = await stack.enter_async_context(session.create_client(
            "s3", endpoint_url=location.endpoint, region_name=location.region or "us-east-1",
            config=config))
        return cls(location, client), stack

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def _call(self, key: str, call: Callable[..., Awaitable[T]], **params: Any) -> T:
        try:
            return await call(Bucket=self._bucket, **params)
        except STORE_ERRORS as exc:
            raise translate(exc, key) from exc

    def local_path(self, key: str) -> Path | None:
        return None

    async def put_file(self, key: str, source: Path) -> None:
        size = (await asyncio.to_thread(os.stat, source)).st_size
        if size <= PART_SIZE:
            data = await asyncio.to_thread(source.read_bytes)
            await self.put_bytes(key, data)
        else:
            await self._put_multipart(key, source, size)
        await unlink(source)

    async def _put_multipart(self, key: str, source: Path, size: int) -> None:
        client = self._client
        created = await self._call(key, client.create_multipart_upload, Key=self._key(key),
                                   ContentType=content_type_of(key))
        upload_id = created["UploadId"]
        parts = []
        try:
            fd = await asyncio.to_thread(os.open, source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for number, offset in enumerate(range(0, size, PART_SIZE), start=1):
                    data = await asyncio.to_thread(os.pread, fd, PART_SIZE, offset)
                    part = await self._call(key, client.upload_part, Key=self._key(key),
                                            UploadId=upload_id, PartNumber=number, Body=data)
                    parts.append({"PartNumber": number, "ETag": part["ETag"]})
            finally:
                os.close(fd)
            await self._call(key, client.complete_multipart_upload, Key=self._key(key),
                             UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(*STORE_ERRORS, StorageUnavailable):
                await asyncio.shield(self._call(key, client.abort_multipart_upload,
                                                Key=self._key(key), UploadId=upload_id))
            raise

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._call(key, self._client.put_object, Key=self._key(key), Body=data,
                         ContentType=content_type_of(key))

    async def get_bytes(self, key: str) -> bytes:
        response = await self._call(key, self._client.get_object, Key=self._key(key))
        body = response["Body"]
        try:
            data: bytes = await body.read()
        except STORE_ERRORS as exc:
            raise translate(exc, key) from exc
        finally:
            body.close()
        return data

    async def fetch(self, key: str, target: Path) -> None:
        response = await self._call(key, self._client.get_object, Key=self._key(key))
        body = S3Range(response["Body"], key)
        try:
            fd = await asyncio.to_thread(
                os.open, target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                async for data in body.chunks():
                    await asyncio.to_thread(_write_all, fd, data)
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
        finally:
            body.close()

    async def open_range(self, key: str, start: int, length: int) -> S3Range:
        response = await self._call(key, self._client.get_object, Key=self._key(key),
                                    Range=f"bytes={start}-{start + length - 1}")
        return S3Range(response["Body"], key)

    async def delete(self, key: str) -> None:
        await self._call(key, self._client.delete_object, Key=self._key(key))

    async def settled_keys(self, min_age: float) -> list[str]:
        cutoff = time.time() - min_age
        keys: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": self._prefix, "Delimiter": "/"}
            if token:
                params["ContinuationToken"] = token
            page = await self._call(self._prefix, self._client.list_objects_v2, **params)
            for item in page.get("Contents", ()):
                name = item["Key"][len(self._prefix):]
                if STORAGE_KEY_RE.fullmatch(name) and item["LastModified"].timestamp() < cutoff:
                    keys.append(name)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys

    async def claim(self, database_id: str) -> str:
        marker = str(MARKER)
        try:
            return (await self.get_bytes(marker)).decode("ascii", "replace").strip()
        except FileNotFoundError:
            pass
        try:
            # Only if absent: of two databases claiming at once, one wins and both read it.
            await self._client.put_object(Bucket=self._bucket, Key=self._key(marker),
                                          Body=(database_id + "\n").encode("ascii"),
                                          IfNoneMatch="*")
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) != "PreconditionFailed":
                raise translate(exc, marker) from exc
        except STORE_ERRORS as exc:
            raise translate(exc, marker) from exc
        return (await self.get_bytes(marker)).decode("ascii", "replace").strip()

    async def presign(self, key: str, ttl: int) -> str | None:
        try:
            url: str = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": self._key(key)},
                ExpiresIn=ttl)
        except STORE_ERRORS as exc:  # no credentials, say
            raise translate(exc, key) from exc
        return url

    async def close(self) -> None:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
