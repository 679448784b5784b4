"""Shape arithmetic and N-d im2col shared by Convolution, Deconvolution, Im2col and Pooling.

Caffe reads a window geometry from ``ConvolutionParameter`` either as repeated N-d fields
(``kernel_size``, ``stride``, ``pad``, ``dilation``: given once for every spatial axis, or once per
axis) or, in 2-D only, as ``kernel_h``/``kernel_w``, ``stride_h``/``stride_w``, ``pad_h``/``pad_w``.
``conv_geometry`` applies Caffe's rules and CHECKs; the ``*_output_size`` functions are Caffe's
formulas; ``im2col_nd``/``col2im_nd`` lay windows out as Caffe's column buffer does
(rows: channel, then kernel offsets; columns: output positions). ``setup_weight_and_bias`` gives
Convolution and InnerProduct their learned blobs (``new_weight_and_bias`` also serves Embed).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from caffe.blob import Blob
from caffe.filler import fill
from caffe.functional import pool_output_size  # noqa: F401  (re-exported: one copy)

Check = Callable[[bool, str], None]


@dataclass(frozen=True)
class ConvGeometry:
    """Per-spatial-axis kernel, stride, pad and dilation of a convolution-like window."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """Span of a dilated kernel: dilation * (kernel - 1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def is_1x1(self) -> bool:
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) and \
            all(p == 0 for p in self.pad)


def check_param_shape(check: Check, blob, shape: Sequence[int], what: str) -> None:
    """Require a preloaded parameter blob to have ``shape``; a legacy 4-D shape padded with
    leading 1s (old caffemodels: bias 1x1x1xN, InnerProduct weights 1x1xNxK) is reshaped."""
    shape = list(shape)
    if list(blob.shape) == shape:
        return

    def core(dims):
        dims = list(dims)
        while dims and dims[0] == 1:
            dims.pop(0)
        return dims

    check(core(blob.shape) == core(shape),
          f"Incorrect {what} shape: expected shape {shape}; instead, shape was "
          f"{list(blob.shape)}")
    blob.reshape(shape)


def new_weight_and_bias(weight_shape: Sequence[int], bias_shape: Sequence[int] | None, param,
                        dtype: torch.dtype) -> list[Blob]:
    """A weight blob filled by ``param.weight_filler`` and, unless ``bias_shape`` is None, a
    bias blob filled by ``param.bias_filler``."""
    weight = Blob(weight_shape, dtype=dtype)
    fill(weight, param.weight_filler)
    blobs = [weight]
    if bias_shape is not None:
        bias = Blob(bias_shape, dtype=dtype)
        fill(bias, param.bias_filler)
        blobs.append(bias)
    return blobs


def setup_weight_and_bias(layer, weight_shape: Sequence[int], bias_shape: Sequence[int] | None,
                          param, weight_what: str = "weight") -> None:
    """Check the preloaded weight (and bias, unless ``bias_shape`` is None) blobs of ``layer``
    against their shapes, or create them with :func:`new_weight_and_bias`."""
    has_bias = bias_shape is not None
    if layer.blobs:
        layer.check(len(layer.blobs) == 1 + has_bias,
                    f"Incorrect number of weight blobs: expected {1 + has_bias}, got "
                    f"{len(layer.blobs)}")
        check_param_shape(layer.check, layer.blobs[0], weight_shape, weight_what)
        if has_bias:
            check_param_shape(layer.check, layer.blobs[1], bias_shape, "bias")
    else:
        layer.blobs = new_weight_and_bias(weight_shape, bias_shape, param, layer.dtype)


def _per_axis(values: Sequence[int], default: int, field: str, num_spatial: int,
              check: Check) -> list[int]:
    n = len(values)
    check(n in (0, 1, num_spatial),
          f"{field} must be specified once, or once per spatial dimension ({field} specified "
          f"{n} times; {num_spatial} spatial dims)")
    if n == 0:
        return [default] * num_spatial
    return [int(values[0 if n == 1 else i]) for i in range(num_spatial)]


def _h_w(param, prefix: str, field: str, num_spatial: int, check: Check) -> list[int] | None:
    """``[<prefix>_h, <prefix>_w]`` when either is set (2-D only, and not together with the
    repeated ``field``); None when neither is."""
    if not (param.HasField(f"{prefix}_h") or param.HasField(f"{prefix}_w")):
        return None
    check(num_spatial == 2, f"{prefix}_h & {prefix}_w can only be used for 2D convolution "
                            f"(input has {num_spatial} spatial axes)")
    check(len(getattr(param, field)) == 0,
          f"Either {field} or {prefix}_h/w should be specified; not both.")
    return [getattr(param, f"{prefix}_h"), getattr(param, f"{prefix}_w")]


