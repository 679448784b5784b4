"""caffe.export.write_pytorch: standalone model.py + weights.pt that load and run without
caffepy and give the to_torch module's (and C++ Caffe's) numbers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe.errors import CaffeError
from caffe.export import to_torch, write_pytorch
from caffe.export.codegen import generate_source
from caffe.export.torch_module import build_plan
from caffe.proto import caffe_pb2

from export_helpers import golden_net
from layer_case import FWD_TOL

# Run in a fresh interpreter where any import of caffe (caffepy) fails: load each exported
# model.py by path, run it on saved inputs, save its outputs.
RUNNER = textwrap.dedent("""
    import importlib.util
    import sys

    class NoCaffe:
        def find_spec(self, name, path=None, target=None):
            if name == "caffe" or name.startswith("caffe."):
                raise ImportError("caffepy is blocked in this test")
            return None

    sys.meta_path.insert(0, NoCaffe())
    import torch

    for k, folder in enumerate(sys.argv[1:]):
        spec = importlib.util.spec_from_file_location(f"model{k}", folder + "/model.py")
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
        net = model.load(folder)
        with torch.no_grad():
            outputs = net(*torch.load(folder + "/inputs.pt"))
        torch.save(list(outputs), folder + "/outputs.pt")
    assert not any(m == "caffe" or m.startswith("caffe.") for m in sys.modules)
""")

STANDALONE_NETS = ["lenet", "mini_inception", "mini_resnet", "legacy_v1"]

SPLIT_INPLACE = """
name: 'alias'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'a' type: 'ReLU' bottom: 'data' top: 'a' }
layer { name: 'b' type: 'Power' bottom: 'a' top: 'a' power_param { shift: 1 } }
layer { name: 'c' type: 'Power' bottom: 'a' top: 'c' power_param { scale: 3 } }
layer { name: 'd' type: 'Eltwise' bottom: 'a' bottom: 'c' top: 'd'
        eltwise_param { coeff: 2 coeff: -1 } }
layer { name: 'e' type: 'Dropout' bottom: 'd' top: 'd' }
"""


def test_standalone_models_run_without_caffepy(tmp_path):
    # One subprocess for every net: starting an interpreter with torch costs seconds.
    jobs = []
    for name in STANDALONE_NETS:
        net, z = golden_net(name)
        inputs = [torch.from_numpy(z[f"input/{n}"]) for n in net.inputs]
        expected = [o.detach() for o in to_torch(net)(*inputs)]
        refs = [z[f"blob/{o}"] for o in net.outputs]
        jobs.append((name, net, inputs, expected, refs))
    alias_net = caffe.Net(text_format.Parse(SPLIT_INPLACE, caffe_pb2.NetParameter()),
                          phase=caffe.TEST)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    alias_net.blobs["data"].data[...] = x
    alias_net.forward()  # Split aliases of an in-place-updated blob must keep their values
    jobs.append(("alias", alias_net, [torch.from_numpy(x)], None,
                 [alias_net.blobs["d"].data.copy()]))
    folders = []
    for name, net, inputs, _, _ in jobs:
        folder = tmp_path / name
        paths = write_pytorch(net, folder)
        assert paths == {"model": str(folder / "model.py"),
                         "weights": str(folder / "weights.pt")}
        assert sorted(os.listdir(folder)) == ["model.py", "weights.pt"]  # no temp files left
        torch.save(inputs, folder / "inputs.pt")
        folders.append(str(folder))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Bit-equality below needs this process's thread count there too: GEMM and reduction
    # kernels split their sums by thread, so OMP_NUM_THREADS=16 would round differently.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    result = subprocess.run([sys.executable, str(runner), *folders], capture_output=True,
                            text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    for (name, _, _, expected, refs), folder in zip(jobs, folders):
        outputs = torch.load(os.path.join(folder, "outputs.pt"))
        if expected is not None:
            # The same functions on the same weights in the same order as to_torch.
            for got, want in zip(outputs, expected):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
        for got, ref in zip(outputs, refs):
            # C++ Caffe's blobs (caffepy's for "alias"); atol scaled to the values' size.
            np.testing.assert_allclose(got.numpy(), ref, rtol=FWD_TOL["rtol"],
                                       atol=FWD_TOL["atol"] * max(1.0, float(np.abs(ref).max())),
                                       err_msg=name)


def test_model_py_imports_only_torch_and_is_one_class(tmp_path):
    net, _ = golden_net("mini_resnet")
    paths = write_pytorch(net, tmp_path, class_name="MiniResNet")
    tree = ast.parse(open(paths["model"]).read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= {"torch", "math", "os", "__future__"}
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["MiniResNet"]
    source = open(paths["model"]).read()
    # Readable wiring: one call per layer, named after the blobs, with Caffe's options.
    assert "sum_ = eltwise(data, conv2, operation=ELTWISE_SUM, coeff=())" in source
    assert "def pooling(" in source and "def batch_norm(" in source
    state = torch.load(paths["weights"], weights_only=True)
    assert set(state) == set(to_torch(net).state_dict())


def test_generated_helpers_are_copies_of_caffe_functional():
    import inspect

    from caffe import functional

    net, _ = golden_net("lenet")
    source = generate_source(build_plan(net))
    for fn in (functional.convolution, functional.pooling, functional.inner_product,
               functional.pool_output_size):
        assert inspect.getsource(fn) in source


def test_non_standalone_layers_are_refused(tmp_path):
    net = caffe.Net(text_format.Parse("""
        name: 'bad'
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 } } }
        layer { name: 'py' type: 'Python' bottom: 'data' top: 'out'
                python_param { module: 'pylayers' layer: 'TimesTwo' } }
        """, caffe_pb2.NetParameter()), phase=caffe.TEST)
    with pytest.raises(CaffeError, match="'py' \\(Python"):
        write_pytorch(net, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(CaffeError, match="identifier"):
        write_pytorch(net, tmp_path / "y", class_name="not a name")
