"""S3 object store access through the minio SDK (works with SeaweedFS, versitygw and MinIO)."""

from __future__ import annotations

import io
from urllib.parse import urlparse

import urllib3
from minio import Minio

from pipeline.settings import Settings


def client(settings: Settings) -> Minio:
    """A client for the configured endpoint (path-style addressing, which every S3 server supports)."""
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=_http_client(settings),
    )


def _http_client(settings: Settings) -> urllib3.PoolManager:
    """The SDK's default pool with short timeouts: its own waits 300 s per read and retries 5 times."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.s3_connect_timeout, read=settings.s3_read_timeout),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",  # no ca_certs: the system store, which honours SSL_CERT_FILE
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def ensure_buckets(s3: Minio, settings: Settings) -> None:
    """Create the raw, features and models buckets if they are missing (idempotent)."""
    for bucket in (settings.bucket_raw, settings.bucket_features, settings.bucket_models):
        if not s3.bucket_exists(bucket):
            s3.make_bucket(bucket)


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def put_bytes(s3: Minio, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def get_bytes(s3: Minio, bucket: str, key: str) -> bytes:
    response = s3.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()
