"""Reduced-precision inference for an exported net: ``cast_module(module, "bfloat16")``.

The heavy layers (Convolution, InnerProduct, Pooling, the neurons, Eltwise, Scale) run in
bfloat16 or float16 with their weights stored in that type; torch's bf16/fp16 convolution and
GEMM kernels accumulate in float32, so each layer adds about one rounding of its inputs,
weights and output (unit roundoff u = 2^-8 for bfloat16, 2^-11 for float16). The layers whose
result a rounding would spoil run in float32 as islands: their bottoms are cast up, their
parameters stay float32, and their tops are float32. Blob plumbing (Concat, Reshape, Split, ...)
runs in whatever type reaches it. The module still takes float32 inputs and returns float32
outputs: cast ops are inserted where a blob crosses between the two worlds, computed once per
blob value, so the layers themselves run unwrapped.

Accuracy bounds, measured on the zoo nets, are in ``docs/precision.md`` and asserted by
``tests/test_precision.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from caffe import functional as CF
from caffe.errors import CaffeError
from caffe.export import torch_module
from caffe.export.torch_module import CaffeModule, Op

_NAMES = {"float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_CANONICAL = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# Layers computed in the reduced type. Their math is products and sums that torch accumulates
# in float32 (convolution, GEMM, pooling windows) or elementwise maps whose relative error is
# that of their input (neurons, Scale, Bias, Eltwise).
REDUCED = frozenset({
    "Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "Deconvolution",
    "InnerProduct", "Pooling", "LRN", "Interp", "BilinearInterpolate", "Upsample",
    "ReLU", "ReLU6", "PReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "ELU", "Swish", "Clip",
    "Threshold", "HardSwish", "HardSigmoid", "Power", "Exp", "Log", "Dropout",
    "Scale", "Bias", "Eltwise", "Reduction",
})
# Blob plumbing: no arithmetic, so the top takes the bottoms' type (Concat promotes a mix).
PASS_THROUGH = frozenset({
    "Split", "Concat", "Slice", "Crop", "Reshape", "Flatten", "Permute", "Tile", "Pad",
    "PixelShuffle", "ShuffleChannel",
})
# Kept in float32, each for a reason a rounding of 2^-8 would make visible:
FLOAT32 = frozenset({
    # Probabilities are the user-facing result; the logits' errors are bounded, the exp and
    # the normalising sum add nothing when done in float32.
    "Softmax",
    # Labels and indices are floats in Caffe: bfloat16 holds integers exactly only to 256
    # (float16 to 2048), so ImageNet's class 999 or a vocabulary index would be rounded.
    "ArgMax", "Accuracy", "Embed", "MaxUnPool", "SoftmaxWithLoss", "EuclideanLoss",
    "SigmoidCrossEntropyLoss",
    # Normalisations divide by statistics: a variance near eps (BatchNorm's 1e-5 is below
    # float16's smallest normal, 6.1e-5) or a mean subtracted from values of similar size
    # (MVN) loses most of its digits in 8 bits.
    "BatchNorm", "MVN", "Normalize",
    # Box arithmetic: prior coordinates such as 0.00333 * k on a 300-pixel image, box decoding,
    # IoU thresholds of NMS and score sorting with ties must match float32 Caffe's choices.
    "PriorBox", "DetectionOutput",
    # Recurrent states carried from call to call would accumulate one rounding per step.
    "LSTM", "RNN",
})
# float16's range ends at 65504: squares (LRN, STOCHASTIC pooling, SUMSQ), powers and
# exponentials of activations of Caffe nets fed 0-255 pixels overflow it; bfloat16 has
# float32's range.
_FLOAT16_RANGE = frozenset({"LRN", "Power", "Exp", "BNLL", "Reduction"})


def parse_precision(precision: str | torch.dtype) -> torch.dtype:
    """The torch dtype for "float32"/"fp32", "bfloat16"/"bf16" or "float16"/"fp16" (or one of
    those dtypes); a CaffeError for anything else."""
    if isinstance(precision, torch.dtype):
        if precision in _CANONICAL:
            return precision
    elif isinstance(precision, str) and precision.lower() in _NAMES:
        return _NAMES[precision.lower()]
    raise CaffeError(f"unknown precision {precision!r}: expected one of {sorted(_NAMES)}")


def precision_name(precision: str | torch.dtype) -> str:
    """The canonical name ("float32", "bfloat16", "float16") of a precision."""
    return _CANONICAL[parse_precision(precision)]


@cache
def _has_kernels(device_type: str, dtype: torch.dtype) -> bool:
    """Whether convolution and GEMM run in ``dtype`` on this kind of device."""
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(
                including_emulation=False):
            return False
    try:
        x = torch.ones(1, 2, 3, 3, dtype=dtype, device=device_type)
        F.conv2d(x, torch.ones(2, 2, 1, 1, dtype=dtype, device=device_type))
        F.linear(x.reshape(1, -1), torch.ones(2, 18, dtype=dtype, device=device_type))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def supported_precisions(device: str | torch.device = "cpu") -> tuple[str, ...]:
    """The precisions ``cast_module`` accepts for modules on ``device``: "float32" always, and
    "bfloat16" / "float16" where torch has the convolution and GEMM kernels for them (CPU:
    both with torch 2.x; CUDA: float16, and bfloat16 from compute capability 8.0)."""
    device_type = torch.device(device).type
    return ("float32",) + tuple(_CANONICAL[d] for d in (torch.bfloat16, torch.float16)
                                if _has_kernels(device_type, d))


@cache
def _lrn_runs(device_type: str, dtype: torch.dtype, norm_region: int) -> bool:
    """LRN ACROSS_CHANNELS averages with avg_pool3d, which torch's CPU build lacks for
    bfloat16 and float16."""
    try:
        CF.lrn(torch.ones(1, 3, 2, 2, dtype=dtype, device=device_type), local_size=3,
               alpha=1.0, beta=0.75, norm_region=norm_region)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _computes_reduced(op: Op, dtype: torch.dtype, device_type: str) -> bool:
    """Whether ``op`` runs in the reduced ``dtype`` (else in float32, or passes through)."""
    if op.type not in REDUCED or op.func is CF.max_unpool_by_mask:  # mask bottom: indices
        return False
    if dtype == torch.float16 and (op.type in _FLOAT16_RANGE or (
            op.type == "Pooling" and op.kwargs.get("method") == CF.POOL_STOCHASTIC)):
        return False
    if op.type == "LRN":
        return _lrn_runs(device_type, dtype, op.kwargs.get("norm_region", CF.ACROSS_CHANNELS))
    return True


def _to_dtype(x: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _cast_tensors(module: nn.Module, names: Iterable[tuple[str, str]], dtype: torch.dtype
                  ) -> None:
    """Replace the named parameters and floating buffers of ``module``'s children by copies in
    ``dtype`` (keeping their memory format, e.g. channels_last)."""
    for child_name, name in names:
        child = getattr(module, child_name)
        if name in child._parameters:
            param = child._parameters[name]
            child._parameters[name] = nn.Parameter(param.detach().to(dtype),
                                                   requires_grad=param.requires_grad)
        elif name in child._buffers and child._buffers[name].is_floating_point():
            child._buffers[name] = child._buffers[name].to(dtype)


def cast_module(module: CaffeModule, precision: str | torch.dtype) -> CaffeModule:
    """Convert a ``caffe.export.to_torch`` module, in place, to run in ``precision``
    ("bfloat16" or "float16"; "float32" leaves it as it is) on the device its tensors are on.

    The layers in ``REDUCED`` compute in that type with their parameters converted; those in
    ``FLOAT32`` (softmax, normalisations, labels and indices, box arithmetic, recurrent
    states) keep float32, as does any layer torch has no kernel for on that device (LRN on
    CPU) or, for float16, whose squares or exponentials could overflow its range. Inputs are
    taken in float32 and outputs returned in float32. Returns ``module``; its ``precision``
    attribute names the type. Raises CaffeError where the device has no kernels for the type.
    """
    if not isinstance(module, CaffeModule):
        raise CaffeError(f"cast_module needs a module built by caffe.export.to_torch, got "
                         f"{type(module).__name__}")
    dtype = parse_precision(precision)
    current = getattr(module, "precision", "float32")
    if current != "float32":
        raise CaffeError(f"net {module.net_name!r}: the module is already cast to {current}; "
                         f"cast a freshly exported module")
    if dtype == torch.float32:
        return module
    device = _module_device(module)
    if not _has_kernels(device.type, dtype):
        raise CaffeError(f"net {module.net_name!r}: precision {_CANONICAL[dtype]} is not "
                         f"supported on {device} (torch {torch.__version__} has no convolution"
                         f"/GEMM kernels for it there); supported: "
                         f"{list(supported_precisions(device))}")
    reduced = _reduced_ops(module._ops, dtype, device.type)
    _cast_tensors(module, {t for i in reduced for t in module._ops[i].tensors.values()}, dtype)
    module._ops = _with_casts(module._ops, reduced, dtype, module.input_names,
                              module.output_names)
    if hasattr(module, "_drops"):  # when each activation is freed follows the op list
        module._drops = torch_module.last_uses(module._ops, module.output_names)
    module.precision = _CANONICAL[dtype]
    return module


def _reduced_ops(ops: list[Op], dtype: torch.dtype, device_type: str) -> set[int]:
    """Indices of the ops that compute in ``dtype``. A parameter shared with a float32 op
    keeps float32, and so then does every op using it."""
    reduced = {i for i, op in enumerate(ops) if _computes_reduced(op, dtype, device_type)}
    while True:
        kept = {t for i, op in enumerate(ops) if i not in reduced for t in op.tensors.values()}
        demoted = {i for i in reduced if kept.intersection(ops[i].tensors.values())}
        if not demoted:
            return reduced
        reduced -= demoted


def _with_casts(ops: list[Op], reduced: set[int], dtype: torch.dtype,
                inputs: Iterable[str], outputs: Iterable[str]) -> list[Op]:
    """``ops`` with cast ops inserted wherever a bottom's type differs from the type its layer
    computes in, and at the end for outputs that are not float32. Blob types are followed
    through the op list statically; one cast serves every consumer of a value, whichever
    name (a Split's tops) it is read under."""
    kind = {torch.float32: "float32", dtype: _CANONICAL[dtype]}
    type_of = {name: torch.float32 for name in inputs}
    value_of = {name: object() for name in type_of}  # blob name -> its value's identity
    taken = set(type_of) | {b for op in ops for b in op.bottoms + op.tops}
    casts: dict[tuple[object, torch.dtype], str] = {}
    result: list[Op] = []

    def cast(blob: str, to: torch.dtype) -> str:
        if type_of.get(blob, torch.float32) == to:
            return blob
        key = (value_of.setdefault(blob, object()), to)
        if key not in casts:
            name = f"{blob}@{kind[to]}"
            while name in taken:
                name += "_"
            taken.add(name)
            result.append(Op(layer=f"{blob} to {kind[to]}", type="Cast", func=_to_dtype,
                             bottoms=[blob], tops=[name], tensors={},
                             kwargs={"dtype": to}))
            casts[key] = name
            type_of[name], value_of[name] = to, object()
        return casts[key]

    for i, op in enumerate(ops):
        if op.alias:
            top_type = type_of.get(op.bottoms[0], torch.float32)
        elif op.type in PASS_THROUGH:
            types = [type_of.get(b, torch.float32) for b in op.bottoms]
            top_type = types[0] if types else torch.float32
            if op.type == "Concat":
                for t in types[1:]:
                    top_type = torch.promote_types(top_type, t)
        else:
            top_type = dtype if i in reduced else torch.float32
            op = replace(op, bottoms=[cast(b, top_type) for b in op.bottoms])
        result.append(op)
        for t in op.tops:
            type_of[t] = top_type
            value_of[t] = value_of.setdefault(op.bottoms[0], object()) if op.alias \
                else object()
    for name in dict.fromkeys(outputs):
        if type_of.get(name, torch.float32) == torch.float32:
            continue
        key = (value_of.get(name), torch.float32)
        if key in casts:  # already cast up for a float32 consumer
            result.append(Op(layer=f"{name} as float32", type="Split", func=None,
                             bottoms=[casts[key]], tops=[name], tensors={}, kwargs={},
                             alias=True))
        else:
            result.append(Op(layer=f"{name} to float32", type="Cast", func=_to_dtype,
                             bottoms=[name], tops=[name], tensors={},
                             kwargs={"dtype": torch.float32}))
    return result
