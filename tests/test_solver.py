"""Solver construction, Caffe's iteration (order, lr policies, update math, iter_size, clipping,
smoothed loss, display, testing, callbacks, actions) and the errors users meet."""

import logging
import re
import textwrap

import numpy as np
import pytest

import caffe
from caffe.errors import CaffeError, ProtoError, SolverError
from caffe.proto import caffe_pb2
from caffe.solver import SolverAction, create_solver, get_solver, solver_type_list
from caffe.solvers import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)

from solver_case import write_solver_prototxt
from tolerance import EPS32, sum_order_atol

# One learnable 1x3 blob w pulled towards the input t: loss = |w - t|^2 / 2, dloss/dw = w - t.
QUAD = """
name: 'quad'
layer { name: 'target' type: 'Input' top: 't' input_param { shape { dim: 1 dim: 3 } } }
layer { name: 'p' type: 'Parameter' top: 'w' param { lr_mult: 2 decay_mult: 0.5 }
        parameter_param { shape { dim: 1 dim: 3 } } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'w' bottom: 't' top: 'loss' }
"""

# Two blobs with separate losses, for the global gradient norm.
TWO = """
name: 'two'
layer { name: 'target' type: 'Input' top: 't1' top: 't2'
        input_param { shape { dim: 1 dim: 3 } shape { dim: 1 dim: 2 } } }
layer { name: 'p1' type: 'Parameter' top: 'w1' parameter_param { shape { dim: 1 dim: 3 } } }
layer { name: 'p2' type: 'Parameter' top: 'w2' parameter_param { shape { dim: 1 dim: 2 } } }
layer { name: 'l1' type: 'EuclideanLoss' bottom: 'w1' bottom: 't1' top: 'l1' }
layer { name: 'l2' type: 'EuclideanLoss' bottom: 'w2' bottom: 't2' top: 'l2' }
"""

MLP = """
name: 'mlp'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
        inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 }
                              bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }
layer { name: 'acc' type: 'Accuracy' bottom: 'ip2' bottom: 'label' top: 'acc'
        include { phase: TEST } }
"""


def make_solver(tmp_path, solver_text, net_text=QUAD, cls=None):
    solver_file = write_solver_prototxt(tmp_path, textwrap.dedent(solver_text), net_text)
    return (cls or get_solver)(solver_file)


