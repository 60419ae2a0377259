"""Every network client gives up on a server that accepts the connection and never answers.

`SilentServer` is such a server: a real TCP listener whose accepted sockets are held open and never
written to, which is how a hung Postgres, Redis, S3 server or Kubernetes API server looks to a
client. Each call must raise a clear error and return; the 20 s bound only guards against a hang
(the clients' own defaults wait minutes or forever), it is no performance claim.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import pytest
import redis
import urllib3

from pipeline.settings import Settings
from pipeline.store import postgres, s3
from pipeline.store.feature_store import FeatureStore
from tests.integration.test_deploy import models  # noqa: F401 - fixture: v2 approved, v1 in production

pytestmark = pytest.mark.integration

HANG_GUARD = 20.0


class SilentServer:
    """Accepts TCP connections on a free port and never sends a byte; counts the connections."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # lets the accept loop see `stop`
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)  # held open, never answered

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def fails_in_bounded_time(call) -> BaseException:
    """Run `call` in a thread; it must raise, and return before HANG_GUARD. Returns the error."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"still waiting after {HANG_GUARD:.0f}s: the call hangs"
    assert "error" in outcome, f"expected an error, got {outcome.get('result')!r}"
    return outcome["error"]


def configured_timeouts(client: redis.Redis) -> tuple[float, float]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs["socket_timeout"], kwargs["socket_connect_timeout"]


def test_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("POSTGRES_CONNECT_TIMEOUT", "7")
    monkeypatch.setenv("REDIS_SOCKET_TIMEOUT", "0.25")
    monkeypatch.setenv("S3_READ_TIMEOUT", "12")
    monkeypatch.setenv("KUBE_REQUEST_TIMEOUT", "9")
    settings = Settings()
    assert (settings.postgres_connect_timeout, settings.redis_socket_timeout) == (7, 0.25)
    assert (settings.s3_read_timeout, settings.kube_request_timeout) == (12, 9)
    defaults = Settings.model_construct()
    assert all(getattr(defaults, name) for name in (
        "postgres_connect_timeout", "redis_socket_timeout", "redis_socket_connect_timeout",
        "s3_connect_timeout", "s3_read_timeout", "kube_request_timeout"))  # none disabled by default


def test_postgres_connect_gives_up(silent):
    settings = Settings(database_url=f"postgresql://titanic:titanic@127.0.0.1:{silent.port}/titanic",
                        postgres_connect_timeout=2)
    error = fails_in_bounded_time(lambda: postgres.connect(settings))
    assert isinstance(error, psycopg2.OperationalError)
    assert "timeout" in str(error).lower(), error
    assert silent.accepted  # the TCP connection was made: it is the handshake that never came


def test_feature_store_redis_gives_up(silent):
    settings = Settings(redis_url=f"redis://127.0.0.1:{silent.port}/0", redis_socket_timeout=0.5,
                        redis_socket_connect_timeout=0.5)
    store = FeatureStore(settings)
    error = fails_in_bounded_time(store.current)
    assert isinstance(error, redis.TimeoutError), repr(error)
    assert configured_timeouts(store.client) == (0.5, 0.5)  # set, not left to the library's default


def test_transformer_lookup_by_id_gives_up_on_a_hung_redis(silent):
    """The transformer reads Redis on the event loop: a hung Redis must cost a bounded wait, then an error."""
    from pipeline.serving.transformer import FeatureStoreUnavailable, TitanicTransformer

    settings = Settings(redis_url=f"redis://127.0.0.1:{silent.port}/0", redis_socket_timeout=0.5,
                        redis_socket_connect_timeout=0.5)
    # built as `python -m pipeline.serving transformer --feature_lookup` builds it
    model = TitanicTransformer("titanic", None, feature_store=FeatureStore(settings), locate=lambda v: None)
    error = fails_in_bounded_time(lambda: model._stored_features([0], [{"PassengerId": 1}], []))
    # a 503 naming the feature store (issue 13), caused by the bounded wait
    assert isinstance(error, FeatureStoreUnavailable) and isinstance(error.__cause__, redis.TimeoutError), repr(error)
    assert configured_timeouts(model.feature_store.client) == (0.5, 0.5)


def test_relay_redis_gives_up_and_the_webhook_answers(silent, settings):
    from tests.monitoring.payloads import TOKEN, alert_payload, auth
    from webapp import create_app

    # a real Postgres: the relay opens its decision log first, then reads Redis
    settings = settings.model_copy(update=dict(
        redis_url=f"redis://127.0.0.1:{silent.port}/0", redis_socket_timeout=0.5, redis_socket_connect_timeout=0.5,
        alert_webhook_token=TOKEN, airflow_api_url="http://127.0.0.1:9", kserve_url="http://127.0.0.1:9"))
    app = create_app({"SETTINGS": settings})
    client = app.test_client()
    response = None

    def post():
        nonlocal response
        response = client.post("/hooks/alertmanager", json=alert_payload(), headers=auth())
        raise RuntimeError("answered")  # fails_in_bounded_time wants an error; the answer is checked below

    error = fails_in_bounded_time(post)
    assert str(error) == "answered"
    assert response.status_code >= 500  # an error Alertmanager retries, not a worker stuck forever
    assert configured_timeouts(app.extensions["relay_redis"]) == (0.5, 0.5)


def test_s3_gives_up_after_one_retry(silent):
    settings = Settings(s3_endpoint=f"127.0.0.1:{silent.port}", s3_access_key="k", s3_secret_key="s",
                        s3_connect_timeout=1, s3_read_timeout=1)
    error = fails_in_bounded_time(lambda: s3.client(settings).bucket_exists("raw"))
    assert isinstance(error, urllib3.exceptions.MaxRetryError), repr(error)
    assert isinstance(error.reason, urllib3.exceptions.ReadTimeoutError), repr(error.reason)
    assert len(silent.accepted) == 2  # the first try and one retry; the SDK's default makes six


def kube_api(port: int):
    from kubernetes import client as k8s_client

    return k8s_client.CustomObjectsApi(k8s_client.ApiClient(k8s_client.Configuration(host=f"http://127.0.0.1:{port}")))


def test_deploy_gives_up_on_a_silent_api_server(silent, settings, models):
    from pipeline.steps import deploy

    settings = settings.model_copy(update={"kube_request_timeout": 1})
    error = fails_in_bounded_time(lambda: deploy.run(settings, "v2", api=kube_api(silent.port), serving_check=None, timeout=5))
    assert isinstance(error, urllib3.exceptions.HTTPError), repr(error)  # the GET: read timeouts, retried by the client
    assert models()["v1"] == "production"  # nothing was promoted


class _AnswersReadsOnly(BaseHTTPRequestHandler):
    """GET answers (the InferenceService, or 404 when `isvc` is None); POST and PATCH never do."""

    isvc: dict | None = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps(self.isvc or {"kind": "Status", "code": 404, "reason": "NotFound"}).encode()
        self.send_response(200 if self.isvc else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _hang(self):
        self.server.stop.wait()

    do_POST = do_PATCH = _hang


@pytest.mark.parametrize("present", [False, True], ids=["create", "patch"])
def test_deploy_write_calls_give_up(settings, models, present):
    from pipeline.steps import deploy

    handler = type("Handler", (_AnswersReadsOnly,), {"isvc": deploy.inference_service_body(
        settings.model_name, "mlops", deploy.model_uri(settings, "v1"), "titanic-model-server:test") if present else None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads, server.stop = True, threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = settings.model_copy(update={"kube_request_timeout": 1})
        error = fails_in_bounded_time(
            lambda: deploy.run(settings, "v2", api=kube_api(server.server_address[1]), serving_check=None, timeout=5))
        assert isinstance(error, urllib3.exceptions.ReadTimeoutError), repr(error)  # writes are not retried
        assert models()["v1"] == "production"
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
