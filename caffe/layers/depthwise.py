"""Depthwise convolution under the fork type names MobileNet and ShuffleNet models use:
``ConvolutionDepthwise`` (farmingyard's caffe-mobilenet / ShuffleNet) and
``DepthwiseConvolution`` (yonghenglh6/DepthwiseConvolution).

Both read ``convolution_param`` and are a Convolution with group = the bottom's channels: one
kernel per channel (times num_output / channels). An unset num_output means one output per
channel; a group given in the prototxt must equal the channels. The math is Convolution's
(caffe/layers/convolution.py), run by torch's grouped convolution kernels.
"""

from __future__ import annotations

import torch

from caffe.layer import register
from caffe.layers._helpers import canonical_axis
from caffe.layers.convolution import ConvolutionLayer


@register("ConvolutionDepthwise", "DepthwiseConvolution")
class DepthwiseConvolutionLayer(ConvolutionLayer):
    """Convolution with group = channels. Weights (num_output, 1, *kernel), bias (num_output,).

    The layer's own parameter message is left as written; the convolution reads a copy with
    ``group`` (and, when unset, ``num_output``) filled in.
    """

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.type_name = param.type or "ConvolutionDepthwise"  # errors name the fork's type

    def setup(self, bottom, top):
        written = self.layer_param
        p = written.convolution_param
        channels = bottom[0].shape[canonical_axis(self, bottom[0], p.axis)]
        self.check(not p.HasField("group") or p.group in (1, channels),
                   f"a depthwise convolution has group = channels ({channels}); got group "
                   f"{p.group} (bottom shape {list(bottom[0].shape)})")
        param = type(written)()
        param.CopyFrom(written)
        param.convolution_param.group = channels
        if not param.convolution_param.num_output:
            param.convolution_param.num_output = channels
        self.layer_param = param
        try:
            super().setup(bottom, top)
        finally:
            self.layer_param = written
