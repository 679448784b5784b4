"""The hand-written PyTorch peers of benchmarks/vs_peers.py compute caffepy's outputs.

benchmarks/peers/torch_models.py writes CaffeNet, GoogLeNet, ResNet-50 and SSD300 in torch.nn;
a mistake there (a pooling rounding rule, an LRN constant, a BatchNorm eps, a permuted head)
would put a wrong peer into the benchmark's table. Each test fills the Caffe net with the
benchmark's seeded weights (benchmarks/peers/prepare.py), loads them into the torch model and
compares the outputs on the same small batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import prepare  # noqa: E402
import torch_models  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def tolerance(ref: np.ndarray, depth: int, fan_in: int) -> float:
    """Float32 bound for two implementations of the same net summing in different orders.

    Each layer's dot products of ``fan_in`` unit-scaled terms (prepare.fill_weights scales
    every top to unit deviation) differ by ~sqrt(fan_in) * eps relative (rounding errors of a
    sum add as a random walk); ``depth`` such layers add up; a factor 4 covers the tail of the
    random walk. Relative to the largest value compared."""
    return 4 * depth * np.sqrt(fan_in) * EPS32 * float(np.abs(ref).max())


def caffe_and_torch(param, model: torch.nn.Module, x: np.ndarray):
    net = caffe.Net(param, caffe.TEST)
    prepare.fill_weights(net, x, seed=0)
    net.forward()
    params = {name: [b.data for b in blobs] for name, blobs in net.params.items()}
    torch_models.load_caffe(model, params).eval()
    return net, model


def logits_and_prob(net, model, x: np.ndarray, logits_blob: str):
    with torch.inference_mode():
        t = torch.from_numpy(x)
        return (model.logits(t).numpy(), model(t).numpy(),
                net.blobs[logits_blob].data.copy(), net.blobs["prob"].data.copy())


@pytest.mark.parametrize("name, model, size, logits_blob, depth, fan_in", [
    ("caffenet", torch_models.CaffeNet, 227, "fc8", 8, 9216),
    ("googlenet", torch_models.GoogLeNet, 224, "loss3/classifier", 22, 4800),
])
def test_classifier_matches_caffepy(name, model, size, logits_blob, depth, fan_in):
    x = np.random.default_rng(1).standard_normal((2, 3, size, size), dtype=np.float32)
    net, module = caffe_and_torch(prepare.deploy_net_param(name), model(), x)
    t_logits, t_prob, c_logits, c_prob = logits_and_prob(net, module, x, logits_blob)
    assert c_prob.shape == t_prob.shape == (2, 1000)
    # the weights make a peaked but not one-hot softmax, so the probabilities discriminate
    assert 0.01 < c_prob.max() < 0.99
    np.testing.assert_allclose(t_logits, c_logits, rtol=0,
                               atol=tolerance(c_logits, depth, fan_in))
    np.testing.assert_allclose(t_prob, c_prob, rtol=0, atol=tolerance(c_logits, depth, fan_in))


def test_resnet50_matches_caffepy():
    # 64 x 64 input (final pool 2 x 2 instead of 7 x 7): the same layers, a 12th of the work
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64), dtype=np.float32)
    net, module = caffe_and_torch(prepare.resnet50_net_param(batch=2, size=64),
                                  torch_models.ResNet50(pool=2), x)
    t_logits, t_prob, c_logits, c_prob = logits_and_prob(net, module, x, "fc1000")
    assert np.isfinite(c_prob).all() and 0.01 < c_prob.max() < 0.99
    # 50 layers along the deepest path, fan-in up to 512 * 9
    tol = tolerance(c_logits, 50, 4608)
    np.testing.assert_allclose(t_logits, c_logits, rtol=0, atol=tol)
    np.testing.assert_allclose(t_prob, c_prob, rtol=0, atol=tol)


def test_ssd300_heads_match_caffepy():
    x = np.random.default_rng(3).standard_normal((1, 3, 300, 300), dtype=np.float32)
    net, module = caffe_and_torch(prepare.deploy_net_param("ssd300"), torch_models.SSD300(),
                                  x)
    with torch.inference_mode():
        loc, conf = (t.numpy() for t in module(torch.from_numpy(x)))
    c_loc, c_conf = net.blobs["mbox_loc"].data, net.blobs["mbox_conf_flatten"].data
    assert loc.shape == c_loc.shape == (1, 8732 * 4)
    assert conf.shape == c_conf.shape == (1, 8732 * 21)
    # 15 VGG/extra convolutions and a head, fan-in up to 1024 * 9 (fc7's heads)
    np.testing.assert_allclose(loc, c_loc, rtol=0, atol=tolerance(c_loc, 16, 9216))
    np.testing.assert_allclose(conf, c_conf, rtol=0, atol=tolerance(c_loc, 16, 9216))
    # the SSD fork's DetectionOutput (not in the torch peer) still finds boxes on these weights
    assert net.blobs["detection_out"].data.shape[2] > 1


def test_load_caffe_rejects_a_mismatched_caffemodel():
    params = {"conv1": [np.zeros((96, 3, 11, 11), np.float32), np.zeros(96, np.float32)]}
    with pytest.raises(KeyError, match="conv2"):
        torch_models.load_caffe(torch_models.CaffeNet(), params)
