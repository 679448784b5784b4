"""Writes the benchmark's nets, weights and inputs into a folder (run with this repo's Python).

    python benchmarks/peers/prepare.py OUT_DIR --nets caffenet,googlenet [--seed 0]

For each net: ``<net>_deploy.prototxt`` (TEST, batch 1; peers reshape), ``<net>.caffemodel``
(random weights, filled and saved by caffepy, read by every peer), ``<net>_input.npy`` (10
images), and for CaffeNet and GoogLeNet ``<net>_train_b<N>.prototxt`` (Input data + label,
SoftmaxWithLoss, xavier fillers) for ``caffe time``. Prints a JSON manifest on stdout.

Weights: every Convolution/InnerProduct gets gaussian weights and small uniform biases, then
both are rescaled so that its top has unit standard deviation on the input (3 for the final
classifier, so the softmax is neither flat nor one-hot); each BatchNorm gets its bottom's
per-channel mean and variance (positive) as its statistics, each Scale a gamma near 1 and a
small beta. Data-dependent like LSUV initialization: outputs are neither NaN nor degenerate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import caffe  # noqa: E402
from caffe import layers as L  # noqa: E402
from caffe import params as P  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

MODELS = ROOT / "tests" / "models"
#: net -> (deploy source, input C,H,W, outputs dumped for the agreement check)
NETS = {
    "caffenet": (MODELS / "zoo" / "bvlc_reference_caffenet_deploy.prototxt", (3, 227, 227),
                 ["prob"]),
    "googlenet": (MODELS / "zoo" / "bvlc_googlenet_deploy.prototxt", (3, 224, 224), ["prob"]),
    "resnet50": (None, (3, 224, 224), ["prob"]),
    "ssd300": (MODELS / "ssd300_vgg16_voc0712_deploy.prototxt", (3, 300, 300),
               ["detection_out", "mbox_loc", "mbox_conf_flatten"]),
}
TRAINABLE = ("caffenet", "googlenet")
INPUT_IMAGES = 10


def _bn_scale(n: caffe.NetSpec, suffix: str, x):
    n[f"bn{suffix}"] = L.BatchNorm(x, use_global_stats=True, in_place=True)
    n[f"scale{suffix}"] = L.Scale(n[f"bn{suffix}"], bias_term=True, in_place=True)
    return n[f"scale{suffix}"]


def resnet50_net_param(batch: int = 1, size: int = 224) -> caffe_pb2.NetParameter:
    """ResNet-50 as MSRA's deploy net lays it out (conv without bias + BatchNorm + Scale in
    place + ReLU in place, Eltwise sum, global AVE pool, fc1000, Softmax) on a ``size`` x
    ``size`` input (a multiple of 32; the final pool is size/32 wide: 7 at 224)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, size, size]))
    n.conv1 = L.Convolution(n.data, num_output=64, kernel_size=7, stride=2, pad=3,
                            bias_term=False)
    n.conv1_relu = L.ReLU(_bn_scale(n, "_conv1", n.conv1), in_place=True)
    n.pool1 = L.Pooling(n.conv1_relu, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    x, cin = n.pool1, 64
    for stage, count, mid, cout in ((2, 3, 64, 256), (3, 4, 128, 512), (4, 6, 256, 1024),
                                    (5, 3, 512, 2048)):
        for i in range(count):
            name = f"{stage}{'abcdef'[i]}"
            stride = 2 if i == 0 and stage > 2 else 1
            if cin != cout or stride != 1:
                n[f"res{name}_branch1"] = L.Convolution(x, num_output=cout, kernel_size=1,
                                                        stride=stride, bias_term=False)
                short = _bn_scale(n, f"{name}_branch1", n[f"res{name}_branch1"])
            else:
                short = x
            y = x
            for b, width, kernel, s in (("2a", mid, 1, stride), ("2b", mid, 3, 1),
                                        ("2c", cout, 1, 1)):
                n[f"res{name}_branch{b}"] = L.Convolution(y, num_output=width,
                                                          kernel_size=kernel, stride=s,
                                                          pad=kernel // 2, bias_term=False)
                y = _bn_scale(n, f"{name}_branch{b}", n[f"res{name}_branch{b}"])
                if b != "2c":
                    n[f"res{name}_branch{b}_relu"] = L.ReLU(y, in_place=True)
                    y = n[f"res{name}_branch{b}_relu"]
            n[f"res{name}"] = L.Eltwise(short, y)
            n[f"res{name}_relu"] = L.ReLU(n[f"res{name}"], in_place=True)
            x, cin = n[f"res{name}_relu"], cout
    n.pool5 = L.Pooling(x, pool=P.Pooling.AVE, kernel_size=size // 32, stride=1)
    n.fc1000 = L.InnerProduct(n.pool5, num_output=1000)
    n.prob = L.Softmax(n.fc1000)
    param = n.to_proto()
    param.name = "ResNet-50"
    return param


def deploy_net_param(net: str) -> caffe_pb2.NetParameter:
    """The TEST net of ``net`` at batch 1 (SSD: without DetectionOutput's file output)."""
    source = NETS[net][0]
    if source is None:
        return resnet50_net_param()
    param = text_format.Parse(source.read_text(), caffe_pb2.NetParameter())
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = 1
        if layer.type == "DetectionOutput":
            # C++ Caffe would write VOC result files (and needs the label map) otherwise.
            layer.detection_output_param.ClearField("save_output_param")
    if param.input_shape:
        param.input_shape[0].dim[0] = 1
    return param


def train_net_param(net: str, batch: int) -> caffe_pb2.NetParameter:
    """The deploy net with an Input of data and label, SoftmaxWithLoss instead of Softmax and
    xavier weight fillers (``caffe time`` fills the weights itself)."""
    param = deploy_net_param(net)
    layers = list(param.layer)
    del param.layer[:]
    for layer in layers:
        if layer.type == "Input":
            layer.top.append("label")
            layer.input_param.shape[0].dim[0] = batch
            layer.input_param.shape.add().dim.append(batch)
        if layer.type == "Softmax":
            layer.type = "SoftmaxWithLoss"
            layer.bottom.append("label")
            layer.top[0] = "loss"
        if layer.type in ("Convolution", "InnerProduct"):
            getattr(layer, "convolution_param" if layer.type == "Convolution"
                    else "inner_product_param").weight_filler.type = "xavier"
        param.layer.append(layer)
    return param


def fill_weights(net: caffe.Net, x: np.ndarray, seed: int = 0) -> None:
    """Seeded random weights that keep every top's scale sane on input ``x`` (module doc)."""
    rng = np.random.default_rng(seed)
    data = net.inputs[0]
    net.blobs[data].reshape(*x.shape)
    net.reshape()
    net.blobs[data].data[...] = x
    learnable = [i for i, layer in enumerate(net.layers)
                 if layer.type in ("Convolution", "InnerProduct")]
    last = learnable[-1] if learnable else -1
    names = list(net._layer_names)
    for i, layer in enumerate(net.layers):
        name = names[i]
        blobs = layer.blobs
        if layer.type in ("Convolution", "InnerProduct"):
            w = blobs[0].data
            w[...] = rng.standard_normal(w.shape, dtype=np.float32) / np.sqrt(w[0].size)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.uniform(-0.1, 0.1, blobs[1].data.shape)
        elif layer.type == "BatchNorm":
            bottom = net.bottom_vecs[i][0].data
            axes = (0, *range(2, bottom.ndim))
            blobs[0].data[...] = bottom.mean(axis=axes)
            blobs[1].data[...] = bottom.var(axis=axes) + 1e-3
            blobs[2].data[...] = 1.0
        elif layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.8, 1.2, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.uniform(-0.1, 0.1, blobs[1].data.shape)
        elif layer.type == "Normalize":
            blobs[0].data[...] = 20.0  # SSD's scale filler
        elif blobs:
            raise SystemExit(f"fill_weights: no rule for layer {name!r} of type {layer.type}")
        net.forward(start=name, end=name)
        if layer.type in ("Convolution", "InnerProduct"):
            std = float(net.top_vecs[i][0].data.std())
            target = 3.0 if i == last else 1.0
            if std > 0:
                for blob in blobs:
                    blob.data[...] *= target / std
                net.forward(start=name, end=name)


def make_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """INPUT_IMAGES images of ``shape``, standard normal (as mean-subtracted, scaled pixels)."""
    return np.random.default_rng(seed + 1).standard_normal((INPUT_IMAGES, *shape),
                                                           dtype=np.float32)


def prepare(out: Path, nets: list[str], train_batches: list[int], seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name in nets:
        _, shape, outputs = NETS[name]
        deploy = out / f"{name}_deploy.prototxt"
        deploy.write_text(text_format.MessageToString(deploy_net_param(name)))
        x = make_input(shape, seed)
        np.save(out / f"{name}_input.npy", x)
        net = caffe.Net(str(deploy), caffe.TEST)
        fill_weights(net, x[:1], seed)
        weights = out / f"{name}.caffemodel"
        net.save(str(weights))
        entry = {"deploy": str(deploy), "weights": str(weights),
                 "input": str(out / f"{name}_input.npy"), "outputs": outputs,
                 "shape": list(shape), "train": {}}
        if name in TRAINABLE:
            for batch in train_batches:
                train = out / f"{name}_train_b{batch}.prototxt"
                train.write_text(text_format.MessageToString(train_net_param(name, batch)))
                entry["train"][str(batch)] = str(train)
        manifest[name] = entry
    return manifest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--nets", default="caffenet,googlenet,resnet50,ssd300")
    p.add_argument("--train-batches", default="10")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.getLogger("caffe").setLevel(logging.WARNING)
    caffe.set_mode_cpu()
    manifest = prepare(args.out, args.nets.split(","),
                       [int(b) for b in args.train_batches.split(",") if b], args.seed)
    print("MANIFEST " + json.dumps(manifest), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
