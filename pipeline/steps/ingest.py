"""Ingest step: fetch a CSV, keep the original in S3, validate every row, upsert into Postgres."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import requests

from pipeline import faults, schema
from pipeline.errors import SchemaError, SourceError
from pipeline.settings import Settings
from pipeline.store import postgres, s3

logger = logging.getLogger(__name__)

DB_COLUMNS = {  # CSV column -> passengers column
    "PassengerId": "passenger_id", "Survived": "survived", "Pclass": "pclass", "Name": "name", "Sex": "sex",
    "Age": "age", "SibSp": "sibsp", "Parch": "parch", "Ticket": "ticket", "Fare": "fare", "Cabin": "cabin",
    "Embarked": "embarked",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="http(s)://…, s3://bucket/key or a local path of a Kaggle-format CSV")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the file; refused on mismatch (default: not checked)")
    parser.add_argument("--batch-id", default=None, help="batch identifier (default: derived from the file's sha256, so re-runs are no-ops)")


# A few hops cover a moved file or a CDN; more means a loop or a detour to somewhere else.
MAX_REDIRECTS = 3
_CHUNK = 1 << 16


def fetch(source: str, settings: Settings, timeout: float = 60.0) -> bytes:
    """The bytes behind `source`, at most `settings.ingest_max_bytes` of them.

    SourceError names the source when it cannot be read, is too large, or is of a kind not allowed.
    """
    scheme = urlparse(source).scheme
    local = scheme in ("", "file")
    if scheme not in ("http", "https", "s3") and not (local and settings.ingest_allow_local_paths):
        allowed = "http(s)://…, s3://bucket/key" + (" or a local path" if settings.ingest_allow_local_paths else "")
        what = "local paths are not allowed here (INGEST_ALLOW_LOCAL_PATHS=false)" if local else f"{scheme}:// is not supported"
        raise SourceError(f"cannot read {source}: {what}; use {allowed}")
    limit = settings.ingest_max_bytes
    try:
        if scheme in ("http", "https"):
            with requests.Session() as session:
                session.max_redirects = MAX_REDIRECTS
                with session.get(source, timeout=timeout, stream=True) as response:
                    response.raise_for_status()
                    _refuse_declared(source, response.headers.get("Content-Length"), limit)
                    return _read_capped(source, response.iter_content(_CHUNK), limit)
        if scheme == "s3":
            bucket, key = s3.split_uri(source)
            response = s3.client(settings).get_object(bucket, key)
            try:
                _refuse_declared(source, response.headers.get("Content-Length"), limit)
                return _read_capped(source, response.stream(_CHUNK), limit)
            finally:
                response.close()
                response.release_conn()
        with open(source.removeprefix("file://"), "rb") as file:
            _refuse_declared(source, os.fstat(file.fileno()).st_size, limit)
            return _read_capped(source, iter(lambda: file.read(_CHUNK), b""), limit)
    except SourceError:
        raise
    except Exception as exc:  # any transport or storage failure means the same thing to the operator ...
        if faults.describe(exc, settings):  # ... but our own object store down or refusing our keys: retried or not
            raise
        raise SourceError(f"cannot read {source}: {exc}") from exc


def _too_large(source: str, limit: int, size: int | None = None) -> SourceError:
    got = f"{size} bytes, more than" if size is not None else "more than"
    return SourceError(f"cannot read {source}: {got} the limit of {limit} bytes ({limit / 2**20:g} MiB, INGEST_MAX_BYTES)")


def _refuse_declared(source: str, size, limit: int) -> None:
    """Refuse before reading when the size is known up front (Content-Length, file size)."""
    if size is not None and int(size) > limit:
        raise _too_large(source, limit, int(size))


def _read_capped(source: str, chunks, limit: int) -> bytes:
    """Join chunks, refusing as soon as they exceed `limit`: a declared size can lie or be absent."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise _too_large(source, limit)
    return bytes(data)


def parse(data: bytes) -> tuple[list[str], list[list[str]], list[int], list[tuple[int, str, str]]]:
    """(header, rows with the header's width, their line numbers, [(line, raw, reason)] for malformed rows)."""
    if not data.strip():
        raise SchemaError("the file is empty")
    if b"\x00" in data:
        raise SchemaError("not a CSV file: it contains binary data")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"not a CSV file: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    # csv's own field limit (128 KiB) would refuse the whole file for one oversized field; the file
    # is already capped in size, and the schema rejects an oversized value as one row.
    default_limit = csv.field_size_limit(max(len(text), csv.field_size_limit()))
    try:
        return _read_rows(text)
    finally:
        csv.field_size_limit(default_limit)


