"""Shared helper for the solver tests: a solver prototxt and its net written side by side."""

from __future__ import annotations

from pathlib import Path

# A net that trains with no data source: DummyData -> InnerProduct -> SoftmaxWithLoss.
TINY_NET = """
name: 'tiny'
layer { name: 'data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' value: 1 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""


def write_solver_prototxt(folder: Path, solver_text: str, net_text: str,
                          name: str = "solver") -> str:
    """Write ``<name>_net.prototxt`` (``net_text``) and ``<name>.prototxt`` (``solver_text``
    with a ``net:`` line naming that file) into ``folder``; returns the solver file's path."""
    net_file = folder / f"{name}_net.prototxt"
    net_file.write_text(net_text)
    solver_file = folder / f"{name}.prototxt"
    solver_file.write_text(f'net: "{net_file}"\n' + solver_text)
    return str(solver_file)
