"""Real local services for development and tests: PostgreSQL 15, Redis and an S3 server.

Each runs as a local process on a free port with its data in one directory. Used by the
pytest session fixtures and by `make services-up` / `make services-down`:

    python -m tests.services up --dir .services   # prints `export NAME=value` lines
    python -m tests.services down --dir .services
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import requests

PG_BIN = Path("/usr/lib/postgresql/15/bin")
STATE_FILE = "services.json"


@dataclass
class Services:
    """Where the running services are; `env()` gives the settings' environment variables."""

    root: str
    pg_port: int
    redis_port: int
    s3_port: int
    s3_access_key: str
    s3_secret_key: str
    s3_pid: int
    pg_dir: str = ""
    host: str = "127.0.0.1"  # where all three listen (besides loopback); see `up`

    @property
    def database_url(self) -> str:
        return f"postgresql://titanic:titanic@{self.host}:{self.pg_port}/titanic"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "S3_ENDPOINT": f"{self.host}:{self.s3_port}",
            "S3_ACCESS_KEY": self.s3_access_key,
            "S3_SECRET_KEY": self.s3_secret_key,
            "S3_SECURE": "false",
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, what: str, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def wait_http(url: str, proc: subprocess.Popen, what: str, *, timeout: float, log: Callable[[], str] = str,
              ready: Callable[[requests.Response], bool] = lambda r: r.status_code == 200) -> None:
    """Poll `url` until `ready(response)`; fail early, with the log's tail, if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()[-3000:]}")
        try:
            if ready(requests.get(url, timeout=2)):
                return
        except requests.RequestException:
            pass  # not listening yet, or still importing
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url} within {timeout:.0f}s:\n{log()[-3000:]}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (the whole process group when it has its own session), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    own_group = os.getpgid(proc.pid) == proc.pid
    send = (lambda sig: os.killpg(proc.pid, sig)) if own_group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # e.g. uvicorn waiting for keep-alive clients
        send(signal.SIGKILL)
        proc.wait(timeout=timeout)


def stop_pid_group(pgid: int, timeout: float = 20.0) -> None:
    """stop_process for a process group that another process started (its id read from a state file)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout
        try:
            os.killpg(pgid, sig)
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)  # raises once no process of the group is left
                time.sleep(0.1)
        except ProcessLookupError:
            return


def _wait_closed(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while port and time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) != 0:
                return
        time.sleep(0.05)


def _as_postgres_user() -> list[str]:
    # initdb refuses to run as root; CI and this machine run as root.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _postgres_dir(root: Path) -> Path:
    """Where the cluster lives: under `root`, or in /tmp when running as root, because the
    postgres user may not be able to traverse root's directories (a 0700 home, pytest's tmp)."""
    if os.geteuid() != 0:
        return root / "pg"
    top = Path(tempfile.mkdtemp(prefix="titanic-pg-"))
    top.chmod(0o755)
    return top / "pg"


