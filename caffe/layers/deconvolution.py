"""Deconvolution: the transpose of Convolution (Caffe's DeconvolutionLayer)."""

from __future__ import annotations

from caffe.layer import register
from caffe.layers._conv_util import deconv_output_size
from caffe.layers.convolution import BaseConvolutionLayer


@register("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """Caffe type ``Deconvolution``; reads ``convolution_param`` (see ``BaseConvolutionLayer``).

    Forward is Convolution's backward-data pass, so kernel/stride/pad describe the convolution
    that would map the top back to the bottom. Bottom: (..., C, *in). Top:
    (..., num_output, *out) with out = stride (in - 1) + extent - 2 pad per spatial axis,
    extent = dilation (kernel - 1) + 1. Weights: (C, num_output / group, *kernel); bias:
    (num_output,). Backward: bottom diff = Convolution forward of the top diff (overwritten);
    weight and bias diffs accumulate.
    """

    transposed = True

    def compute_output_shape(self, in_spatial):
        g = self.geom
        out = []
        for i, size in enumerate(in_spatial):
            n = deconv_output_size(size, g.kernel[i], g.stride[i], g.pad[i], g.dilation[i])
            self.check(n > 0, f"deconvolution output size {n} on spatial axis {i} is not "
                              f"positive (input {size}, kernel {g.kernel[i]}, stride "
                              f"{g.stride[i]}, pad {g.pad[i]}, dilation {g.dilation[i]}): the "
                              f"pad is too large")
            out.append(n)
        return out
