"""Whole nets exported three ways (ONNX in onnxruntime, the torch module, the standalone
model.py) reproduce caffepy's forward on every output; the golden nets also C++ Caffe's.

Nets: the golden nets of tests/golden/nets (their Caffe weights) and the model-zoo deploy nets
of tests/models/zoo (random weights, batch 1; the CaffeNet family's fc6/fc7 narrowed to 256,
see export_helpers.NARROW_FC; benchmarks/bench_export.py runs full-width CaffeNet).
Tolerances: export_helpers.EXPORT_RTOL/ATOL (derived there); against C++ Caffe the golden
README's forward tolerance, as test_golden_nets.py uses it. A part whose exporter module does
not exist yet is skipped with the module's name.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe

from export_helpers import (
    GOLDEN_NETS,
    assert_close,
    exporter,
    random_feed,
    run_onnx,
    run_torch,
    zoo_net,
)
from layer_case import FWD_TOL

GOLDEN = ["lenet", "mini_inception", "mini_resnet", "legacy_v1"]
ZOO_NAMES = ["bvlc_reference_caffenet_deploy", "bvlc_alexnet_deploy", "bvlc_googlenet_deploy",
             "bvlc_reference_rcnn_ilsvrc13_deploy", "finetune_flickr_style_deploy",
             "nin_cifar10_deploy", "vgg16_style_deploy", "resnet50_style_deploy"]
NETS = [f"golden/{n}" for n in GOLDEN] + [f"zoo/{n}" for n in ZOO_NAMES]


@functools.lru_cache(maxsize=2)
def _case(key: str):
    """(net, feed, caffepy's outputs, C++ Caffe's outputs or None) for ``golden/x`` or
    ``zoo/x``; cached, as the three exporters reuse one net (the CaffeNet family holds 61M
    weights, so at most two nets are kept)."""
    kind, name = key.split("/", 1)
    if kind == "golden":
        net = caffe.Net(str(GOLDEN_NETS / f"{name}.prototxt"),
                        str(GOLDEN_NETS / f"{name}.caffemodel"), caffe.TEST)
        with np.load(GOLDEN_NETS / f"{name}.npz") as npz:
            feed = {k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith("input/")}
            cpp = {k: npz[f"blob/{k}"] for k in net.outputs}
    else:
        net = zoo_net(name)
        feed = random_feed(net)
        cpp = None
    want = {k: v.copy() for k, v in net.forward(**feed).items()}
    return net, feed, want, cpp


def _check(key: str, got: list[np.ndarray], how: str) -> None:
    net, _, want, cpp = _case(key)
    assert len(got) == len(net.outputs), f"{how}: {len(got)} outputs for {net.outputs}"
    for name, value in zip(net.outputs, got, strict=True):
        assert_close(value, want[name], f"{key} via {how}: output {name!r} against caffepy")
        if cpp is not None:
            scale = max(1.0, float(np.abs(cpp[name]).max()))
            np.testing.assert_allclose(value, cpp[name], rtol=FWD_TOL["rtol"],
                                       atol=FWD_TOL["atol"] * scale,
                                       err_msg=f"{key} via {how}: {name!r} against C++ Caffe")


@pytest.mark.parametrize("key", NETS)
def test_onnx_in_onnxruntime(key, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    to_onnx = exporter("to_onnx")
    net, feed, _, _ = _case(key)
    path = tmp_path / "model.onnx"
    to_onnx(net, path)
    _check(key, run_onnx(path, feed), "to_onnx + onnxruntime")


@pytest.mark.parametrize("key", NETS)
def test_torch_module(key):
    to_torch = exporter("to_torch")
    net, feed, _, _ = _case(key)
    module = to_torch(net).eval()
    _check(key, run_torch(module, net, feed), "to_torch")


def load_model_py(directory):
    """DIR/model.py imported by file path (no caffe on the import path is needed) and its
    class filled from DIR/weights.pt."""
    spec = importlib.util.spec_from_file_location(f"_exported_{id(directory)}",
                                                  directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    model = module.CaffeNet()
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), module


@pytest.mark.parametrize("key", NETS)
def test_standalone_model_py(key, tmp_path):
    write_pytorch = exporter("write_pytorch")
    net, feed, _, _ = _case(key)
    paths = write_pytorch(net, tmp_path / "out")
    assert {Path(p).name for p in paths.values()} >= {"model.py", "weights.pt"}
    model, _ = load_model_py(tmp_path / "out")
    tree = ast.parse((tmp_path / "out" / "model.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"torch", "math", "typing", "__future__", "collections", "os",
                        "pathlib"}, f"model.py imports {sorted(imported)}"
    _check(key, run_torch(model, net, feed), "write_pytorch model.py")


@pytest.mark.parametrize("fold", [True])
@pytest.mark.parametrize("key", ["zoo/resnet50_style_deploy", "golden/mini_resnet",
                                 "golden/mini_inception"])
def test_folded_exports(key, fold, tmp_path):
    """fold=True (BatchNorm/Scale folded, Dropout/Split dropped) in both exporters still
    reproduces the unfolded net within the export tolerance (folding only reorders roundings:
    the same derivation, each folded weight one more rounding)."""
    to_torch = exporter("to_torch")
    net, feed, _, _ = _case(key)
    _check(key, run_torch(to_torch(net, fold=fold).eval(), net, feed), "to_torch(fold=True)")
    if all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime")):
        to_onnx = exporter("to_onnx")
        to_onnx(net, tmp_path / "f.onnx", fold=fold)
        _check(key, run_onnx(tmp_path / "f.onnx", feed), "to_onnx(fold=True)")


@pytest.mark.parametrize("key", ["zoo/bvlc_reference_caffenet_deploy",
                                 "zoo/bvlc_googlenet_deploy"])
def test_torch_export_of_the_module(key):
    """torch.export traces the exported CaffeNet / GoogLeNet module to a graph that computes
    the same outputs."""
    to_torch = exporter("to_torch")
    net, feed, _, _ = _case(key)
    module = to_torch(net).eval()
    args = tuple(torch.from_numpy(feed[n]) for n in net.inputs)
    start = time.perf_counter()
    program = torch.export.export(module, args)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        result = program.module()(*args)
    result = (result,) if isinstance(result, torch.Tensor) else result
    _check(key, [r.numpy() for r in result], f"torch.export ({elapsed:.1f} s)")


def test_torch_compile_of_the_exported_caffenet():
    """torch.compile(fullgraph=True) captures the exported CaffeNet module in one graph (no
    graph breaks) and the compiled module computes the same outputs. The test uses the
    aot_eager backend (Dynamo + AOTAutograd capture, ~4 s on 2 busy cores); Inductor's code
    generation for CaffeNet and GoogLeNet, and Dynamo on GoogLeNet (~18 s here), are measured
    in benchmarks/bench_export.py instead (see benchmarks/README.md)."""
    to_torch = exporter("to_torch")
    key = "zoo/bvlc_reference_caffenet_deploy"
    net, feed, _, _ = _case(key)
    torch._dynamo.reset()
    compiled = torch.compile(to_torch(net).eval(), backend="aot_eager", fullgraph=True)
    _check(key, run_torch(compiled, net, feed), "torch.compile")


def test_zoo_files_are_what_their_generator_writes():
    """tests/models/zoo/*.prototxt are generate_zoo.py's output (edit the script, not them)."""
    from export_helpers import ZOO

    spec = importlib.util.spec_from_file_location("_generate_zoo", ZOO / "generate_zoo.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert sorted(generator.NETS) == sorted(ZOO_NAMES)
    for name, make in generator.NETS.items():
        assert (ZOO / f"{name}.prototxt").read_text() == make(), name


@pytest.mark.parametrize("name", ["resnet50_style_deploy", "nin_cifar10_deploy"])
def test_onnx_exported_at_batch_1_runs_at_batch_3(name, tmp_path):
    """dynamic_batch (the default): the graph exported from a batch-1 net runs a batch of 3
    (InnerProduct's flatten, global pooling and Softmax must not bake the batch in)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    to_onnx = exporter("to_onnx")
    net = zoo_net(name)
    to_onnx(net, tmp_path / "m.onnx")
    shape = [3, *net.blobs["data"].shape[1:]]
    net.blobs["data"].reshape(*shape)
    net.reshape()
    feed = {"data": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
    want = net.forward(**feed)
    for (key, value), got in zip(want.items(), run_onnx(tmp_path / "m.onnx", feed),
                                 strict=True):
        assert_close(got, value, f"{name} at batch 3: {key}")