def _start_postgres(data: Path, host: str) -> int:
    port = free_port()
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
    run = _as_postgres_user()
    subprocess.run([*run, PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL)
    listen = ",".join(dict.fromkeys(["127.0.0.1", host]))
    # fsync off: test data is disposable and durability costs seconds per test run.
    opts = f"-p {port} -k {data} -c listen_addresses={listen} -c fsync=off -c synchronous_commit=off"
    if host != "127.0.0.1":  # clients on the host's other networks (pods on a node's bridge) log in with a password
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all samenet scram-sha-256\n")
    subprocess.run([*run, PG_BIN / "pg_ctl", "-D", data, "-o", opts, "-l", data / "log", "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    (data / "start-options").write_text(opts)  # for start(): a restart listens where clients expect it
    psql(data, port, "CREATE ROLE titanic LOGIN PASSWORD 'titanic'", "CREATE DATABASE titanic OWNER titanic")
    return port


def psql(data: Path, port: int, *statements: str) -> None:
    """Run SQL statements as the superuser of the cluster in `data` (its socket directory)."""
    cmd = [*_as_postgres_user(), "psql", "-h", str(data), "-p", str(port), "-U", "postgres", "-q", "-v", "ON_ERROR_STOP=1"]
    for statement in statements:
        cmd += ["-c", statement]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _start_redis(root: Path, host: str, port: int | None = None) -> int:
    port, data = port or free_port(), root / "redis"
    data.mkdir(exist_ok=True)
    # Protected mode refuses every client but loopback when there is no password, whatever the bind.
    protected = "yes" if host == "127.0.0.1" else "no"
    subprocess.run(["redis-server", "--port", str(port), "--bind", *dict.fromkeys(["127.0.0.1", host]),
                    "--protected-mode", protected, "--save", "", "--appendonly", "no", "--daemonize", "yes", "--dir", str(data), "--pidfile", str(data / "redis.pid"),
                    "--logfile", str(data / "log")], check=True)
    wait_for_port(port, "redis-server")
    return port


def _start_s3(root: Path, versitygw: str, host: str, port: int | None = None,
              keys: tuple[str, str] | None = None) -> tuple[int, str, str, int]:
    port, data = port or free_port(), root / "s3"
    (data / "buckets").mkdir(parents=True, exist_ok=True)
    access, secret = keys or ("dev" + secrets.token_hex(6), secrets.token_hex(20))
    env = {**os.environ, "ROOT_ACCESS_KEY": access, "ROOT_SECRET_KEY": secret}
    with open(data / "log", "ab") as log:
        proc = subprocess.Popen([versitygw, "--port", f"{host}:{port}", "posix", str(data / "buckets")],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, "versitygw", host=host)
    return port, access, secret, proc.pid


def up(root: Path, versitygw: str, host: str = "127.0.0.1") -> Services:
    """Start all three services under `root` (which must not hold running services).

    They listen on loopback and on `host`, e.g. a node's bridge address so that pods reach them (the S3
    server on `host` only: it binds one address)."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / STATE_FILE).exists():
        raise RuntimeError(f"services already running in {root}; run `make services-down` first")
    partial: dict = {"root": str(root), "pg_port": 0, "redis_port": 0, "s3_port": 0,
                     "s3_access_key": "", "s3_secret_key": "", "s3_pid": 0, "pg_dir": str(_postgres_dir(root)),
               "host": host}
    try:
        s3_port, access, secret, s3_pid = _start_s3(root, versitygw, host)
        partial.update(s3_port=s3_port, s3_access_key=access, s3_secret_key=secret, s3_pid=s3_pid)
        (root / STATE_FILE).write_text(json.dumps(partial))  # so `down` can clean up a failed start
        partial["redis_port"] = _start_redis(root, host)
        (root / STATE_FILE).write_text(json.dumps(partial))
        partial["pg_port"] = _start_postgres(Path(partial["pg_dir"]), host)
    except BaseException:
        down(root)
        raise
    services = Services(**partial)
    (root / STATE_FILE).write_text(json.dumps(asdict(services)))
    return services


def down(root: Path) -> None:
    """Stop whatever `up` started under `root` and delete its data."""
    state = root / STATE_FILE
    if state.exists():
        s = Services(**json.loads(state.read_text()))
        pg_dir = Path(s.pg_dir or root / "pg")
        if pg_dir.exists():
            subprocess.run([*_as_postgres_user(), PG_BIN / "pg_ctl", "-D", pg_dir, "-m", "immediate", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(pg_dir.parent if pg_dir.parent.name.startswith("titanic-pg-") else pg_dir, ignore_errors=True)
        pidfile = root / "redis" / "redis.pid"
        for pid in [s.s3_pid, int(pidfile.read_text()) if pidfile.exists() else None]:
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for port in (s.s3_port, s.redis_port):  # SIGTERM is asynchronous: return once they are gone
            _wait_closed(port, host=s.host)
    shutil.rmtree(root, ignore_errors=True)


def stop(s: Services, service: str) -> None:
    """Stop one service of `s` ("postgres", "redis" or "s3") as an outage would, keeping its data for `start`."""
    root = Path(s.root)
    if service == "postgres":
        subprocess.run([*_as_postgres_user(), PG_BIN / "pg_ctl", "-D", s.pg_dir, "-m", "fast", "-w", "stop"],
                       check=True, stdout=subprocess.DEVNULL)
    elif service == "redis":
        # SHUTDOWN SAVE: the restart finds its data, as a Redis with persistence would
        subprocess.run(["redis-cli", "-p", str(s.redis_port), "shutdown", "save"], stdout=subprocess.DEVNULL)
        (root / "redis" / "redis.pid").unlink(missing_ok=True)
    elif service == "s3":
        os.kill(s.s3_pid, signal.SIGKILL)
    else:
        raise ValueError(service)
    _wait_closed({"postgres": s.pg_port, "redis": s.redis_port, "s3": s.s3_port}[service], host=s.host)


@contextlib.contextmanager
def stopped(s: Services, service: str, versitygw: str):
    """`stop` for the length of a `with` block, `start` again however the block is left."""
    stop(s, service)
    try:
        yield
    finally:
        start(s, service, versitygw)


def start(s: Services, service: str, versitygw: str) -> None:
    """Start a service that `stop` stopped, on its old port with its old data (and credentials)."""
    root = Path(s.root)
    if service == "postgres":
        opts = (Path(s.pg_dir) / "start-options").read_text()
        subprocess.run([*_as_postgres_user(), PG_BIN / "pg_ctl", "-D", s.pg_dir, "-o", opts, "-l",
                        Path(s.pg_dir) / "log", "-w", "start"], check=True, stdout=subprocess.DEVNULL)
    elif service == "redis":
        _start_redis(root, s.host, s.redis_port)
    elif service == "s3":
        s.s3_pid = _start_s3(root, versitygw, s.host, s.s3_port, (s.s3_access_key, s.s3_secret_key))[3]
        (root / STATE_FILE).write_text(json.dumps(asdict(s)))  # so `down` stops the new process
    else:
        raise ValueError(service)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default=".services", help="directory for data, logs and pids (default: %(default)s)")
    parser.add_argument("--versitygw", default="bin/versitygw", help="S3 server binary (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on besides loopback (default: %(default)s)")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    if args.action == "down":
        down(root)
        return 0
    services = up(root, args.versitygw, args.host)
    for name, value in services.env().items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
