"""Titanic MLOps pipeline: ingest, features, train, evaluate and deploy steps, plus the model server."""

__version__ = "0.1.0"
