"""`make services-up` / `services-down` for a person: export lines only, real servers, clean stop."""

import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import redis

from pipeline.settings import Settings
from pipeline.store import s3 as s3_store
from tests.conftest import REPO, VERSITYGW


def test_services_up_prints_only_exports_and_down_stops_everything():
    parent = Path(tempfile.mkdtemp(prefix="titanic-svc-test-"))
    root = parent / "svc"
    up = subprocess.run([sys.executable, "-m", "tests.services", "up", "--dir", str(root), "--versitygw", VERSITYGW],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.strip().splitlines()
    assert lines and all(re.fullmatch(r"export [A-Z0-9_]+=\S+", line) for line in lines), lines
    env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    try:
        settings = Settings(**{k.lower(): v for k, v in env.items()})
        with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user, version()")
            user, version = cur.fetchone()
        assert user == "titanic" and "PostgreSQL 15" in version
        assert redis.Redis.from_url(settings.redis_url).ping()
        client = s3_store.client(settings)
        client.make_bucket("probe")
        assert [b.name for b in client.list_buckets()] == ["probe"]
        again = subprocess.run([sys.executable, "-m", "tests.services", "up", "--dir", str(root)],
                               cwd=REPO, capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        subprocess.run([sys.executable, "-m", "tests.services", "down", "--dir", str(root)], cwd=REPO, check=True)
        shutil.rmtree(parent, ignore_errors=True)  # leave /tmp as the test found it
    assert not root.exists()
    ports = [int(env["S3_ENDPOINT"].rsplit(":", 1)[1]), int(env["REDIS_URL"].split(":")[2].split("/")[0]),
             int(env["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])]
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after down"