@pytest.fixture
def logs():
    """Messages the 'caffe' logger emits while the test runs."""
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("caffe")
    handler = Collect(level=logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def feed_mlp(net, it):
    rng = np.random.default_rng(it)
    net.blobs["data"].data[...] = rng.normal(size=(4, 3))
    net.blobs["label"].data[...] = rng.integers(0, 3, size=4)


# --- construction ------------------------------------------------------------------------------
def test_solver_types_by_string_and_legacy_enum(tmp_path):
    expected = {"SGD": SGDSolver, "Nesterov": NesterovSolver, "AdaGrad": AdaGradSolver,
                "RMSProp": RMSPropSolver, "AdaDelta": AdaDeltaSolver, "Adam": AdamSolver}
    assert solver_type_list() == sorted(expected)
    for name, cls in expected.items():
        solver = make_solver(tmp_path, f"type: '{name}' base_lr: 0.1 lr_policy: 'fixed'")
        assert type(solver) is cls and solver.type == name
        # AdaDelta and Adam keep a second history set
        n = len(solver.net.learnable_params)
        assert len(solver.history) == (2 * n if name in ("AdaDelta", "Adam") else n)
    solver = make_solver(tmp_path, "solver_type: ADAM base_lr: 0.1 lr_policy: 'fixed'")
    assert type(solver) is AdamSolver
    solver = make_solver(tmp_path, "solver_type: NESTEROV base_lr: 0.1 lr_policy: 'fixed'")
    assert type(solver) is NesterovSolver
    # pycaffe's per-class constructors take a file whatever type it names
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed'", cls=RMSPropSolver)
    assert type(solver) is RMSPropSolver


def test_solver_from_parameter_message_with_inline_nets():
    param = caffe_pb2.SolverParameter()
    param.train_net_param.CopyFrom(caffe.protoio.parse_text(MLP, caffe_pb2.NetParameter()))
    param.test_net_param.add().CopyFrom(param.train_net_param)
    param.test_iter.append(1)
    param.test_interval = 5
    param.base_lr = 0.1
    param.lr_policy = "fixed"
    param.type = "Nesterov"
    solver = get_solver(param)
    assert isinstance(solver, NesterovSolver)
    assert solver.net.phase == caffe.TRAIN and "acc" not in solver.net.blobs
    assert len(solver.test_nets) == 1 and "acc" in solver.test_nets[0].blobs
    assert solver.param.test_interval == 5 and solver.iter == 0


def test_train_state_and_test_state_select_layers(tmp_path):
    net = MLP + """
    layer { name: 'extra' type: 'ReLU' bottom: 'data' top: 'extra'
            include { stage: 'deep' min_level: 2 } }
    layer { name: 'val' type: 'ReLU' bottom: 'data' top: 'val'
            include { phase: TEST stage: 'val' } }
    """
    solver = make_solver(tmp_path, """
        base_lr: 0.1 lr_policy: 'fixed' test_iter: 1 test_iter: 1 test_interval: 10
        train_state { level: 2 stage: 'deep' }
        test_state { stage: 'val' } test_state { }
    """, net_text=net)
    assert "extra" in solver.net.layer_dict
    assert "val" in solver.test_nets[0].layer_dict
    assert "val" not in solver.test_nets[1].layer_dict
    assert "extra" not in solver.test_nets[0].layer_dict
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed' train_state { level: 1 "
                                   "stage: 'deep' }", net_text=net)
    assert "extra" not in solver.net.layer_dict


def test_random_seed_makes_fillers_reproducible(tmp_path):
    text = "base_lr: 0.1 lr_policy: 'fixed' random_seed: 7"
    a = make_solver(tmp_path, text, net_text=MLP)
    b = make_solver(tmp_path, text, net_text=MLP)
    np.testing.assert_array_equal(a.net.params["ip1"][0].data, b.net.params["ip1"][0].data)


@pytest.mark.parametrize("solver_text, match", [
    ("type: 'Adamm' base_lr: 0.1 lr_policy: 'fixed'", r"Unknown solver type: 'Adamm'.*Adam"),
    ("base_lr: 0.1 lr_policy: 'cosine'", r"Unknown learning rate policy: 'cosine'"),
    ("base_lr: 0.1 lr_policy: 'step'", r"'step' needs a positive stepsize"),
    ("base_lr: 0.1 lr_policy: 'fixed' regularization_type: 'L3'",
     r"Unknown regularization type: 'L3'"),
    ("type: 'AdaGrad' base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9",
     r"Momentum cannot be used with AdaGrad"),
    ("type: 'RMSProp' base_lr: 0.1 lr_policy: 'fixed' rms_decay: 1.5",
     r"rms_decay should lie between 0 and 1"),
    ("base_lr: 0.1 lr_policy: 'fixed' average_loss: 0", r"average_loss"),
    ("base_lr: 0.1 lr_policy: 'fixed' snapshot: 10", r"snapshot_prefix is not"),
    ("base_lr: 0.1 lr_policy: 'fixed' snapshot: 10 snapshot_prefix: '/nonexistent/dir/x'",
     r"Cannot write to snapshot prefix '/nonexistent/dir/x'"),
    ("base_lr: 0.1 lr_policy: 'fixed' test_iter: 1", r"test_interval must be positive"),
    ("base_lr: 0.1 lr_policy: 'fixed' test_interval: 1 test_state { } test_state { } "
     "test_iter: 1", r"test_state must be unspecified or specified once per test net"),
    ("base_lr: 0.1 lr_policy: 'fixed' train_net: 'x.prototxt'",
     r"must not contain more than one of these fields"),
    ("type: 'SGD' solver_type: ADAM", r"cannot be both specified"),
])
def test_bad_solver_parameters_are_clear_errors(tmp_path, solver_text, match):
    with pytest.raises(SolverError, match=match):
        make_solver(tmp_path, solver_text)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ProtoError, match=r"solver prototxt file not found: .*nope.prototxt"):
        get_solver(str(tmp_path / "nope.prototxt"))
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text("net: 'missing_net.prototxt' base_lr: 0.1 lr_policy: 'fixed'")
    with pytest.raises(ProtoError, match=r"net prototxt file not found: .*missing_net.prototxt"):
        get_solver(str(solver_file))
    solver_file.write_text("base_lr: 0.1 lr_policy: 'fixed'")
    with pytest.raises(SolverError, match=r"must specify a train net using one of these fields"):
        get_solver(str(solver_file))
    solver_file.write_text("base_lr: 0.1 lr_policy: 'fixed' bogus_field: 3")
    with pytest.raises(ProtoError, match=r"solver.prototxt:1:.*bogus_field"):
        get_solver(str(solver_file))


