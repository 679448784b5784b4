"""score a model

Usage: caffe test -model net.prototxt -weights net.caffemodel[,more.caffemodel] [-iterations N]
[-gpu id] [-phase TRAIN|TEST] [-level N] [-stage s1,s2].

As Caffe's ``caffe test``: builds the net (TEST phase unless ``-phase`` says otherwise), loads the
weights, runs ``-iterations`` forward passes and logs every output element of every batch
("Batch k, name = v"), the mean loss ("Loss: x") and each output's mean over the batches
("name = mean (* weight = x loss)").
"""

from __future__ import annotations

import logging

import numpy as np

from caffe.errors import CaffeError
from caffe.proto import caffe_pb2
from caffe.solver import output_lines
from caffe.tools.train import net_from_flags, parse_flags, parse_iterations

COMMAND = "test"

log = logging.getLogger("caffe")


def main(argv: list[str]) -> int:
    """Run ``caffe test`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
    flags = parse_flags(COMMAND, argv)
    if not flags["model"]:
        raise CaffeError("Need a model definition to score (-model net.prototxt).")
    if not flags["weights"]:
        raise CaffeError("Need model weights to score (-weights net.caffemodel).")
    iterations = parse_iterations(flags)
    net = net_from_flags(flags, caffe_pb2.TEST)
    for weights in (w for w in flags["weights"].split(",") if w):
        net.copy_from(weights)
    log.info("Running for %d iterations.", iterations)

    scores = None
    loss = 0.0
    for i in range(iterations):
        loss += net.forward_prefilled()
        values = []
        for name in net.outputs:
            for score in net.blobs[name].cpu_data().reshape(-1):
                log.info("Batch %d, %s = %s", i, name, f"{float(score):g}")
                values.append(float(score))
        batch = np.asarray(values, dtype=np.float64)
        scores = batch if scores is None else scores + batch
    log.info("Loss: %s", f"{float(np.float32(loss / iterations)):g}")
    for line in output_lines(net, "Test", scores / iterations, numbered=False):
        log.info("%s", line)
    return 0
