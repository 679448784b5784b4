"""Tile: repeat the bottom along one axis."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import canonical_axis


@register("Tile")
class TileLayer(Layer):
    """Tile, reads ``tile_param.axis`` (default 1; may be negative) and ``tile_param.tiles``
    (required, > 0).

    The block of all axes from ``axis`` on is repeated ``tiles`` times:
    (n, c, h) with axis 1, tiles 3 -> (n, 3c, h), top[:, t*c:(t+1)*c] = bottom for each t.
    Backward sums the top diff over the copies.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.tile_param
        self.check(param.HasField("tiles"), "Number of tiles must be specified (tile_param.tiles)")
        self.tiles = int(param.tiles)
        self.check(self.tiles > 0, f"Number of tiles must be positive, got {self.tiles}")

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], int(self.layer_param.tile_param.axis))
        shape = list(bottom[0].shape)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)
        shape[self.axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].device_data().reshape(self.outer, 1, self.inner)
        y = top[0].mutable_device_data().view(self.outer, self.tiles, self.inner)
        y.copy_(x.expand(self.outer, self.tiles, self.inner))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].device_diff().view(self.outer, self.tiles, self.inner)
            torch.sum(dy, dim=1, out=bottom[0].mutable_device_diff().view(self.outer, self.inner))