def _read_rows(text: str) -> tuple[list[str], list[list[str]], list[int], list[tuple[int, str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise SchemaError(f"not a CSV file: {exc}") from exc
    if len(header) < 2:
        raise SchemaError(f"not a CSV file: the header has no comma-separated columns ('{schema.excerpt(text)}')")
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in header]
    if missing:
        raise SchemaError(f"missing required columns: {', '.join(missing)} (header: {schema.excerpt(', '.join(header))})")
    rows, row_lines, malformed = [], [], []
    try:
        for row in reader:
            line = reader.line_num  # 1-based, header is line 1
            if len(row) == len(header):
                rows.append(row)
                row_lines.append(line)
            elif row:  # blank lines carry nothing
                reason = f"expected {len(header)} fields, got {len(row)}"
                malformed.append((line, _raw_line(row), ("truncated line: " if len(row) < len(header) else "") + reason))
    except csv.Error as exc:
        raise SchemaError(f"not a CSV file: line {reader.line_num}: {exc}") from exc
    if not rows and not malformed:
        raise SchemaError("the file has a header but no rows")
    return header, rows, row_lines, malformed


def run(settings: Settings, source: str, sha256: str | None = None, batch_id: str | None = None) -> dict:
    """Ingest one file; every structural refusal happens before anything is written."""
    data = fetch(source, settings)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise SourceError(f"checksum mismatch for {source}: expected sha256 {sha256}, got {digest}")
    header, rows, row_lines, malformed = parse(data)
    batch_id = batch_id or digest[:16]

    frame = pd.DataFrame(rows, columns=header)
    result = schema.validate(frame)
    reasons = schema.reasons_by_position(result.rejected)
    rejected = [(row_lines[pos], _raw_line(rows[pos]), reason) for pos, reason in reasons.items()]
    rejected += malformed

    client = s3.client(settings)
    s3.ensure_buckets(client, settings)
    # The content hash in the key: a batch id reused for other bytes never overwrites a raw file.
    name = Path(urlparse(source).path).name or "data.csv"
    object_key = f"{settings.model_name}/batches/{batch_id}/{digest[:12]}-{name}"
    s3.put_bytes(client, settings.bucket_raw, object_key, data, "text/csv")  # the raw input is never lost

    conn = postgres.connect(settings)
    try:
        with conn, conn.cursor() as cur:
            _upsert(cur, result.valid, batch_id)
            _record_rejected(cur, rejected, batch_id)
            # the batch's checksum, for the lineage of models trained on it; a re-run refreshes the row
            cur.execute("INSERT INTO ingest_batches (batch_id, source, sha256, rows_loaded, rows_rejected)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO UPDATE SET source = EXCLUDED.source,"
                        " sha256 = EXCLUDED.sha256, rows_loaded = EXCLUDED.rows_loaded,"
                        " rows_rejected = EXCLUDED.rows_rejected, ingested_at = now()",
                        (batch_id, source, digest, len(result.valid), len(rejected)))
    finally:
        conn.close()
    summary = {
        "batch_id": batch_id,
        "rows_read": len(rows) + len(malformed),
        "rows_accepted": len(result.valid),
        "rows_rejected": len(rejected),
        "object_key": f"s3://{settings.bucket_raw}/{object_key}",
        "sha256": digest,
    }
    logger.info("ingested %s", summary)
    return summary


def _raw_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue()


def _upsert(cur, valid: pd.DataFrame, batch_id: str) -> None:
    """One COPY into a temporary table, then one upsert that touches only rows whose data or batch changed."""
    cols = list(DB_COLUMNS.values())
    cur.execute("CREATE TEMP TABLE incoming (LIKE passengers INCLUDING DEFAULTS) ON COMMIT DROP")
    frame = valid.rename(columns=DB_COLUMNS)[cols].assign(batch_id=batch_id)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False, na_rep="")
    buf.seek(0)
    cur.copy_expert(f"COPY incoming ({', '.join(cols)}, batch_id) FROM STDIN WITH (FORMAT csv, NULL '')", buf)
    data_cols = [c for c in cols if c != "passenger_id"]
    new = {c: f"EXCLUDED.{c}" for c in data_cols}
    new["survived"] = "COALESCE(EXCLUDED.survived, passengers.survived)"  # an unlabelled file never erases a label
    changed = (f"({', '.join('passengers.' + c for c in data_cols)}) IS DISTINCT FROM ({', '.join(new.values())})")
    # Every row of the file takes its batch id (`features --batch` must cover the whole file, not only
    # the rows that changed); ingested_at moves only when the data did.
    cur.execute(
        f"INSERT INTO passengers ({', '.join(cols)}, batch_id) SELECT {', '.join(cols)}, batch_id FROM incoming "
        f"ON CONFLICT (passenger_id) DO UPDATE SET "
        + ", ".join(f"{c} = {new[c]}" for c in data_cols) + ", batch_id = EXCLUDED.batch_id"
        + f", ingested_at = CASE WHEN {changed} THEN now() ELSE passengers.ingested_at END "
        f"WHERE {changed} OR passengers.batch_id IS DISTINCT FROM EXCLUDED.batch_id"
    )


def _record_rejected(cur, rejected: list[tuple[int, str, str]], batch_id: str) -> None:
    if not rejected:
        return
    from psycopg2.extras import execute_values

    execute_values(
        cur,
        "INSERT INTO passengers_rejected (batch_id, line_number, raw, reason) VALUES %s "
        "ON CONFLICT (batch_id, line_number) DO NOTHING",
        [(batch_id, line, raw, reason) for line, raw, reason in rejected],
    )
