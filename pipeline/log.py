"""Logging configuration: stdlib logging to stdout, configured once by entry points."""

import logging
import logging.config
import sys


def configure_logging(level: str = "INFO") -> None:
    """Apply one dictConfig; a second call (or an already configured root) is a no-op."""
    root = logging.getLogger()
    if getattr(root, "_titanic_configured", False):
        return
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": sys.stderr, "formatter": "plain"}},
            "root": {"level": level.upper(), "handlers": ["stdout"]},
        }
    )
    root._titanic_configured = True  # type: ignore[attr-defined]
