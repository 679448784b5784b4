"""Upgrade a solver prototxt that uses the old ``solver_type`` enum to the ``type`` string.

Usage: upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out. The output is
written even when the input needs no upgrade. Exit status: 0 on success, 1 on upgrade problems
or wrong arguments, 2 when the input cannot be parsed.
"""

from __future__ import annotations

from caffe.proto import caffe_pb2
from caffe.tools.upgrade_net_proto_text import upgrade_proto_file
from caffe.upgrade import solver_needs_upgrade, upgrade_solver_as_needed

COMMAND = "upgrade_solver_proto_text"


def main(argv: list[str]) -> int:
    """Run ``caffe upgrade_solver_proto_text`` on ``argv`` (its flags and positional arguments);
    returns the exit status."""
    return upgrade_proto_file(COMMAND, argv, "old_solver_proto_file_in", "solver_proto_file_out",
                              caffe_pb2.SolverParameter(), "solver prototxt",
                              solver_needs_upgrade, upgrade_solver_as_needed)
