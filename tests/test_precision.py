"""Reduced-precision inference (caffe.export.precision): precision names, devices, which layers
stay float32, and the accuracy bound of bfloat16 / float16 on the zoo nets.

The bound (also stated in docs/precision.md). With unit roundoff u (2^-8 for bfloat16, 2^-11
for float16), a layer in reduced precision rounds its input activations and its weights (each
relative error uniform in [-u, u], rms u/sqrt(3)) and its output (rms u/sqrt(3)); torch's
convolution and GEMM kernels accumulate in float32, so the n-term sums add nothing
comparable. For z = sum_i w_i x_i with independent terms the perturbation has rms
sqrt(2/3) u sqrt(sum (w_i x_i)^2) ~ sqrt(2/3) u rms(z), so one weighted layer contributes
~u rms relative error in all. He-scaled random layers carry a relative perturbation through with
gain ~1, and the roundings of the L weighted layers on the longest path are independent, so
the logits (the softmax's bottom) end with relative error ~u sqrt(L) rms. The largest of an
image's n such errors is ~sqrt(2 ln n) times the rms (4.3 for n = 1e4, 4.6 for SSD's
1917 x 21), and we allow another factor ~2 for layers whose gain is not 1 (ReLU halves,
Eltwise sums, LRN):

    max |z_reduced - z_float32| / rms(z_float32)  <=  B = 8 u sqrt(L)      (per image)

Measured on these nets it is 0.7 to 3.4 u sqrt(L) (the table is in docs/precision.md). A layer
computed wrongly moves logits by O(rms) (2% too much in one Pooling breaks the bound on every
net); a net that silently stayed float32 would have an error ~1e-6, far below u / 8, which is
asserted as a lower limit, and the parameters' dtypes are checked directly.
Probabilities follow from the logits: d log p_i = dz_i - sum_j p_j dz_j, so
|p_reduced / p_float32 - 1| <= exp(2 max |dz|) - 1, and top-1 cannot change on an image whose
top-2 logit margin exceeds 2 B rms(z).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import caffe
from caffe import functional as CF
from caffe.errors import CaffeError
from caffe.export import precision as P
from caffe.export import to_torch
from caffe.export.converters import exportable_types
from caffe.export.torch_module import run_ops
from caffe.protoio import read_net_param

from export_helpers import random_feed, randomize, zoo_net

MODELS = Path(__file__).parent / "models"
U = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


def bound(precision: str, depth: int) -> float:
    """B = 8 u sqrt(L): the largest logit error, relative to the logits' rms (see above)."""
    return 8 * U[precision] * math.sqrt(depth)


def weighted_depth(module) -> dict[str, int]:
    """For each blob, the longest chain of weighted layers from the module's inputs to it."""
    depth = {name: 0 for name in module.input_names}
    for op in module._ops:
        d = max((depth.get(b, 0) for b in op.bottoms), default=0) + ("weight" in op.tensors)
        for t in op.tops:
            depth[t] = d
    return depth


def logits_blob(net) -> str:
    """The bottom of the net's last Softmax."""
    (i,) = [i for i, layer in enumerate(net.layers) if layer.type == "Softmax"][-1:]
    return net._blob_names[net.bottom_id_vecs[i][0]]


def exported(net, outputs, precision, device="cpu"):
    module = to_torch(net, outputs=outputs, fold=True).eval().to(device)
    return P.cast_module(module, precision)


def run(module, x) -> list[torch.Tensor]:
    with torch.no_grad():
        return [o.double().cpu() for o in module(x)]


def assert_weights_in(module, dtype) -> None:
    """Every Convolution / InnerProduct weight and bias of ``module`` is stored in ``dtype``."""
    weighted = [op for op in module._ops if op.type in ("Convolution", "InnerProduct")]
    assert weighted
    for op in weighted:
        for child, name in op.tensors.values():
            tensor = getattr(getattr(module, child), name)
            assert tensor.dtype == dtype, f"{op.layer}.{name} is {tensor.dtype}"


