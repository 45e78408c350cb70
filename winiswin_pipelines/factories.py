"""Plain factories built from `settings`: what the Dagster resources and the command-line scripts
both call, so a script never builds a Dagster resource and no logic module reads the environment.
"""

from __future__ import annotations

import threading
from pathlib import Path

import boto3
import pyarrow.fs as pafs
from botocore.config import Config

from winiswin_pipelines import settings
from winiswin_pipelines.coldstore import ColdStore, LocalColdStore, S3ColdStore
from winiswin_pipelines.db.manager import DatabaseManager

S3_MAX_ATTEMPTS = 5


_managers: dict[str, DatabaseManager] = {}
_managers_lock = threading.Lock()


def database_manager(url: str | None = None) -> DatabaseManager:
    """The process-wide DatabaseManager (one engine per process) for `url`, else DATABASE_URL, else
    the embedded server."""
    # Keyed by what the caller asked for, so a cached manager costs no look-up of the embedded server.
    key = url or settings.database_url() or ""
    with _managers_lock:
        if key not in _managers:
            _managers[key] = DatabaseManager(key or None)
        return _managers[key]


def s3_client(
    endpoint_url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
    region: str | None = None, *, max_attempts: int = S3_MAX_ATTEMPTS,
):
    """A boto3 S3 client; every argument left out comes from the environment (R2 through S3_ENDPOINT_URL)."""
    endpoint_url = endpoint_url or settings.s3_endpoint_url()
    config = Config(
        # R2 rejects boto3's default CRC checksums; S3ColdStore sends its own SHA-256 instead.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        retries={"max_attempts": max_attempts, "mode": "standard"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key or settings.aws_access_key(),
        aws_secret_access_key=secret_key or settings.aws_secret_access_key(),
        region_name=region or settings.aws_region(endpoint_url),
        config=config,
    )


def s3_filesystem(
    endpoint_url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
    region: str | None = None, *, max_attempts: int = S3_MAX_ATTEMPTS,
) -> pafs.S3FileSystem:
    """pyarrow's view of the same bucket as `s3_client`, for Parquet reads in place; keys left out
    come from the environment (pyarrow's default credential chain when none is set)."""
    endpoint_url = endpoint_url or settings.s3_endpoint_url()
    return pafs.S3FileSystem(
        access_key=access_key or settings.aws_access_key(),
        secret_key=secret_key or settings.aws_secret_access_key(),
        region=region or settings.aws_region(endpoint_url),
        endpoint_override=endpoint_url,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
    )


def cold_store(
    bucket: str | None = None, prefix: str | None = None, local_dir: str | Path | None = None, *, client=None,
    filesystem: pafs.S3FileSystem | None = None,
) -> ColdStore:
    """The cold store: the S3 / R2 bucket (BUCKET_NAME) when one is named, else the local folder."""
    bucket = bucket or settings.bucket_name()
    if not bucket:
        return LocalColdStore(Path(local_dir) if local_dir else settings.cold_storage_dir())
    return S3ColdStore(client or s3_client(), bucket, settings.s3_prefix() if prefix is None else prefix,
                       filesystem or s3_filesystem())
