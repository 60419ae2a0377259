"""Fixtures of the web app tests: a KServe URL that is down, one that hangs, and app builders."""

from __future__ import annotations

import socket

import pytest

from pipeline.settings import Settings
from webapp import create_app

VALID = {
    "Name": "Cumings, Mrs. John Bradley (Florence Briggs Thayer)",
    "Sex": "female",
    "Age": 38,
    "Pclass": 1,
    "SibSp": 1,
    "Parch": 0,
    "Fare": 71.2833,
    "Embarked": "C",
    "Cabin": "C85",
}


def closed_port_url() -> str:
    """A local URL where nothing listens (the port is bound, then released): KServe is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hung_url():
    """A socket that completes the TCP handshake (kernel backlog) but never answers: KServe hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def make_app(kserve_url: str, **config):
    return create_app({"SETTINGS": Settings(kserve_url=kserve_url), **config})


@pytest.fixture
def down_app():
    """The app configured against a KServe URL where nothing listens."""
    return make_app(closed_port_url())
