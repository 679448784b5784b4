"""Float proto fields read as Caffe's float under every protobuf backend (caffe.proto.floats).

protobuf's pure-Python backend gives an unset float field's default as the double parsed from
the schema (BatchNormParameter.eps: 1e-05), where the C++/upb backends and C++ Caffe give the
float32 value (9.99999974738e-06); layers and solvers must compute the same numbers under both.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor

from caffe.proto import caffe_pb2
from caffe.proto.floats import float_field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _float_fields_with_defaults():
    """(message class, field name, schema default) for every singular float field with an
    explicit default in caffe.proto (the backends disagree where it is no exact float32)."""
    found = []

    def walk(cls):
        for field in cls.DESCRIPTOR.fields:
            if field.type == FieldDescriptor.TYPE_FLOAT and field.has_default_value \
                    and isinstance(getattr(cls(), field.name), float):
                found.append((cls, field.name, field.default_value))
        for nested in cls.DESCRIPTOR.nested_types:
            walk(getattr(cls, nested.name))

    for name in caffe_pb2.DESCRIPTOR.message_types_by_name:
        walk(getattr(caffe_pb2, name))
    return found


def test_float_field_gives_float32_defaults_and_values():
    fields = _float_fields_with_defaults()
    names = {(cls.__name__, name) for cls, name, _ in fields}
    assert {("BatchNormParameter", "eps"), ("BatchNormParameter", "moving_average_fraction"),
            ("MVNParameter", "eps"), ("SolverParameter", "delta"),
            ("SolverParameter", "momentum2"), ("SolverParameter", "rms_decay")} <= names
    for cls, name, default in fields:
        value = float_field(cls(), name)
        assert type(value) is float
        assert value == float(np.float32(default)), (cls.__name__, name)
    assert float_field(caffe_pb2.BatchNormParameter(), "eps") == float(np.float32(1e-5)) != 1e-5
    assert float_field(caffe_pb2.SolverParameter(), "momentum2") == float(np.float32(0.999))
    param = caffe_pb2.LRNParameter(alpha=0.0001)
    assert float_field(param, "alpha") == float(np.float32(0.0001)) != 0.0001


# The float fields whose schema default is no exact float32: the ones whose reads must go
# through float_field (caffe/proto/floats.py names them too).
INEXACT_DEFAULTS = {
    ("SolverParameter", "delta"), ("SolverParameter", "momentum2"),
    ("SolverParameter", "rms_decay"), ("BatchNormParameter", "moving_average_fraction"),
    ("BatchNormParameter", "eps"), ("MVNParameter", "eps"), ("NormalizeParameter", "eps"),
    ("NonMaximumSuppressionParameter", "nms_threshold"), ("HardSigmoidParameter", "alpha"),
}


def test_the_fields_with_inexact_float_defaults_are_known():
    inexact = {(cls.__name__, name) for cls, name, default in _float_fields_with_defaults()
               if float(np.float32(default)) != float(str(np.float32(default)))}
    assert inexact == INEXACT_DEFAULTS, (
        "a float field's default is not exactly a float32: read it with "
        "caffe.proto.floats.float_field and list it here and in caffe/proto/floats.py")


def test_float_field_refuses_fields_that_are_not_singular_floats():
    with pytest.raises(TypeError, match=r"caffe.EltwiseParameter.coeff is not a singular float"):
        float_field(caffe_pb2.EltwiseParameter(), "coeff")
    with pytest.raises(TypeError, match=r"caffe.SolverParameter.max_iter is not"):
        float_field(caffe_pb2.SolverParameter(), "max_iter")


# Run in a child process under a chosen backend: the layers' float64 results with default eps
# (float64 blobs keep the double / float32 difference of eps visible), and one step of each
# solver whose defaults are inexact floats (float32 blobs; 1 - 0.999 differs in its 8th digit).
CHILD = textwrap.dedent("""
    import pathlib
    import sys
    import numpy as np
    import torch
    from google.protobuf.internal import api_implementation
    sys.path.insert(0, {tests!r})
    import caffe
    from caffe.blob import Blob
    from caffe.proto import caffe_pb2
    from layer_case import make_layer, random_blobs
    from solver_case import write_solver_prototxt

    out = {{"backend": np.array(api_implementation.Type())}}
    bn = make_layer("type: 'BatchNorm'", phase="TEST")
    bottom, top = random_blobs([(2, 3, 2, 2)], seed=1), [Blob(dtype=torch.float64)]
    bn.SetUp(bottom, top)
    for blob in bn.blobs:
        blob.data[...] = 0
    bn.Forward(bottom, top)
    out["bn_x"], out["bn_top"] = bottom[0].data.copy(), top[0].data.copy()
    out["bn_eps"], out["bn_f"] = np.array(bn.eps), np.array(bn.moving_average_fraction)
    mvn = make_layer("type: 'MVN'")
    top = [Blob(dtype=torch.float64)]
    mvn.SetUp(bottom, top)
    mvn.Forward(bottom, top)
    out["mvn_top"], out["mvn_eps"] = top[0].data.copy(), np.array(mvn.eps)
    net = '''
    layer {{ name: 't' type: 'Input' top: 't' input_param {{ shape {{ dim: 1 dim: 3 }} }} }}
    layer {{ name: 'p' type: 'Parameter' top: 'w' parameter_param {{ shape {{ dim: 1 dim: 3 }} }} }}
    layer {{ name: 'loss' type: 'EuclideanLoss' bottom: 'w' bottom: 't' top: 'loss' }}
    '''
    for kind in ("Adam", "RMSProp", "AdaGrad", "AdaDelta"):
        folder = pathlib.Path({folder!r}) / kind
        folder.mkdir()
        solver = caffe.get_solver(write_solver_prototxt(
            folder, f"type: '{{kind}}' base_lr: 0.1 lr_policy: 'fixed' max_iter: 2", net))
        solver.net.params["p"][0].data[...] = [[0.5, -0.25, 2e-4]]
        solver.net.blobs["t"].data[...] = [[1.0, 1.0, 1.0]]
        solver.step(2)
        out[kind] = solver.net.params["p"][0].data.copy()
    np.savez(sys.argv[1], **out)
""")


def _run_child(tmp_path, backend):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    if backend is not None:
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = backend
    folder = tmp_path / (backend or "default")
    folder.mkdir()
    code = CHILD.format(tests=os.path.join(REPO, "tests"), folder=str(folder))
    proc = subprocess.run([sys.executable, "-c", code, str(folder / "out.npz")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(folder / "out.npz") as npz:
        return {k: npz[k] for k in npz.files}


def test_pure_python_protobuf_computes_with_caffes_float_defaults(tmp_path):
    python = _run_child(tmp_path, "python")
    assert str(python["backend"]) == "python"
    eps = float(np.float32(1e-5))
    assert float(python["bn_eps"]) == eps and float(python["bn_f"]) == float(np.float32(0.999))
    assert float(python["mvn_eps"]) == float(np.float32(1e-9))
    # Zero scale factor: zero statistics, y = x / sqrt(eps): a few float64 roundings (~1e-16
    # relative), where the double 1e-5 would be 1.3e-8 off.
    np.testing.assert_allclose(python["bn_top"], python["bn_x"] / np.sqrt(eps), rtol=1e-12)
    # The default backend (C++ or upb: float32 defaults of its own) computes the same bits.
    default = _run_child(tmp_path, None)
    for key in ("bn_top", "mvn_top", "Adam", "RMSProp", "AdaGrad", "AdaDelta"):
        np.testing.assert_array_equal(python[key], default[key], err_msg=key)
