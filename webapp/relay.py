"""Alertmanager webhook relay: a firing drift alert triggers the `titanic_training` DAG."""

from __future__ import annotations

import logging

from flask import Blueprint

logger = logging.getLogger(__name__)

bp = Blueprint("relay", __name__, url_prefix="/hooks")
