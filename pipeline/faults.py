"""Infrastructure faults: Postgres, Redis or S3 unreachable, timing out or refusing the credentials, as one line.

`describe(exc, settings)` names the service, what went wrong and where (host:port), and picks the exit code
that tells Airflow whether a retry can help (pipeline/errors.py); None means `exc` is no such fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import psycopg2
import psycopg2.extensions
import redis
import urllib3
from minio.error import S3Error, ServerError

from pipeline.errors import EXIT_CREDENTIALS, EXIT_UNAVAILABLE
from pipeline.settings import Settings

# Codes an S3 server answers when it does not accept the keys (versitygw: XAdminUserNotFound for an unknown key).
S3_REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "XAdminUserNotFound")
# A login Postgres refused, as opposed to a server that is down, starting up or full (those may pass).
PG_REFUSED = ("authentication failed", "does not exist", "pg_hba.conf", "not permitted to log in")


@dataclass(frozen=True)
class Fault:
    what: str  # e.g. "Redis unreachable: Error 111 connecting to 127.0.0.1:6379. Connection refused."
    address: str  # host:port of the service
    exit_code: int

    def line(self, step: str) -> str:
        return f"error: {step}: {self.what} ({self.address})"


def describe(exc: BaseException, settings: Settings) -> Fault | None:
    """The fault behind `exc` if a store failed us, else None (a bug, or an error the step reports itself)."""
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return _postgres(exc, settings)
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
        return Fault(f"Redis refused the credentials: {exc}", _redis_address(settings), EXIT_CREDENTIALS)
    if isinstance(exc, redis.TimeoutError):
        return Fault(f"Redis timed out: {exc}", _redis_address(settings), EXIT_UNAVAILABLE)
    if isinstance(exc, redis.ConnectionError):
        return Fault(f"Redis unreachable: {exc}", _redis_address(settings), EXIT_UNAVAILABLE)
    if isinstance(exc, S3Error) and exc.code in S3_REFUSED:
        return Fault(f"S3 refused the credentials: {exc.code}: {exc.message}", settings.s3_endpoint, EXIT_CREDENTIALS)
    if isinstance(exc, ServerError):
        return Fault(f"S3 failed: HTTP {exc.status_code}", settings.s3_endpoint, EXIT_UNAVAILABLE)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return _http(exc, settings)
    return None


def _postgres(exc: psycopg2.Error, settings: Settings) -> Fault:
    dsn = psycopg2.extensions.parse_dsn(settings.database_url)
    address = f"{dsn.get('host', 'localhost')}:{dsn.get('port', 5432)}"
    # 'connection to server at "h", port p failed: FATAL:  role "x" does not exist' -> 'role "x" does not exist'
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(" failed: ", 1)[-1]
    detail = detail.removeprefix("FATAL:").strip()
    if any(marker in detail for marker in PG_REFUSED):
        return Fault(f"Postgres refused the login: {detail}", address, EXIT_CREDENTIALS)
    if detail == "timeout expired":
        detail = f"no answer within {settings.postgres_connect_timeout} s (POSTGRES_CONNECT_TIMEOUT)"
        return Fault(f"Postgres timed out: {detail}", address, EXIT_UNAVAILABLE)
    return Fault(f"Postgres unreachable: {detail}", address, EXIT_UNAVAILABLE)


def _redis_address(settings: Settings) -> str:
    url = urlparse(settings.redis_url)
    return f"{url.hostname}:{url.port or 6379}"


def _http(exc: urllib3.exceptions.HTTPError, settings: Settings) -> Fault:
    """A transport error of the S3 client (or of another HTTP client: the Kubernetes API's in `deploy`)."""
    pool = getattr(exc, "pool", None)
    address = f"{pool.host}:{pool.port}" if pool is not None else settings.s3_endpoint
    service = "S3" if address == settings.s3_endpoint else "the server"
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last attempt's error
    # "HTTPConnectionPool(host='h', port=p): Read timed out. (read timeout=30)" -> "Read timed out. (read timeout=30)"
    detail = str(reason).split("): ", 1)[-1]
    # NewConnectionError subclasses ConnectTimeoutError in urllib3, though it means "refused" or "no route" too
    if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return Fault(f"{service} timed out: {detail}", address, EXIT_UNAVAILABLE)
    return Fault(f"{service} unreachable: {detail}", address, EXIT_UNAVAILABLE)
