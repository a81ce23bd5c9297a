"""Log output: uvicorn's plain text by default, JSON lines with ``server.log_format = "json"``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from uvicorn.config import LOGGING_CONFIG


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's ``log_config`` for the format; JSON also covers the server's own loggers (the root)."""
    if log_format != "json":
        return LOGGING_CONFIG
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["json"], "level": "INFO"},
    }


def announcer(log_format: str) -> Callable[[str], None]:
    """How ``serve`` prints its start-up lines on stderr: as they are, or as JSON log lines."""
    if log_format != "json":
        return lambda text: print(text, file=sys.stderr)
    formatter = JsonFormatter()

    def say(text: str) -> None:
        record = logging.LogRecord("openworkbench", logging.INFO, __file__, 0, text, None, None)
        print(formatter.format(record), file=sys.stderr, flush=True)

    return say