def conv_geometry(param, num_spatial: int, check: Check) -> ConvGeometry:
    """Read kernel/stride/pad/dilation from a ConvolutionParameter, with Caffe's checks."""
    kernel = _h_w(param, "kernel", "kernel_size", num_spatial, check)
    if kernel is None:
        n = len(param.kernel_size)
        check(n == num_spatial or (n == 1 and num_spatial > 0),
              f"kernel_size must be specified once, or once per spatial dimension (kernel_size "
              f"specified {n} times; {num_spatial} spatial dims)")
        kernel = [int(param.kernel_size[0 if n == 1 else i]) for i in range(num_spatial)]
    check(all(k > 0 for k in kernel), f"Filter dimensions must be nonzero (kernel {kernel}).")

    stride = _h_w(param, "stride", "stride", num_spatial, check)
    if stride is None:
        stride = _per_axis(param.stride, 1, "stride", num_spatial, check)
    check(all(s > 0 for s in stride), f"Stride dimensions must be nonzero (stride {stride}).")

    pad = _h_w(param, "pad", "pad", num_spatial, check)
    if pad is None:
        pad = _per_axis(param.pad, 0, "pad", num_spatial, check)

    dilation = _per_axis(param.dilation, 1, "dilation", num_spatial, check)
    check(all(d > 0 for d in dilation), f"Dilation dimensions must be nonzero "
                                        f"(dilation {dilation}).")
    return ConvGeometry(tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))


def conv_output_size(input_size: int, kernel: int, stride: int, pad: int,
                     dilation: int = 1) -> int:
    """Caffe's convolution/im2col output size: (in + 2 pad - extent) / stride + 1."""
    extent = dilation * (kernel - 1) + 1
    return (input_size + 2 * pad - extent) // stride + 1


def deconv_output_size(input_size: int, kernel: int, stride: int, pad: int,
                       dilation: int = 1) -> int:
    """Caffe's deconvolution output size: stride (in - 1) + extent - 2 pad."""
    extent = dilation * (kernel - 1) + 1
    return stride * (input_size - 1) + extent - 2 * pad


def check_conv_output(check: Check, spatial: Sequence[int], geom: ConvGeometry,
                      what: str = "convolution") -> list[int]:
    """Output sizes of a convolution over ``spatial``; every kernel must fit the padded input."""
    out = []
    for i, size in enumerate(spatial):
        extent = geom.extent[i]
        check(size + 2 * geom.pad[i] >= extent,
              f"{what} kernel extent {extent} (kernel {geom.kernel[i]}, dilation "
              f"{geom.dilation[i]}) is larger than the padded input size "
              f"{size + 2 * geom.pad[i]} (input {size}, pad {geom.pad[i]}) on spatial axis {i}")
        out.append(conv_output_size(size, geom.kernel[i], geom.stride[i], geom.pad[i],
                                    geom.dilation[i]))
    return out


# --- N-d im2col / col2im ----------------------------------------------------------------------

def im2col_nd(x: torch.Tensor, geom: ConvGeometry, out_spatial: Sequence[int]) -> torch.Tensor:
    """(num, C, *in) -> a strided view (num, C, *kernel, *out) of the zero-padded input.

    Element [n, c, k..., o...] is input[n, c, o * stride - pad + k * dilation] (zero outside).
    Reshape it to (num, C * prod(kernel), *out) for Caffe's column layout.
    """
    nsp = len(geom.kernel)
    pads: list[int] = []
    for i in reversed(range(nsp)):
        # Right padding sized so the last window fits exactly (negative: trailing rows unused).
        right = (out_spatial[i] - 1) * geom.stride[i] + geom.extent[i] - x.shape[2 + i] \
            - geom.pad[i]
        pads += [geom.pad[i], right]
    xp = F.pad(x, pads) if any(pads) else x
    for i in range(nsp):
        xp = xp.unfold(2 + i, geom.extent[i], geom.stride[i])
    # Unfold appended the window axes after the output axes; keep every dilation-th tap.
    taps = (slice(None),) * (2 + nsp) + tuple(slice(None, None, d) for d in geom.dilation)
    xp = xp[taps]
    order = [0, 1] + [2 + nsp + i for i in range(nsp)] + [2 + i for i in range(nsp)]
    return xp.permute(order)


def col2im_nd(col: torch.Tensor, geom: ConvGeometry, in_spatial: Sequence[int],
              out: torch.Tensor) -> None:
    """Adjoint of ``im2col_nd``: sum (num, C, *kernel, *out) columns back into ``out``
    (num, C, *in), overwriting it."""
    nsp = len(geom.kernel)
    out_spatial = col.shape[2 + nsp:]
    padded_shape = list(out.shape[:2]) + [
        max(in_spatial[i] + geom.pad[i], (out_spatial[i] - 1) * geom.stride[i] +
            geom.extent[i]) for i in range(nsp)]
    acc = out.new_zeros(padded_shape)
    for offsets in itertools.product(*(range(k) for k in geom.kernel)):
        window = tuple(
            slice(o * geom.dilation[i], o * geom.dilation[i] +
                  (out_spatial[i] - 1) * geom.stride[i] + 1, geom.stride[i])
            for i, o in enumerate(offsets))
        acc[(slice(None), slice(None)) + window] += col[(slice(None), slice(None)) + offsets]
    interior = tuple(slice(p, p + n) for p, n in zip(geom.pad, in_spatial))
    out.copy_(acc[(slice(None), slice(None)) + interior])
