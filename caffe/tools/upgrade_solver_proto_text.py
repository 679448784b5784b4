"""Upgrade a solver prototxt that uses the old ``solver_type`` enum to the ``type`` string.

Usage: upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out. The output is
written even when the input needs no upgrade. Exit status: 0 on success, 1 on upgrade problems
or wrong arguments, 2 when the input cannot be parsed.
"""

from __future__ import annotations

import logging
import os

from caffe.errors import ProtoError
from caffe.proto import caffe_pb2
from caffe.protoio import read_text_proto, write_text_proto
from caffe.tools.upgrade_net_proto_text import count_logged_errors, two_file_arguments
from caffe.upgrade import solver_needs_upgrade, upgrade_solver_as_needed

COMMAND = "upgrade_solver_proto_text"

logger = logging.getLogger("caffe")


def main(argv: list[str]) -> int:
    paths = two_file_arguments(COMMAND, argv, "old_solver_proto_file_in", "solver_proto_file_out")
    if paths is None:
        return 1
    input_file, output_file = paths
    try:
        solver_param = read_text_proto(input_file, caffe_pb2.SolverParameter(), "solver prototxt")
    except ProtoError as exc:
        logger.error("Failed to parse input text file as SolverParameter: %s (%s)", input_file,
                     exc)
        return 2
    success = True
    if solver_needs_upgrade(solver_param):
        with count_logged_errors() as errors:
            solver_param = upgrade_solver_as_needed(solver_param, os.fspath(input_file))
        if errors.count:
            success = False
            logger.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        logger.error("File already in latest proto format: %s", input_file)
    write_text_proto(output_file, solver_param)
    logger.info("Wrote upgraded SolverParameter text proto to %s", output_file)
    return 0 if success else 1
