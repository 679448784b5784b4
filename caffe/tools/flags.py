"""gflags-style command-line flags, as Caffe's tools take them.

Accepts ``-flag value``, ``-flag=value``, ``--flag value`` and ``--flag=value``; booleans also
as ``-flag`` / ``-noflag``. Positional arguments are returned in order. ``-help`` / ``--help``
prints the tool's own flags on stdout and exits with status 0; an unknown flag is an error that
names the closest known one. glog's flags (``-log_dir``, ``-minloglevel``, ...) are taken by
:func:`split_glog_flags` before a tool parses the rest.
"""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field

from caffe.errors import CaffeError
from caffe.log import GlogFlags

log = logging.getLogger("caffe")

# glog's command-line flags, which every Caffe tool takes (gflags parses them for glog).
GLOG_FLAGS = {"log_dir": "Log files are written to this directory (glog's file names).",
              "logtostderr": "Log to stderr only, write no log files.",
              "alsologtostderr": "Log to stderr as well as to the log files.",
              "minloglevel": "Drop messages below this severity (0 INFO, 1 WARNING, 2 ERROR, "
                             "3 FATAL).",
              "stderrthreshold": "With log files: copy messages at or above this severity to "
                                 "stderr."}


class HelpShown(SystemExit):
    """``-help`` was given and the help text printed: the tool ends with status 0."""

    def __init__(self) -> None:
        super().__init__(0)


@dataclass
class Flag:
    name: str
    default: object
    help: str
    kind: type = str
    # False: accepted (Caffe's tools share one flag namespace) but not this tool's; not in -help.
    own: bool = True


@dataclass
class FlagSet:
    """A tool's flags: declare with ``define``, then ``parse(argv)``."""

    program: str
    usage: str = ""
    flags: dict[str, Flag] = field(default_factory=dict)

    def define(self, name: str, default: object, help: str = "", own: bool = True) -> FlagSet:
        """Declare ``-name`` with its default (whose type is the flag's type) and help;
        ``own=False`` accepts it without listing it."""
        kind = type(default) if default is not None else str
        self.flags[name] = Flag(name, default, help, kind, own)
        return self

    def help_text(self) -> str:
        """The ``-help`` text: this tool's flags with type and default, then glog's flags."""
        lines = [f"{self.program}: {self.usage}".rstrip(), "", "Flags:"]
        for flag in self.flags.values():
            if flag.own:
                lines.append(f"  -{flag.name} ({flag.help}) type: {flag.kind.__name__} "
                             f"default: {flag.default!r}")
        lines += ["", "Logging flags (glog), also read from GLOG_<name>:"]
        lines += [f"  -{name} ({text})" for name, text in GLOG_FLAGS.items()]
        return "\n".join(lines)

    def unknown_flag(self, name: str) -> CaffeError:
        """The error for ``-name``, naming the closest known flag."""
        own = [n for n, f in self.flags.items() if f.own]
        close = difflib.get_close_matches(name, own, n=1) or difflib.get_close_matches(
            name, list(self.flags) + list(GLOG_FLAGS), n=1)
        hint = (f"did you mean -{close[0]}?" if close
                else "known flags: " + ", ".join("-" + n for n in own))
        return CaffeError(f"unknown command line flag '{name}' ({hint})")

    def parse_with_args(self, argv: list[str], counts: tuple[int, ...]
                        ) -> tuple[dict[str, object], list[str]] | None:
        """``parse``, then the tools' usage rule: with a positional-argument count not in
        ``counts``, print help_text and return None (the tool exits 1, as Caffe's do)."""
        values, args = self.parse(argv)
        if len(args) not in counts:
            print(self.help_text())
            return None
        return values, args

    def parse(self, argv: list[str]) -> tuple[dict[str, object], list[str]]:
        """Parse ``argv`` into ``({flag: value}, positional arguments)``; ``-help`` prints help_text
        and ends the tool."""
        values = {name: flag.default for name, flag in self.flags.items()}
        positional: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in ("-help", "--help", "-h", "-helpshort", "--helpshort"):
                print(self.help_text(), file=sys.stdout)
                raise HelpShown()
            if not arg.startswith("-") or arg == "-" or _is_number(arg):
                positional.append(arg)
                i += 1
                continue
            name = arg.lstrip("-")
            value: str | None = None
            if "=" in name:
                name, value = name.split("=", 1)
            flag = self.flags.get(name)
            if flag is None and name.startswith("no") and name[2:] in self.flags \
                    and self.flags[name[2:]].kind is bool and value is None:
                values[name[2:]] = False
                i += 1
                continue
            if flag is None:
                raise self.unknown_flag(name)
            if not flag.own:
                log.warning("-%s is not used by %s; ignored", name, self.program)
            if flag.kind is bool:
                if value is None:
                    if i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false", "1", "0"):
                        value = argv[i + 1]
                        i += 1
                    else:
                        value = "true"
                values[name] = value.lower() in ("true", "1", "yes")
            else:
                if value is None:
                    if i + 1 >= len(argv):
                        raise CaffeError(f"flag '-{name}' is missing its value")
                    value = argv[i + 1]
                    i += 1
                try:
                    values[name] = flag.kind(value) if flag.kind is not str else value
                except ValueError:
                    raise CaffeError(f"flag '-{name}' expects a "
                                     f"{flag.kind.__name__}, got {value!r}") from None
            i += 1
        return values, positional


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def split_glog_flags(argv: list[str], flags: GlogFlags) -> list[str]:
    """Take glog's flags out of ``argv`` into ``flags`` (overriding what ``GLOG_<name>`` set, as
    gflags does); return the other arguments in order."""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, value = arg.lstrip("-").partition("=")
        negated = name.startswith("no") and name[2:] in GLOG_FLAGS
        if not arg.startswith("-") or arg == "-" or (name not in GLOG_FLAGS and not negated):
            rest.append(arg)
            i += 1
            continue
        if negated:
            setattr(flags, name[2:], False)
            i += 1
            continue
        kind = type(getattr(flags, name))
        if kind is bool:
            # gflags: a bare -flag is true; a boolean takes its value only as -flag=value
            setattr(flags, name, value.lower() in ("", "1", "t", "true", "y", "yes"))
        else:
            if "=" not in arg:
                if i + 1 >= len(argv):
                    raise CaffeError(f"flag '-{name}' is missing its value")
                value = argv[i + 1]
                i += 1
            try:
                setattr(flags, name, kind(value))
            except ValueError:
                raise CaffeError(f"flag '-{name}' expects a {kind.__name__}, got {value!r}") \
                    from None
        i += 1
    return rest
