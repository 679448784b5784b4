"""The ``caffe`` command: ``caffe <command> [flags]``.

Each module in ``caffe.tools`` that defines ``COMMAND`` (its name) and ``main(argv)`` is a
command; the module docstring's first line is its summary.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import caffe.tools
from caffe.errors import CaffeError


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
    lines = ["caffe: command line brew", "usage: caffe <command> <args>", "", "commands:"]
    for name in sorted(table):
        doc = (table[name].__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<24} {doc[0] if doc else ''}")
    return "\n".join(lines)


def setup_logging() -> None:
    """glog-like lines on stderr: I1122 00:19:10.123456 12345 file.py:12] message."""
    from caffe.log import install_glog_handler

    install_glog_handler()


def run(name: str, argv: list[str]) -> int:
    """Run one tool by name with ``argv``; CaffeErrors become a one-line message and exit 1."""
    setup_logging()
    table = commands()
    if name not in table:
        print(usage(table), file=sys.stderr)
        return 1
    try:
        return int(table[name].main(argv) or 0)
    except CaffeError as exc:
        logging.getLogger("caffe").error("%s", exc)
        print(f"caffe {name}: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(commands()))
        return 0 if argv else 1
    return run(argv[0], argv[1:])


def tool_entry(name: str):
    """A console-script entry point for a standalone tool name (e.g. ``convert_imageset``)."""

    def entry() -> int:
        return run(name, sys.argv[1:])

    return entry


# Console scripts under Caffe's own tool names (see pyproject.toml [project.scripts]).
STANDALONE_TOOLS = ("convert_imageset", "compute_image_mean", "extract_features", "draw_net",
                    "upgrade_net_proto_text", "upgrade_net_proto_binary",
                    "upgrade_solver_proto_text", "parse_log", "plot_training_log")
for _name in STANDALONE_TOOLS:
    globals()[_name] = tool_entry(_name)


if __name__ == "__main__":
    sys.exit(main())
