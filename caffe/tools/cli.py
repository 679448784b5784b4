"""The ``caffe`` command: ``caffe <command> [flags]`` (also ``python -m caffe``).

Each module in ``caffe.tools`` that defines ``COMMAND`` (its name) and ``main(argv)`` is a
command; the module docstring's first line is its summary. As Caffe's tools, every command
logs in glog's format to stderr and, given ``-log_dir`` / ``GLOG_log_dir``, to glog's log files
(see :mod:`caffe.log`). ``caffe --version`` prints the version; ``caffe <command> -help`` the
command's flags, on stdout. A failure is one ``caffe <command>: error: ...`` line on stderr
(and in the log files), exit status 1; an unknown command or flag names the closest known one.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
import sys

import caffe.tools
from caffe import log as glog
from caffe.errors import CaffeError
from caffe.tools.flags import HelpShown, split_glog_flags


def commands() -> dict[str, object]:
    """Discover the tool modules: ``{command name: module}``."""
    found = {}
    for info in pkgutil.iter_modules(caffe.tools.__path__):
        if info.name in ("cli", "flags") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"caffe.tools.{info.name}")
        name = getattr(module, "COMMAND", None)
        if name:
            found[name] = module
    return found


def usage(table: dict[str, object]) -> str:
    """The ``caffe`` help text: the command table with each module docstring's first line."""
    lines = ["caffe: command line brew", "usage: caffe <command> <args>", "", "commands:"]
    for name in sorted(table):
        doc = (table[name].__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<24} {doc[0] if doc else ''}")
    lines += ["", "caffe <command> -help lists a command's flags; caffe --version prints the "
              "version."]
    return "\n".join(lines)


def setup_logging(program: str, argv: list[str]) -> list[str]:
    """Initialize glog for ``program`` from ``GLOG_*`` and the glog flags in ``argv``, with
    ``alsologtostderr`` on (Caffe's tools set it before parsing flags); return the other
    arguments."""
    flags = glog.GlogFlags.from_env()
    flags.alsologtostderr = True
    rest = split_glog_flags(argv, flags)
    glog.configure(program, flags)
    return rest


def report_error(prog: str, exc: BaseException) -> None:
    """One line on stderr; the log files (if any) get it too, as an ERROR record."""
    message = str(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    logger = logging.getLogger("caffe")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logger.handlers:
        if isinstance(handler, glog.GlogFileHandler):
            handler.handle(record)


def run(name: str, argv: list[str], prog: str | None = None) -> int:
    """Run one tool by name with ``argv``; CaffeErrors become a one-line message and exit 1.
    ``prog`` names the program in messages and log file names (default ``caffe <name>``)."""
    prog = prog or f"caffe {name}"
    try:
        argv = setup_logging(prog.split()[0], argv)
    except CaffeError as exc:
        report_error(prog, exc)
        return 1
    table = commands()
    try:
        if name not in table:
            close = difflib.get_close_matches(name, table, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            print(f"caffe: Unknown action: {name}{hint}\n", file=sys.stderr)
            print(usage(table), file=sys.stderr)
            return 1
        return int(table[name].main(argv) or 0)
    except HelpShown:
        return 0
    except CaffeError as exc:
        report_error(prog, exc)
        return 1
    finally:
        glog.close_files()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``caffe``: ``caffe <command> [flags]``, ``--version`` or help; returns the
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "-help", "--help", "help"):
        print(usage(commands()))
        return 0 if argv else 1
    if argv[0] in ("-version", "--version"):
        print(f"caffe version {caffe.__version__}")
        return 0
    return run(argv[0], argv[1:])


def tool_entry(name: str):
    """A console-script entry point for a standalone tool name (e.g. ``convert_imageset``)."""

    def entry() -> int:
        return run(name, sys.argv[1:], prog=name)

    entry.__doc__ = f"The ``{name}`` console script: ``caffe {name}`` under Caffe's own tool name."
    return entry


# Console scripts under Caffe's own tool names (see pyproject.toml [project.scripts]).
STANDALONE_TOOLS = ("convert_imageset", "convert_annoset", "compute_image_mean",
                    "extract_features", "draw_net", "upgrade_net_proto_text",
                    "upgrade_net_proto_binary", "upgrade_solver_proto_text", "parse_log",
                    "plot_training_log")
for _name in STANDALONE_TOOLS:
    globals()[_name] = tool_entry(_name)


if __name__ == "__main__":
    sys.exit(main())
