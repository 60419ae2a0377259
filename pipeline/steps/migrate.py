"""Migrate step: apply pending SQL migrations (also done automatically by every step that needs them)."""

import argparse

from pipeline.settings import Settings
from pipeline.store import postgres


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(settings: Settings) -> dict:
    conn = postgres.connect(settings, migrated=False)
    try:
        return {"applied": postgres.migrate(conn)}
    finally:
        conn.close()
