"""Cold storage behind one interface: a local folder (the default) or S3 / Cloudflare R2.

Objects are addressed by keys like `table=klines/date=2023-04-05/part-00000.parquet`; every
upload carries a SHA-256 checksum that `head` reports back, so a copy can be verified before the
hot rows are deleted. `arrow_paths` hands objects to pyarrow in place: a filtered read of a Parquet
object fetches its footer and the row groups the filter keeps (ranged GETs on S3), not the whole object.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import pyarrow.fs as pafs
from boto3.s3.transfer import TransferConfig

_CHUNK = 8 * 1024 * 1024
MULTIPART_THRESHOLD = 128 * 1024 * 1024  # one PUT below (S3 and R2 take up to 5 GiB)


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size: int
    sha256: str | None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ColdStore(Protocol):
    def uri(self, key: str) -> str: ...
    def put_file(self, path: Path, key: str, sha256: str) -> StoredObject: ...
    def head(self, key: str) -> StoredObject | None: ...
    def download(self, key: str, path: Path) -> None: ...
    def list_keys(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def arrow_paths(self, keys: list[str]) -> tuple[pafs.FileSystem, list[str]]: ...


class LocalColdStore:
    """Objects as files under `root`; each checksum lives in a hidden `.<file>.sha256` sidecar.

    Sidecars and partial uploads are hidden files, which pyarrow datasets, DuckDB and Spark skip,
    so the folder reads as a clean Hive-partitioned Parquet dataset.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _sidecar(self, key: str) -> Path:
        path = self._path(key)
        return path.with_name(f".{path.name}.sha256")

    def uri(self, key: str) -> str:
        return "file://" + quote(str(self._path(key).resolve()), safe="/=")

    def put_file(self, path: Path, key: str, sha256: str) -> StoredObject:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(path, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        self._sidecar(key).write_text(sha256)
        partial.replace(target)  # atomic: a reader never sees half an object
        return self.head(key)

    def head(self, key: str) -> StoredObject | None:
        target = self._path(key)
        if not target.is_file():
            return None
        sidecar = self._sidecar(key)
        checksum = sidecar.read_text().strip() if sidecar.exists() else None
        return StoredObject(key, self.uri(key), target.stat().st_size, checksum)

    def download(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def list_keys(self, prefix: str = "") -> list[str]:
        folder = self.root / prefix.rpartition("/")[0]  # walk only the folder the prefix names
        if not folder.is_dir():
            return []
        files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        return sorted(k for k in (p.relative_to(self.root).as_posix() for p in files) if k.startswith(prefix))

    def delete(self, key: str) -> None:
        for path in (self._path(key), self._sidecar(key)):
            path.unlink(missing_ok=True)

    def arrow_paths(self, keys: list[str]) -> tuple[pafs.FileSystem, list[str]]:
        return pafs.LocalFileSystem(), [str(self._path(key).resolve()) for key in keys]


class S3ColdStore:
    """Objects in an S3 or R2 bucket under `prefix`, SHA-256 sent explicitly with every upload."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", filesystem: pafs.S3FileSystem | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.filesystem = filesystem  # the same bucket seen by pyarrow, for reads in place

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put_file(self, path: Path, key: str, sha256: str) -> StoredObject:
        extra = {"Metadata": {"sha256": sha256}}
        if Path(path).stat().st_size < MULTIPART_THRESHOLD:
            # Single PUT: S3 (and R2) check the body against the checksum we send.
            with open(path, "rb") as body:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=body,
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(), **extra,
                )
        else:
            # Multipart: every part carries its own SHA-256 that the store checks (R2 included);
            # the whole file's SHA-256 travels in the metadata and is re-checked on read-back.
            config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
            self.client.upload_file(
                str(path), self.bucket, self._key(key), ExtraArgs={**extra, "ChecksumAlgorithm": "SHA256"}, Config=config
            )
        return self.head(key)

    def head(self, key: str) -> StoredObject | None:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return StoredObject(key, self.uri(key), meta["ContentLength"], meta.get("Metadata", {}).get("sha256"))

    def download(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(path))

    def list_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys += [item["Key"][strip:] for item in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def arrow_paths(self, keys: list[str]) -> tuple[pafs.FileSystem, list[str]]:
        if self.filesystem is None:
            raise RuntimeError(f"s3://{self.bucket}: no pyarrow filesystem was given to read objects in place")
        return self.filesystem, [f"{self.bucket}/{self._key(key)}" for key in keys]
