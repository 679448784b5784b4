"""Logging in glog's line format, so that Caffe log parsers read caffepy's logs."""

from __future__ import annotations

import logging
import os
import sys
import time

_LEVELS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
           logging.CRITICAL: "F"}

logger = logging.getLogger("caffe")


class GlogFormatter(logging.Formatter):
    """``I1122 00:19:10.123456 12345 solver.py:42] message``."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1e6)
        prefix = (f"{_LEVELS.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                  f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                  f"{os.getpid():5d} {record.filename}:{record.lineno}] ")
        return prefix + record.getMessage()


def install_glog_handler(stream=None, level: int = logging.INFO) -> logging.Handler:
    """Send the ``caffe`` logger to ``stream`` (default stderr, as glog) in glog format."""
    for handler in list(logger.handlers):
        if getattr(handler, "_caffe_glog", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(GlogFormatter())
    handler._caffe_glog = True
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
