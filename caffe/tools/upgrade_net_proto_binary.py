"""Upgrade a V0/V1 binary net (.caffemodel) to the current format.

Usage: upgrade_net_proto_binary v0_net_proto_file_in net_proto_file_out. Exit status as
upgrade_net_proto_text's: 0 on success, 1 on upgrade problems or wrong arguments, 2 when the
input cannot be parsed.
"""

from __future__ import annotations

from caffe.tools.upgrade_net_proto_text import upgrade_net_file

COMMAND = "upgrade_net_proto_binary"


def main(argv: list[str]) -> int:
    """Run ``caffe upgrade_net_proto_binary`` on ``argv`` (its flags and positional arguments);
    returns the exit status."""
    return upgrade_net_file(COMMAND, argv, binary=True)
