"""gflags-style command-line flags, as Caffe's tools take them.

Accepts ``-flag value``, ``-flag=value``, ``--flag value`` and ``--flag=value``; booleans also
as ``-flag`` / ``-noflag``. Positional arguments are returned in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe.errors import CaffeError


@dataclass
class Flag:
    name: str
    default: object
    help: str
    kind: type = str


@dataclass
class FlagSet:
    """A tool's flags: declare with ``define``, then ``parse(argv)``."""

    program: str
    usage: str = ""
    flags: dict[str, Flag] = field(default_factory=dict)

    def define(self, name: str, default: object, help: str = "") -> FlagSet:
        kind = type(default) if default is not None else str
        self.flags[name] = Flag(name, default, help, kind)
        return self

    def help_text(self) -> str:
        lines = [f"{self.program}: {self.usage}".rstrip(), "", "Flags:"]
        for flag in self.flags.values():
            lines.append(f"  -{flag.name} ({flag.help}) type: {flag.kind.__name__} "
                         f"default: {flag.default!r}")
        return "\n".join(lines)

    def parse(self, argv: list[str]) -> tuple[dict[str, object], list[str]]:
        values = {name: flag.default for name, flag in self.flags.items()}
        positional: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in ("-help", "--help", "-h"):
                raise SystemExit(self.help_text())
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
                known = ", ".join("-" + n for n in self.flags)
                raise CaffeError(f"{self.program}: unknown command line flag '{name}' "
                                 f"(known flags: {known})")
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
                        raise CaffeError(f"{self.program}: flag '-{name}' is missing its value")
                    value = argv[i + 1]
                    i += 1
                try:
                    values[name] = flag.kind(value) if flag.kind is not str else value
                except ValueError:
                    raise CaffeError(f"{self.program}: flag '-{name}' expects a "
                                     f"{flag.kind.__name__}, got {value!r}") from None
            i += 1
        return values, positional


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
