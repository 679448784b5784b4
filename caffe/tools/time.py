"""benchmark model execution time

Usage: caffe time -model net.prototxt [-iterations N] [-phase TRAIN|TEST] [-gpu id] [-level N]
[-stage s1,s2].

As Caffe's ``caffe time``: one warm-up forward and backward, then ``-iterations`` timed passes
running each layer's Forward (in order) and Backward (in reverse) directly. Logs each
iteration's forward-backward time, every layer's average forward and backward time, and the
averages "Average Forward pass: X ms.", "Average Backward pass: X ms.",
"Average Forward-Backward: X ms." and "Total Time: X ms.". The net is fed whatever its input
blobs hold (the benchmark assumes a net with data layers or no meaningful inputs).
"""

from __future__ import annotations

import logging

from caffe.errors import CaffeError, NetError
from caffe.proto import caffe_pb2
from caffe.timer import Timer
from caffe.tools.train import net_from_flags, parse_flags, parse_iterations

COMMAND = "time"

log = logging.getLogger("caffe")


def _run(layer, what: str, call) -> None:
    try:
        call()
    except CaffeError:
        raise
    except Exception as exc:
        raise NetError(f"layer {layer.name!r} (type {layer.type}) failed in {what}: "
                       f"{type(exc).__name__}: {exc}") from exc


def main(argv: list[str]) -> int:
    """Run ``caffe time`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
    flags = parse_flags(COMMAND, argv)
    if not flags["model"]:
        raise CaffeError("Need a model definition to time (-model net.prototxt).")
    iterations = parse_iterations(flags)
    net = net_from_flags(flags, caffe_pb2.TRAIN)
    log.info("Performing Forward")
    initial_loss = net.forward_prefilled()
    log.info("Initial loss: %s", f"{initial_loss:g}")
    log.info("Performing Backward")
    net.backward_all()

    layers = net.layers
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    total_timer = Timer()
    forward_timer = Timer()
    backward_timer = Timer()
    iter_timer = Timer()
    timer = Timer()
    forward_per_layer = [0.0] * len(layers)
    backward_per_layer = [0.0] * len(layers)
    forward_time = 0.0
    backward_time = 0.0
    total_timer.start()
    for j in range(iterations):
        iter_timer.start()
        forward_timer.start()
        for i, layer in enumerate(layers):
            timer.start()
            _run(layer, "forward",
                 lambda i=i, layer=layer: layer.Forward(net.bottom_vecs[i], net.top_vecs[i]))
            forward_per_layer[i] += timer.microseconds()
        forward_time += forward_timer.microseconds()
        backward_timer.start()
        # Caffe times every layer's Backward, needed or not (parameter gradients still run).
        for i in reversed(range(len(layers))):
            layer = layers[i]
            timer.start()
            _run(layer, "backward",
                 lambda i=i, layer=layer: layer.Backward(net.top_vecs[i],
                                                         net.bottom_need_backward[i],
                                                         net.bottom_vecs[i]))
            backward_per_layer[i] += timer.microseconds()
        backward_time += backward_timer.microseconds()
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1,
                 f"{iter_timer.milliseconds():g}")
    log.info("Average time per layer: ")
    for i, layer in enumerate(layers):
        name = layer.layer_param.name
        log.info("%10s\tforward: %s ms.", name, f"{forward_per_layer[i] / 1000 / iterations:g}")
        log.info("%10s\tbackward: %s ms.", name, f"{backward_per_layer[i] / 1000 / iterations:g}")
    total_timer.stop()
    log.info("Average Forward pass: %s ms.", f"{forward_time / 1000 / iterations:g}")
    log.info("Average Backward pass: %s ms.", f"{backward_time / 1000 / iterations:g}")
    log.info("Average Forward-Backward: %s ms.", f"{total_timer.milliseconds() / iterations:g}")
    log.info("Total Time: %s ms.", f"{total_timer.milliseconds():g}")
    log.info("*** Benchmark ends ***")
    return 0