def check_logits_and_probs(z32, p32, z, p, precision, depth, what, classes=None) -> float:
    """Assert the bound on the logits (per image), the probabilities' relation to them, and
    top-1 agreement where the margin allows; softmax rows hold ``classes`` values (default:
    all of an image's). Returns the worst normalised logit error."""
    assert z.dtype == p.dtype == torch.float64  # run() widened float32 outputs
    a, b = z32.flatten(1), z.flatten(1)
    rms = a.pow(2).mean(1, keepdim=True).sqrt()
    err = ((b - a).abs() / rms).max().item()
    limit = bound(precision, depth)
    assert err <= limit, f"{what}: logit error {err:.4g} rms > bound {limit:.4g} (L={depth})"
    assert err >= U[precision] / 8, f"{what}: error {err:.3g} rms: not {precision} at all?"
    worst = (b - a).abs().max().item()
    keep = p32 > 1e-30  # relative error of probabilities that did not underflow
    rel = ((p - p32).abs() / p32)[keep].max().item()
    # Softmax in float32 adds only float32 rounding (~1e-6) to the logits' exp(2 max|dz|) - 1.
    assert rel <= math.expm1(2 * worst) + 1e-5, f"{what}: probabilities {rel} vs logits {worst}"
    classes = classes or a.shape[1]
    rows_a, rows_b = a.reshape(-1, classes), b.reshape(-1, classes)
    row_rms = rms.repeat_interleave(a.shape[1] // classes, dim=0)[:, 0]
    top2 = rows_a.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * limit * row_rms
    assert torch.equal(rows_a.argmax(1)[clear], rows_b.argmax(1)[clear]), f"{what}: top-1"
    return err


# --- names and devices -----------------------------------------------------------------------

def test_precision_names_and_aliases():
    assert P.parse_precision("bf16") is P.parse_precision("BFloat16") is torch.bfloat16
    assert P.parse_precision("fp16") is P.parse_precision("float16") is torch.float16
    assert P.parse_precision("fp32") is P.parse_precision(torch.float32) is torch.float32
    assert P.precision_name("bf16") == "bfloat16"
    for bad in ("int8", "float64", torch.float64, "", None):
        with pytest.raises(CaffeError, match="unknown precision"):
            P.parse_precision(bad)


def test_supported_precisions_on_cpu():
    supported = P.supported_precisions("cpu")
    assert supported[0] == "float32" and "bfloat16" in supported  # torch 2.x CPU kernels
    assert P.supported_precisions(torch.device("cpu")) == supported


def test_unsupported_precision_is_a_caffe_error(monkeypatch):
    net = zoo_net("nin_cifar10_deploy")
    module = to_torch(net).eval()
    monkeypatch.setattr(P, "_has_kernels", lambda device_type, dtype: dtype == torch.bfloat16)
    with pytest.raises(CaffeError, match=r"float16 is not supported on cpu.*'bfloat16'"):
        P.cast_module(module, "fp16")
    assert module.conv1.weight.dtype == torch.float32  # untouched


def test_cast_module_checks_its_argument():
    with pytest.raises(CaffeError, match="to_torch"):
        P.cast_module(torch.nn.Linear(2, 2), "bf16")
    module = to_torch(zoo_net("nin_cifar10_deploy")).eval()
    ops = list(module._ops)
    assert P.cast_module(module, "float32") is module and module._ops == ops
    assert P.cast_module(module, "bf16") is module and module.precision == "bfloat16"
    with pytest.raises(CaffeError, match="already cast to bfloat16"):
        P.cast_module(module, "fp16")


def test_every_exportable_type_is_classified():
    """A new converter must say whether its layer runs reduced, passes types through, or
    stays float32 (unclassified types fall back to float32, correct but slower)."""
    groups = (P.REDUCED, P.PASS_THROUGH, P.FLOAT32)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not groups[a] & groups[b]
    assert set(exportable_types()) <= P.REDUCED | P.PASS_THROUGH | P.FLOAT32


# --- which layers stay float32 ---------------------------------------------------------------

ISLANDS = """
name: "islands"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "norm" type: "LRN" bottom: "conv" top: "norm" lrn_param { local_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "norm" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "scale" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "scale" bottom: "conv" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "pool" bottom: "pool" top: "cat" }
layer { name: "ip" type: "InnerProduct" bottom: "cat" top: "ip"
        inner_product_param { num_output: 300 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "top" type: "ArgMax" bottom: "ip" top: "top" argmax_param { top_k: 3 } }
"""


@pytest.fixture(scope="module")
def islands_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "islands.prototxt"
    path.write_text(ISLANDS)
    net = caffe.Net(read_net_param(str(path)), caffe.TEST)
    randomize(net, seed=3)
    return net


def test_reduced_layers_and_float32_islands(islands_net):
    """Convolution, Scale, Eltwise, Pooling, InnerProduct compute in bfloat16 with bfloat16
    weights; BatchNorm (statistics), Softmax and ArgMax (indices up to 299: bfloat16 holds
    integers exactly only to 256) compute in float32; LRN too on CPU, where avg_pool3d has no
    bfloat16 kernel; Concat passes its bottoms' type through; outputs come back float32."""
    net = islands_net
    outputs = ["ip", "prob", "top", "conv", "norm"]
    module = to_torch(net, outputs=outputs).eval()  # no fold: BatchNorm stays a layer
    P.cast_module(module, "bfloat16")
    bf16, f32 = torch.bfloat16, torch.float32
    assert module.conv.weight.dtype == module.ip.bias.dtype == module.scale.weight.dtype == bf16
    assert module.bn.mean.dtype == module.bn.variance.dtype == module.bn.scale_factor.dtype == f32
    x = torch.from_numpy(random_feed(net)["data"])
    # torch 2.13's CPU avg_pool3d, which caffe.functional.lrn uses, has no bfloat16 kernel:
    # LRN then runs in float32, else (a kernel, or an LRN written without it) in bfloat16.
    lrn = bf16 if P._lrn_runs("cpu", bf16, 0) else f32
    computes = {"Convolution": bf16, "ReLU": bf16, "LRN": lrn, "BatchNorm": f32,
                "Scale": bf16, "Eltwise": bf16, "Pooling": bf16, "Concat": bf16,
                "InnerProduct": bf16, "Softmax": f32, "ArgMax": f32}
    blobs = {"data": x}
    for op in module._ops:  # one op at a time: the final casts rebind output names
        with torch.no_grad():
            run_ops(module, [op], blobs)
        if op.type in computes:
            assert blobs[op.tops[0]].dtype == computes[op.type], f"{op.layer}"
    # One cast per crossing (data down, conv up for a float32 LRN, bn down for Scale, ip up
    # for Softmax and ArgMax both); the outputs conv and ip reuse those casts.
    casts = [(op.bottoms[0], op.kwargs["dtype"]) for op in module._ops if op.type == "Cast"]
    expected = [("data", bf16), ("conv", f32), ("bn", bf16), ("ip", f32)] if lrn == f32 else \
        [("data", bf16), ("norm", f32), ("bn", bf16), ("ip", f32), ("conv", f32)]
    assert [(blob.split("_")[0], dtype) for blob, dtype in casts] == expected
    assert all(blobs[name].dtype == f32 for name in outputs)

    with torch.no_grad():
        out = dict(zip(outputs, module(x)))
    assert all(v.dtype == f32 for v in out.values())
    # ArgMax ran in float32 on the (bfloat16-rounded) logits: exact indices, those past 256
    # too, with Caffe's tie rule (ties are frequent among 8-bit values).
    reduced_logits = out["ip"]
    assert torch.equal(out["top"], CF.argmax(reduced_logits, top_k=3))
    assert out["top"].max() > 256
    # Softmax in float32 of the rounded logits: float32 accuracy, not bfloat16's.
    torch.testing.assert_close(out["prob"], torch.softmax(reduced_logits, 1), rtol=1e-6,
                               atol=1e-9)
    with torch.no_grad():
        reference = dict(zip(outputs, to_torch(net, outputs=outputs).eval()(x)))
    depth = weighted_depth(module)["ip"]
    check_logits_and_probs(reference["ip"].double(), reference["prob"].double(),
                           out["ip"].double(), out["prob"].double(), "bfloat16", depth,
                           "islands net")


def test_channels_last_is_kept(islands_net):
    module = to_torch(islands_net).eval().to(memory_format=torch.channels_last)
    P.cast_module(module, "bf16")
    assert module.conv.weight.dtype == torch.bfloat16
    assert module.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_layer_without_a_kernel_runs_in_float32(islands_net, monkeypatch):
    """Where the device has no reduced kernel for a layer (LRN's avg_pool3d on CPU), that
    layer alone computes in float32 between casts; its neighbours stay reduced."""
    monkeypatch.setattr(P, "_lrn_runs", lambda device_type, dtype, region: False)
    module = P.cast_module(to_torch(islands_net, outputs=["norm", "sum"]).eval(), "bf16")
    ops = module._ops
    k = [i for i, op in enumerate(ops) if op.type == "LRN"][0]
    assert ops[k - 1].type == "Cast" and ops[k - 1].kwargs["dtype"] == torch.float32
    assert ops[k - 1].tops == ops[k].bottoms
    x = torch.from_numpy(random_feed(islands_net)["data"])
    blobs = {"data": x}
    with torch.no_grad():
        run_ops(module, ops[:k + 1], blobs)
    assert blobs[ops[k].tops[0]].dtype == torch.float32
    assert blobs[ops[k - 1].bottoms[0]].dtype == torch.bfloat16


def test_float16_keeps_range_sensitive_layers_float32(islands_net):
    """float16 overflows past 65504: LRN's squares run in float32 (on every device)."""
    module = P.cast_module(to_torch(islands_net, outputs=["norm"]).eval(), "fp16")
    lrn = [op for op in module._ops if op.type == "LRN"][0]
    (cast,) = [op for op in module._ops if op.tops == lrn.bottoms]
    assert cast.type == "Cast" and cast.kwargs["dtype"] == torch.float32
    x = torch.from_numpy(random_feed(islands_net)["data"]) * 300  # squares > 65504
    (norm,) = module(x)
    assert torch.isfinite(norm).all()


# --- accuracy bounds on the zoo nets ---------------------------------------------------------

ZOO_CASES = [  # (net, batch, precisions run on CPU); float16 CPU kernels are slow (no fp16 ALU)
    ("bvlc_reference_caffenet_deploy", 2, ("bfloat16",)),
    ("bvlc_googlenet_deploy", 2, ("bfloat16",)),
    ("resnet50_style_deploy", 4, ("bfloat16", "float16")),
    ("vgg16_style_deploy", 4, ("bfloat16",)),
    ("nin_cifar10_deploy", 4, ("bfloat16",)),
]


def check_zoo_net(name: str, batch: int, precisions, device: str = "cpu") -> None:
    """A zoo net's logits and probabilities in each of ``precisions`` (on ``device``) against
    its float32 module on the CPU, within the bound."""
    net = zoo_net(name, batch=batch)
    outputs = [logits_blob(net), *net.outputs]
    x = torch.from_numpy(random_feed(net)["data"])
    reference = to_torch(net, outputs=outputs, fold=True).eval()
    z32, p32 = run(reference, x)
    depth = weighted_depth(reference)[outputs[0]]
    for precision in precisions:
        module = exported(net, outputs, precision, device=device)
        assert_weights_in(module, P.parse_precision(precision))
        z, p = run(module, x.to(device))
        check_logits_and_probs(z32, p32, z, p, precision, depth,
                               f"{name} {device} {precision}")


@pytest.mark.parametrize("name,batch,precisions", ZOO_CASES, ids=[c[0] for c in ZOO_CASES])
def test_zoo_nets_within_the_bound(name, batch, precisions):
    check_zoo_net(name, batch, precisions)


def test_mobilenet_ssd_within_the_bound():
    """MobileNet-SSD at 160 x 160: the box regressions and class logits obey the bound; the
    priors (float32 constants) are exact; DetectionOutput decodes in float32."""
    param = read_net_param(str(MODELS / "mobilenet_ssd_deploy.prototxt"))
    param.layer[0].input_param.shape[0].dim[2:] = [160, 160]
    net = caffe.Net(param, caffe.TEST)
    randomize(net, seed=0)
    outputs = ["mbox_loc", "mbox_conf", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]
    x = torch.from_numpy(random_feed(net)["data"])
    loc32, conf32, prob32, prior32, _ = run(to_torch(net, outputs=outputs).eval(), x)
    module = exported(net, outputs, "bfloat16")
    assert_weights_in(module, torch.bfloat16)
    loc, conf, prob, prior, det = run(module, x)
    assert torch.equal(prior, prior32)
    assert det.shape[-1] == 7
    depth = weighted_depth(module)
    # Logits (N, priors * 21), normalised per image; softmax over each prior's 21 classes.
    check_logits_and_probs(conf32, prob32, conf, prob, "bfloat16", depth["mbox_conf"],
                           "mobilenet-ssd conf", classes=21)
    rms = loc32.pow(2).mean().sqrt()
    assert ((loc - loc32).abs().max() / rms).item() <= bound("bfloat16", depth["mbox_loc"])


# --- CUDA ------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_cuda_zoo_nets_within_the_bound(precision):
    if precision not in P.supported_precisions("cuda"):
        pytest.skip(f"{precision} not supported on this GPU")
    for name, batch, _ in ZOO_CASES:
        check_zoo_net(name, batch, [precision], device="cuda")

