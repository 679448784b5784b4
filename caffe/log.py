"""Logging as Caffe's glog does it, on Python's ``logging`` (the ``caffe`` logger).

Lines have glog's format (``I1122 00:19:10.123456 12345 solver.py:42] message``), so Caffe's
log parsers read caffepy's logs. Where they go follows glog and pycaffe:

* ``import caffe`` (glog not initialized, as in pycaffe until ``caffe.init_log()``): every
  record at or above ``GLOG_minloglevel`` goes to stderr (0 INFO, the default; 1 WARNING;
  2 ERROR; 3 FATAL), so ``solver.step`` shows its "Iteration N ..." lines.
* ``caffe.init_log([level[, stderr]])`` and the ``caffe`` command (whose ``main`` sets glog's
  ``alsologtostderr``, as Caffe's does) initialize glog: ``level`` / ``-minloglevel`` override
  ``GLOG_minloglevel``; with a log directory (``GLOG_log_dir``, ``-log_dir``) and without
  ``logtostderr`` (``GLOG_logtostderr``, ``stderr=True``, ``-logtostderr``) records also go to
  glog's files, ``<program>.<host>.<user>.log.<SEVERITY>.<yyyymmdd-hhmmss>.<pid>`` (one per
  severity, each holding that severity and the ones above) with a ``<program>.<SEVERITY>``
  symlink to the newest; stderr then gets everything with ``alsologtostderr`` and records at or
  above ``GLOG_stderrthreshold`` (default ERROR) without. One difference from glog: without a
  log directory caffepy writes no files (glog would pick /tmp) and keeps everything on stderr.

Taking control with Python's logging. The default stderr handler steps aside whenever another
handler is on a record's way: one you add to the ``caffe`` logger (or a logger under it), or to
the root logger (``logging.basicConfig(...)``; pytest's capture handlers count too, so
``caplog`` sees caffe's records). The ``caffe`` logger's level comes from ``GLOG_minloglevel``,
not from the root logger, as glog's is independent of Python's; change it with
``logging.getLogger("caffe").setLevel(...)``. :func:`use_python_logging` drops every handler
caffepy installed (also after ``init_log`` or the command line) and lets records propagate.

This module is callable: ``caffe.log("message")`` logs at INFO, as pycaffe's ``caffe.log``.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import socket
import sys
import threading
import time
import types

__all__ = ["GlogFlags", "GlogFormatter", "GlogFileHandler", "close_files", "configure", "init_log",
           "install_glog_handler", "log", "logger", "use_python_logging"]

logger = logging.getLogger("caffe")

# glog severities, by index: INFO 0, WARNING 1, ERROR 2, FATAL 3.
SEVERITIES = ("INFO", "WARNING", "ERROR", "FATAL")
_SEVERITY_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
_TRUE = ("1", "t", "true", "y", "yes")

# The attribute that marks the handlers this module installed, with their role.
_ROLE = "_caffe_glog"


def severity_index(levelno: int) -> int:
    """glog's severity of a Python level (DEBUG counts as INFO: glog has nothing below)."""
    return sum(levelno >= level for level in _SEVERITY_LEVELS[1:])


def severity_level(index: int) -> int:
    """The Python level a glog severity threshold (``minloglevel``) lets through."""
    if index <= 0:
        return logging.INFO
    if index >= len(_SEVERITY_LEVELS):
        return logging.CRITICAL + 1  # glog drops everything above FATAL's threshold too
    return _SEVERITY_LEVELS[index]


class GlogFormatter(logging.Formatter):
    """``I1122 00:19:10.123456 12345 solver.py:42] message`` (the number is the thread id)."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1e6)
        prefix = (f"{SEVERITIES[severity_index(record.levelno)][0]}"
                  f"{t.tm_mon:02d}{t.tm_mday:02d} "
                  f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                  f"{threading.get_native_id():5d} {record.filename}:{record.lineno}] ")
        text = prefix + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@dataclasses.dataclass
class GlogFlags:
    """The glog flags caffepy honours, read from ``GLOG_<name>`` as glog reads them."""

    minloglevel: int = 0
    logtostderr: bool = False
    alsologtostderr: bool = False
    stderrthreshold: int = 2
    log_dir: str = ""

    @classmethod
    def from_env(cls, environ=None) -> GlogFlags:
        """glog's settings from the ``GLOG_<name>`` environment variables (defaults for unset
        ones)."""
        environ = os.environ if environ is None else environ
        flags = cls()
        for field in dataclasses.fields(cls):
            text = environ.get(f"GLOG_{field.name}")
            if text is None:
                continue
            if field.type in (bool, "bool"):
                setattr(flags, field.name, text.strip().lower() in _TRUE)
            elif field.type in (int, "int"):
                try:
                    setattr(flags, field.name, int(text))
                except ValueError:
                    pass  # glog keeps the default of a malformed number too
            else:
                setattr(flags, field.name, text)
        return flags


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to the current ``sys.stderr`` unless given a stream (so
    pytest's and users' redirections of stderr are followed)."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


class _DefaultHandler(_StderrHandler):
    """pycaffe's default: glog lines on stderr, unless another handler would get the record."""

    def handle(self, record: logging.LogRecord) -> bool:
        if _reaches_other_handler(record, self):
            return False
        return super().handle(record)


