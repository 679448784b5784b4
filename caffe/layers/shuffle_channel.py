"""ShuffleChannel of ShuffleNet (farmingyard/ShuffleNet): interleave the channel groups.

Reads ``shuffle_channel_param { group (1) }``. Output channel j * group + i is input channel
i * (C / group) + j: the channels viewed as (group, C / group) and transposed
(= ``torch.nn.ChannelShuffle(group)``). The backward is the inverse permutation.
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import Workspace


def shuffle_channel(x: torch.Tensor, group: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, ...) -> (N, C, ...) with channel j * group + i = input channel i * C/group + j.
    ``out`` must not overlap ``x``."""
    n, c = x.shape[0], x.shape[1]
    src = x.reshape(n, group, c // group, -1).transpose(1, 2)
    if out is None:
        return src.reshape(x.shape)
    out.view(n, c // group, group, -1).copy_(src)
    return out


def shuffle_channel_backward(dy: torch.Tensor, group: int,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse shuffle: a shuffle by C / group groups."""
    return shuffle_channel(dy, dy.shape[1] // group, out)


@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """ShuffleChannel (ShuffleNet); bottom (N, C, ...) -> top of the same shape.

    C must be divisible by ``group``. In-place use works (the shuffle goes through a copy).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.group = int(self.layer_param.shuffle_channel_param.group)
        self.check(self.group > 0, f"group must be greater than 0, got {self.group}")
        self.workspace = Workspace()

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.check(len(shape) >= 2, f"bottom must have a channel axis (bottom shape "
                                    f"{list(shape)})")
        self.check(shape[1] % self.group == 0,
                   f"Wrong group size: {shape[1]} channels are not divisible by group "
                   f"{self.group} (bottom shape {list(shape)})")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _run(self, source: torch.Tensor, dest: torch.Tensor, group: int, in_place: bool):
        if in_place:
            saved = self.workspace.like("bottom_copy", source)
            saved.copy_(source)
            source = saved
        shuffle_channel(source, group, out=dest)

    def forward(self, bottom, top):
        self._run(bottom[0].device_data(), top[0].mutable_device_data(), self.group,
                  top[0] is bottom[0])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            c = bottom[0].shape[1]
            self._run(top[0].device_diff(), bottom[0].mutable_device_diff(), c // self.group,
                      top[0] is bottom[0])
