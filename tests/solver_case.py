"""Shared helper for the solver tests: a solver prototxt and its net written side by side."""

from __future__ import annotations

from pathlib import Path


def write_solver_prototxt(folder: Path, solver_text: str, net_text: str,
                          name: str = "solver") -> str:
    """Write ``<name>_net.prototxt`` (``net_text``) and ``<name>.prototxt`` (``solver_text``
    with a ``net:`` line naming that file) into ``folder``; returns the solver file's path."""
    net_file = folder / f"{name}_net.prototxt"
    net_file.write_text(net_text)
    solver_file = folder / f"{name}.prototxt"
    solver_file.write_text(f'net: "{net_file}"\n' + solver_text)
    return str(solver_file)