def _reaches_other_handler(record: logging.LogRecord, ours: logging.Handler) -> bool:
    """Whether ``record`` propagates to a handler other than ``ours`` (the rule Python uses to
    decide on its last-resort handler)."""
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        # Any other handler counts, whatever its level: a handler set to WARNING means "no
        # INFO here", not "INFO to caffe's stderr handler".
        if any(h is not ours for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


class GlogFileHandler(logging.Handler):
    """glog's log files in ``log_dir``: one per severity, created with the first record of that
    severity, each holding that severity and the ones above, with a ``<program>.<SEVERITY>``
    symlink to it."""

    def __init__(self, log_dir: str | os.PathLike, program: str) -> None:
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.program = program
        self.files: dict[int, object] = {}
        self.paths: dict[int, str] = {}
        self.setFormatter(GlogFormatter())

    def file_name(self, severity: int, created: float) -> str:
        """glog's log file name: ``<program>.<host>.<user>.log.<SEVERITY>.<date>-<time>.<pid>``."""
        t = time.localtime(created)
        return (f"{self.program}.{socket.gethostname()}.{_user_name()}.log."
                f"{SEVERITIES[severity]}.{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}-"
                f"{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}.{os.getpid()}")

    def _open(self, severity: int, created: float):
        name = self.file_name(severity, created)
        path = os.path.join(self.log_dir, name)
        os.makedirs(self.log_dir, exist_ok=True)
        f = open(path, "a", encoding="utf-8")
        t = time.localtime(created)
        f.write(f"Log file created at: {t.tm_year:04d}/{t.tm_mon:02d}/{t.tm_mday:02d} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}\n"
                f"Running on machine: {socket.gethostname()}\n"
                f"Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
        link = os.path.join(self.log_dir, f"{self.program}.{SEVERITIES[severity]}")
        try:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(name, link)
        except OSError:
            pass  # as glog: no symlink (e.g. on a file system without them) is not an error
        self.files[severity] = f
        self.paths[severity] = path
        return f

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            for severity in range(severity_index(record.levelno), -1, -1):
                f = self.files.get(severity) or self._open(severity, record.created)
                f.write(line)
                f.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
        super().close()


def _user_name() -> str:
    name = os.environ.get("USER")
    if not name:
        try:
            name = getpass.getuser()
        except Exception:
            name = ""
    return name or "invalid-user"


def _remove_handlers(*roles: str) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, _ROLE, None) in roles:
            logger.removeHandler(handler)
            handler.close()


def _add(handler: logging.Handler, role: str) -> logging.Handler:
    if handler.formatter is None:
        handler.setFormatter(GlogFormatter())
    setattr(handler, _ROLE, role)
    logger.addHandler(handler)
    return handler


def install_default_handler() -> None:
    """What ``import caffe`` does: the step-aside stderr handler, the level from
    ``GLOG_minloglevel``. Nothing changes when glog was already initialized."""
    if any(getattr(h, _ROLE, None) for h in logger.handlers):
        return
    logger.setLevel(severity_level(GlogFlags.from_env().minloglevel))
    _add(_DefaultHandler(), "default")


def configure(program: str, flags: GlogFlags | None = None) -> list[logging.Handler]:
    """Initialize glog for ``program``: stderr and, with ``flags.log_dir``, glog's files (see
    the module docstring). Replaces the handlers installed here before; the records no longer
    propagate to the root logger (glog owns the output now). Returns the new handlers."""
    flags = GlogFlags.from_env() if flags is None else flags
    _remove_handlers("default", "stderr", "file")
    level = severity_level(flags.minloglevel)
    logger.setLevel(level)
    logger.propagate = False
    handlers = []
    to_files = bool(flags.log_dir) and not flags.logtostderr
    if to_files:
        handlers.append(_add(GlogFileHandler(flags.log_dir, program), "file"))
    stderr = _StderrHandler()
    if to_files and not flags.alsologtostderr:
        stderr.setLevel(max(level, severity_level(flags.stderrthreshold)))
    handlers.append(_add(stderr, "stderr"))
    return handlers


def install_glog_handler(stream=None, level: int = logging.INFO) -> logging.Handler:
    """Send the ``caffe`` logger to ``stream`` (default: the current stderr) in glog format at
    ``level``, in place of the stderr handler installed before (keeping its threshold); glog's
    files, if any, stay."""
    previous = [h for h in logger.handlers if getattr(h, _ROLE, None) == "stderr"]
    _remove_handlers("default", "stderr")
    handler = _StderrHandler(stream)
    if previous:
        handler.setLevel(previous[0].level)
    _add(handler, "stderr")
    logger.setLevel(level)
    logger.propagate = False
    return handler


def init_log(level: int | None = None, stderr: bool | None = None) -> None:
    """pycaffe's ``caffe.init_log()``, ``init_log(level)``, ``init_log(level, stderr)``:
    initialize glog, with ``level`` as ``minloglevel`` and ``stderr`` as ``logtostderr``."""
    flags = GlogFlags.from_env()
    if level is not None:
        flags.minloglevel = int(level)
    if stderr is not None:
        flags.logtostderr = bool(stderr)
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    # glog names the files after the program: the script's name; "python" for -c and the REPL
    configure(program if program and not program.startswith("-") else "python", flags)


def log(message: str) -> None:
    """pycaffe's ``caffe.log(message)``: ``LOG(INFO) << message``."""
    logger.info("%s", message, stacklevel=2)


def close_files() -> None:
    """Close glog's log files (the ``caffe`` command does when it ends)."""
    _remove_handlers("file")


def use_python_logging() -> None:
    """Remove every handler caffepy installed on the ``caffe`` logger and let its records
    propagate, so that Python's logging configuration alone decides where they go."""
    _remove_handlers("default", "stderr", "file")
    logger.propagate = True


class _CallableModule(types.ModuleType):
    """Lets ``caffe.log(message)`` (pycaffe's function) and ``caffe.log.init_log`` coexist."""

    def __call__(self, message: str) -> None:
        logger.info("%s", message, stacklevel=2)


sys.modules[__name__].__class__ = _CallableModule
install_default_handler()