def test_net_path_relative_to_solver_file(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(QUAD)
    (tmp_path / "solver.prototxt").write_text("net: 'net.prototxt' base_lr: 1 lr_policy: 'fixed'")
    monkeypatch.chdir("/")
    solver = get_solver(str(tmp_path / "solver.prototxt"))
    assert solver.net.name == "quad"


def test_unset_lr_policy_fails_at_the_first_update(tmp_path):
    solver = make_solver(tmp_path, "base_lr: 0.1")
    with pytest.raises(SolverError, match=r"Unknown learning rate policy: ''"):
        solver.step(1)


# --- learning rate policies --------------------------------------------------------------------
@pytest.mark.parametrize("text, formula", [
    ("lr_policy: 'fixed'", lambda it: 0.5),
    ("lr_policy: 'step' gamma: 0.1 stepsize: 3", lambda it: 0.5 * 0.1 ** (it // 3)),
    ("lr_policy: 'exp' gamma: 0.9", lambda it: 0.5 * 0.9 ** it),
    ("lr_policy: 'inv' gamma: 0.1 power: 0.75", lambda it: 0.5 * (1 + 0.1 * it) ** -0.75),
    ("lr_policy: 'poly' power: 2 max_iter: 10", lambda it: 0.5 * (1 - it / 10) ** 2),
    ("lr_policy: 'sigmoid' gamma: -0.5 stepsize: 4",
     lambda it: 0.5 / (1 + np.exp(0.5 * (it - 4)))),
    ("lr_policy: 'multistep' gamma: 0.5 stepvalue: 2 stepvalue: 5",
     lambda it: 0.5 * 0.5 ** ((it >= 2) + (it >= 5))),
])
def test_learning_rate_policies(tmp_path, text, formula):
    solver = make_solver(tmp_path, f"base_lr: 0.5 {text}")
    for it in range(10):
        solver.iter = it
        # The rate is a product of powers of float32-rounded gamma / power (relative error u
        # each, u = eps / 2), raised to it <= 9: at most ~10u = 6e-7 relative, and never near
        # zero; so rtol alone holds.
        np.testing.assert_allclose(solver.get_learning_rate(), formula(it), rtol=1e-6)


# --- update math against numpy -----------------------------------------------------------------
def update_atol(n_iters: int, scale: float) -> float:
    """How far a float32 solver's weights and history may be from the float64 numpy reference
    after ``n_iters`` updates whose quantities (weights, targets, gradients, history, steps) stay
    below ``scale``: an update rounds each element at most 16 times (Adam's, the longest: 13
    operations and its float32 constants), each by u * scale (u = eps / 2); errors carried to
    the next update grow by less than the factor 2 that eps = 2u leaves. The bound is absolute:
    a weight or history element near zero has no relative accuracy."""
    return n_iters * 16 * EPS32 * scale


def run_quad(solver, w0, targets):
    solver.net.params["p"][0].data[...] = w0
    for t in targets:
        solver.net.blobs["t"].data[...] = t
        solver.step(1)
    return solver.net.params["p"][0].data.copy()


def test_sgd_momentum_l2_decay_multipliers_and_step_policy(tmp_path):
    solver = make_solver(tmp_path, """
        base_lr: 0.1 lr_policy: 'step' gamma: 0.5 stepsize: 2 momentum: 0.9 weight_decay: 0.1
    """)
    assert solver.net.params_lr == [2.0] and solver.net.params_weight_decay == [0.5]
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(1, 3))
    targets = rng.normal(size=(4, 1, 3))
    w, h = w0.copy(), np.zeros_like(w0)
    scale = np.abs([w0, *targets]).max()
    for it, t in enumerate(targets):
        rate = 0.1 * 0.5 ** (it // 2)
        g = (w - t) + 0.1 * 0.5 * w
        h = 0.9 * h + rate * 2 * g
        w = w - h
        scale = max(scale, np.abs([w, g, h]).max())
    atol = update_atol(len(targets), scale)
    np.testing.assert_allclose(run_quad(solver, w0, targets), w, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(solver.history[0].data, h, rtol=1e-5, atol=atol)


def test_sgd_l1_regularization(tmp_path):
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed' weight_decay: 0.2 "
                                   "regularization_type: 'L1'")
    w0 = np.array([[0.5, -0.25, 0.0]])
    t = np.array([[1.0, 1.0, 1.0]])
    expected = w0 - 0.1 * 2 * ((w0 - t) + 0.2 * 0.5 * np.sign(w0))
    # -0.25 - 0.2 * (-1.35) = 0.02 cancels: the absolute term of one update of quantities <= 1.35.
    np.testing.assert_allclose(run_quad(solver, w0, [t]), expected, rtol=1e-6,
                               atol=update_atol(1, 1.35))


@pytest.mark.parametrize("kind", ["Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_update_rules_against_numpy(tmp_path, kind):
    extra = {"Nesterov": "momentum: 0.9", "AdaGrad": "delta: 1e-6",
             "RMSProp": "rms_decay: 0.9 delta: 1e-6", "AdaDelta": "momentum: 0.95 delta: 1e-6",
             "Adam": "momentum: 0.9 momentum2: 0.99 delta: 1e-6"}[kind]
    solver = make_solver(tmp_path, f"type: '{kind}' base_lr: 0.05 lr_policy: 'fixed' {extra}")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(1, 3))
    targets = rng.normal(size=(3, 1, 3))
    w = w0.copy()
    h1, h2 = np.zeros_like(w), np.zeros_like(w)
    lr = 0.05 * 2
    scale = np.abs([w0, *targets]).max()
    for it, t in enumerate(targets):
        g = w - t
        if kind == "Nesterov":
            prev = h1.copy()
            h1 = 0.9 * h1 + lr * g
            step = 1.9 * h1 - 0.9 * prev
        elif kind == "AdaGrad":
            h1 = h1 + g * g
            step = lr * g / (np.sqrt(h1) + 1e-6)
        elif kind == "RMSProp":
            h1 = 0.9 * h1 + 0.1 * g * g
            step = lr * g / (np.sqrt(h1) + 1e-6)
        elif kind == "AdaDelta":
            h1 = 0.95 * h1 + 0.05 * g * g
            u = g * np.sqrt((h2 + 1e-6) / (h1 + 1e-6))
            h2 = 0.95 * h2 + 0.05 * u * u
            step = lr * u
        else:
            h1 = 0.9 * h1 + 0.1 * g
            h2 = 0.99 * h2 + 0.01 * g * g
            correction = np.sqrt(1 - 0.99 ** (it + 1)) / (1 - 0.9 ** (it + 1))
            step = lr * correction * h1 / (np.sqrt(h2) + 1e-6)
        w = w - step
        scale = max(scale, np.abs([w, g, h1, h2, step]).max())
    atol = update_atol(len(targets), scale)
    np.testing.assert_allclose(run_quad(solver, w0, targets), w, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(solver.history[0].data, h1, rtol=1e-5, atol=atol)
    if kind in ("AdaDelta", "Adam"):
        np.testing.assert_allclose(solver.history[1].data, h2, rtol=1e-5, atol=atol)


def test_clip_gradients_uses_the_global_norm(tmp_path, logs):
    solver = make_solver(tmp_path, "base_lr: 1 lr_policy: 'fixed' clip_gradients: 0.5",
                         net_text=TWO)
    w1, w2 = np.array([[1.0, 2.0, 0.0]]), np.array([[0.0, -2.0]])
    solver.net.params["p1"][0].data[...] = w1
    solver.net.params["p2"][0].data[...] = w2
    solver.step(1)
    g1, g2 = w1, w2  # targets are zero
    norm = np.sqrt((g1 ** 2).sum() + (g2 ** 2).sum())
    scale = 0.5 / norm
    # w - w / 6: no cancellation (the zeros stay exact), so relative error ~4u and rtol holds.
    np.testing.assert_allclose(solver.net.params["p1"][0].data, w1 - scale * g1, rtol=1e-6)
    np.testing.assert_allclose(solver.net.params["p2"][0].data, w2 - scale * g2, rtol=1e-6)
    assert any(m.startswith("Gradient clipping: scaling down gradients (L2 norm 3 > 0.5) by "
                            "scale factor 0.166667") for m in logs)


def test_iter_size_averages_loss_and_normalizes_diffs(tmp_path):
    text = "base_lr: 0.2 lr_policy: 'fixed' momentum: 0.5 random_seed: 3"
    one = make_solver(tmp_path, text, net_text=MLP)
    two = make_solver(tmp_path, text + " iter_size: 2", net_text=MLP)
    for it in range(3):
        feed_mlp(one.net, it)
        feed_mlp(two.net, it)
        one.step(1)
        two.step(1)
    # the same batch twice: averaged gradient equals the single-pass gradient, to the bit:
    # the two passes give the same float32 gradient g, and (g + g) / 2 == g exactly.
    for a, b in zip(one.net.learnable_params, two.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


def test_shared_parameters_are_updated_once(tmp_path):
    net = """
    layer { name: 'data' type: 'Input' top: 'a' top: 'b' top: 't'
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 }
                          shape { dim: 2 dim: 2 } } }
    layer { name: 'fa' type: 'InnerProduct' bottom: 'a' top: 'fa' param { name: 'w' }
            inner_product_param { num_output: 2 bias_term: false
                                  weight_filler { type: 'gaussian' std: 0.5 } } }
    layer { name: 'fb' type: 'InnerProduct' bottom: 'b' top: 'fb' param { name: 'w' }
            inner_product_param { num_output: 2 bias_term: false } }
    layer { name: 'sum' type: 'Eltwise' bottom: 'fa' bottom: 'fb' top: 's' }
    layer { name: 'loss' type: 'EuclideanLoss' bottom: 's' bottom: 't' top: 'loss' }
    """
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed'", net_text=net)
    assert len(solver.net.learnable_params) == 1 and len(solver.history) == 1
    rng = np.random.default_rng(2)
    a, b, t = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(2, 2))
    W = solver.net.params["fa"][0].data.copy()
    for name, value in (("a", a), ("b", b), ("t", t)):
        solver.net.blobs[name].data[...] = value
    solver.step(1)
    residual = (a @ W.T + b @ W.T - t) / 2
    grad = residual.T @ a + residual.T @ b
    # The same expression on absolute values bounds its float32 rounding (tolerance.py); each
    # element passes through at most 16 roundings (the residual's sums of 3 + 3 + 1 terms, the
    # gradient's of 4 products, the update).
    abs_residual = (np.abs(a) @ np.abs(W.T) + np.abs(b) @ np.abs(W.T) + np.abs(t)) / 2
    abs_sum = np.abs(W) + 0.1 * (abs_residual.T @ np.abs(a) + abs_residual.T @ np.abs(b))
    np.testing.assert_allclose(solver.net.params["fa"][0].data, W - 0.1 * grad, rtol=1e-5,
                               atol=sum_order_atol(16, abs_sum))
    np.testing.assert_array_equal(solver.net.params["fb"][0].data, solver.net.params["fa"][0].data)


# --- the iteration -------------------------------------------------------------------------------
def test_callbacks_run_in_caffes_order(tmp_path):
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed'")
    blob = solver.net.params["p"][0]
    blob.data[...] = 1.0
    events = []

    def on_start():
        events.append(("start", solver.iter, float(np.abs(blob.diff).sum())))

    def on_gradients_ready():
        events.append(("ready", solver.iter, float(blob.diff.sum()), float(blob.data.sum())))

    solver.add_callback(on_start, on_gradients_ready)

    class Obj:
        def on_start(self):
            events.append(("obj_start", solver.iter))

        def on_gradients_ready(self):
            events.append(("obj_ready", solver.iter))

    solver.add_callback(Obj())
    solver.step(2)
    # diffs are cleared before on_start; gradients are ready (not yet applied) in on_ready
    assert events[0] == ("start", 0, 0.0)
    assert events[1] == ("obj_start", 0)
    assert events[2] == ("ready", 0, 3.0, 3.0)
    assert events[3] == ("obj_ready", 0)
    assert [e[:2] for e in events[4:]] == [("start", 1), ("obj_start", 1), ("ready", 1),
                                           ("obj_ready", 1)]


def test_display_lines_and_smoothed_loss(tmp_path, logs):
    solver = make_solver(tmp_path, "base_lr: 0.3 lr_policy: 'fixed' display: 2 average_loss: 3",
                         net_text=MLP)
    losses = []
    solver.add_callback(None, lambda: losses.append(float(solver.net.blobs["loss"].data)))
    feed_mlp(solver.net, 0)
    solver.step(6)
    # Caffe 1.0's display line: speed since the previous display, display = 2 iterations
    shown = {int(m.group(1)): float(m.group(2)) for m in
             (re.match(r"Iteration (\d+) \(\S+ iter/s, \S+s/2 iters\), loss = (\S+)$", line)
              for line in logs) if m}
    assert sorted(shown) == [0, 2, 4]
    for it, value in shown.items():
        window = losses[max(0, it - 2): it + 1]
        assert value == pytest.approx(np.mean(window), rel=1e-5)
    outputs = [line for line in logs if "Train net output" in line]
    assert len(outputs) == 3
    assert re.fullmatch(r"    Train net output #0: loss = (\S+) \(\* 1 = (\S+) loss\)", outputs[0])
    assert "Iteration 0, lr = 0.3" in logs and "Iteration 4, lr = 0.3" in logs
    assert "Iteration 1, lr = 0.3" not in logs


def test_testing_schedule_and_averaged_outputs(tmp_path, logs, monkeypatch):
    (tmp_path / "counter_layer.py").write_text(textwrap.dedent("""
        import caffe

        class Counter(caffe.Layer):
            def setup(self, bottom, top):
                self.count = 0
            def reshape(self, bottom, top):
                top[0].reshape(2)
            def forward(self, bottom, top):
                self.count += 1
                top[0].data[...] = [self.count, 10 * self.count]
            def backward(self, top, propagate_down, bottom):
                pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = QUAD + """
    layer { name: 'counter' type: 'Python' top: 'count' include { phase: TEST }
            python_param { module: 'counter_layer' layer: 'Counter' } }
    """
    solver = make_solver(tmp_path, """
        base_lr: 0.1 lr_policy: 'fixed' test_iter: 3 test_interval: 2 test_compute_loss: true
        test_initialization: false
    """, net_text=net)
    solver.step(5)
    tests = [line for line in logs if "Testing net" in line]
    assert tests == ["Iteration 2, Testing net (#0)", "Iteration 4, Testing net (#0)"]
    outputs = [line for line in logs if "Test net output" in line]
    # the test net's outputs: the Euclidean loss (weighted) and the two counter elements, each
    # averaged over the 3 batches of one test: counts 1..3, then 4..6
    assert outputs[1:3] == ["    Test net output #1: count = 2",
                            "    Test net output #2: count = 20"]
    assert outputs[4:6] == ["    Test net output #1: count = 5",
                            "    Test net output #2: count = 50"]
    assert re.fullmatch(r"    Test net output #0: loss = \S+ \(\* 1 = \S+ loss\)", outputs[0])
    assert sum(line.startswith("Test loss: ") for line in logs) == 2
    # test nets share the train net's weights
    assert solver.test_nets[0].params["p"][0].data_mem is solver.net.params["p"][0].data_mem


def test_solve_snapshots_after_train_and_reports(tmp_path, logs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = make_solver(tmp_path, """
        base_lr: 0.1 lr_policy: 'fixed' max_iter: 4 display: 2 snapshot_prefix: 'out'
        test_iter: 1 test_interval: 4
    """)
    solver.solve()
    assert solver.iter == 4
    assert (tmp_path / "out_iter_4.caffemodel").exists()
    assert (tmp_path / "out_iter_4.solverstate").exists()
    assert logs.index("Solving quad") < logs.index("Learning Rate Policy: fixed")
    assert logs[-1] == "Optimization Done."
    assert "Iteration 4, Testing net (#0)" in logs
    assert any(line.startswith("Iteration 4, loss = ") for line in logs)


def test_requested_actions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed' max_iter: 10 "
                                   "snapshot_prefix: 'act' snapshot_after_train: false")
    requests = iter([SolverAction.NONE, SolverAction.SNAPSHOT, SolverAction.NONE,
                     SolverAction.STOP])
    solver.set_action_function(lambda: next(requests, SolverAction.NONE))
    solver.solve()
    assert solver.iter == 4 and solver.requested_early_exit
    assert sorted(p.name for p in tmp_path.glob("act_iter_*")) == [
        "act_iter_2.caffemodel", "act_iter_2.solverstate"]


def test_pycaffe_surface(tmp_path):
    solver = make_solver(tmp_path, "base_lr: 0.5 lr_policy: 'fixed' test_iter: 1 "
                                   "test_interval: 100")
    assert isinstance(solver.param, caffe_pb2.SolverParameter) and solver.param.base_lr == 0.5
    assert solver.net.phase == caffe.TRAIN and solver.test_nets[0].phase == caffe.TEST
    # apply_update alone: W -= lr * lr_mult * diff (no momentum)
    blob = solver.net.params["p"][0]
    blob.data[...] = 1.0
    blob.diff[...] = [[1.0, 2.0, 3.0]]
    solver.apply_update()
    np.testing.assert_allclose(blob.data, [[0.0, -1.0, -2.0]])
    assert solver.iter == 0
    other = caffe.Net(str(tmp_path / "solver_net.prototxt"), caffe.TEST)
    solver.share_weights(other)
    np.testing.assert_array_equal(other.params["p"][0].data, blob.data)
    blob.data[...] = 4.0
    assert float(other.params["p"][0].data.sum()) == 12.0
    assert "SGDSolver" in repr(solver)


def test_debug_info_logs_on_display_iterations(tmp_path, logs):
    solver = make_solver(tmp_path, "base_lr: 0.1 lr_policy: 'fixed' display: 2 debug_info: true")
    solver.step(2)
    forward = [line for line in logs if "[Forward]" in line]
    assert forward and all(line.startswith("    [Forward] Layer") for line in forward)
    assert not solver.net.debug_info  # iteration 1 is not a display iteration
    assert isinstance(SolverError("x"), CaffeError)


def test_create_solver_unknown_type_lists_known():
    param = caffe_pb2.SolverParameter(type="Lion")
    with pytest.raises(SolverError, match=r"known types: AdaDelta, AdaGrad, Adam, Nesterov"):
        create_solver(param)
