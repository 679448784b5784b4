"""PriorBox (SSD fork): the default boxes of one feature map, with their variances."""

from __future__ import annotations

import math

import numpy as np
import torch

from caffe import common
from caffe.layer import Layer, register


def aspect_ratios(ratios, flip: bool) -> list[float]:
    """1, then each listed ratio not within 1e-6 of one already there (followed by its
    reciprocal when ``flip``), as float32 values."""
    out = [np.float32(1.0)]
    for r in ratios:
        r = np.float32(r)
        if any(abs(float(r) - float(a)) < 1e-6 for a in out):
            continue
        out.append(r)
        if flip:
            out.append(np.float32(1.0 / float(r)))
    return out


def prior_box_sizes(min_sizes, max_sizes, ratios) -> np.ndarray:
    """(P, 2) float32 box (width, height) per prior of one cell, in the fork's order: per
    min_size s (truncated to int), s x s, then sqrt(s * max) squared (max truncated to int),
    then s*sqrt(r) x s/sqrt(r) for every ratio r != 1."""
    sizes = []
    for s, min_size in enumerate(min_sizes):
        low = int(min_size)
        sizes.append((np.float32(low), np.float32(low)))
        if max_sizes:
            side = np.float32(math.sqrt(low * int(max_sizes[s])))
            sizes.append((side, side))
        for r in ratios:
            if abs(float(r) - 1.0) < 1e-6:
                continue
            root = np.sqrt(np.float32(r))
            sizes.append((np.float32(low) * root, np.float32(low) / root))
    return np.asarray(sizes, dtype=np.float32)


def prior_boxes(layer_h: int, layer_w: int, img_h: int, img_w: int, step_h: float, step_w: float,
                offset: float, sizes: np.ndarray, clip: bool) -> np.ndarray:
    """(H*W*P*4,) boxes [xmin, ymin, xmax, ymax] / image size, cell-major then prior, centred at
    ((w + offset) * step_w, (h + offset) * step_h) (float32, as the fork computes centres)."""
    cx = (np.arange(layer_w, dtype=np.float32) + np.float32(offset)) * np.float32(step_w)
    cy = (np.arange(layer_h, dtype=np.float32) + np.float32(offset)) * np.float32(step_h)
    cx = cx.astype(np.float64)[None, :, None]
    cy = cy.astype(np.float64)[:, None, None]
    half_w = sizes[:, 0].astype(np.float64)[None, None, :] / 2.0
    half_h = sizes[:, 1].astype(np.float64)[None, None, :] / 2.0
    shape = (layer_h, layer_w, len(sizes))
    boxes = np.stack([np.broadcast_to((cx - half_w) / img_w, shape),
                      np.broadcast_to((cy - half_h) / img_h, shape),
                      np.broadcast_to((cx + half_w) / img_w, shape),
                      np.broadcast_to((cy + half_h) / img_h, shape)], axis=-1)
    boxes = boxes.astype(np.float32).reshape(-1)
    if clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    return boxes


@register("PriorBox")
class PriorBoxLayer(Layer):
    """Caffe type ``PriorBox`` of the SSD fork (weiliu89/caffe ``ssd``); reads
    ``prior_box_param`` (``min_size`` required, ``max_size``, ``aspect_ratio``, ``flip`` default
    true, ``clip`` default false, ``variance`` 1 or 4 values (default 0.1), ``img_size`` or
    ``img_h``/``img_w``, ``step`` or ``step_h``/``step_w``, ``offset`` default 0.5).

    Bottoms: the feature map (N, C, H, W) and the image (N, C, IH, IW). Top (1, 2, H*W*P*4):
    channel 0 the prior boxes (see ``prior_boxes``; image size from img_h/img_w, img_size or
    bottom 1; step from step_h/step_w, step or image / feature size), channel 1 the variances.
    min_size and max_size act truncated to integers, as in the fork. No backward.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.prior_box_param
        self.check(len(p.min_size) > 0, "must provide min_size.")
        for s in p.min_size:
            self.check(s > 0, f"min_size must be positive (got {s}).")
        self.min_sizes = list(p.min_size)
        self.max_sizes = list(p.max_size)
        if self.max_sizes:
            self.check(len(self.max_sizes) == len(self.min_sizes),
                       f"needs one max_size per min_size ({len(self.min_sizes)} min_size, "
                       f"{len(self.max_sizes)} max_size)")
            for low, high in zip(self.min_sizes, self.max_sizes):
                self.check(high > low, f"max_size must be greater than min_size "
                           f"({high} vs {low}).")
        self.ratios = aspect_ratios(p.aspect_ratio, p.flip)
        self.sizes = prior_box_sizes(self.min_sizes, self.max_sizes, self.ratios)
        self.num_priors = len(self.sizes)
        self.clip = p.clip
        variance = list(p.variance)
        self.check(len(variance) in (0, 1, 4),
                   f"give 1 or 4 variance values (got {len(variance)})")
        for v in variance:
            self.check(v > 0, f"variance must be positive (got {v}).")
        self.variance = np.asarray(variance or [0.1], dtype=np.float32)
        if p.HasField("img_h") or p.HasField("img_w"):
            self.check(not p.HasField("img_size"),
                       "Either img_size or img_h/img_w should be specified; not both.")
            self.check(p.img_h > 0, "img_h should be larger than 0.")
            self.check(p.img_w > 0, "img_w should be larger than 0.")
            self.img_h, self.img_w = int(p.img_h), int(p.img_w)
        elif p.HasField("img_size"):
            self.check(p.img_size > 0, "img_size should be larger than 0.")
            self.img_h = self.img_w = int(p.img_size)
        else:
            self.img_h = self.img_w = 0
        if p.HasField("step_h") or p.HasField("step_w"):
            self.check(not p.HasField("step"),
                       "Either step or step_h/step_w should be specified; not both.")
            self.check(p.step_h > 0, "step_h should be larger than 0.")
            self.check(p.step_w > 0, "step_w should be larger than 0.")
            self.step_h, self.step_w = float(p.step_h), float(p.step_w)
        elif p.HasField("step"):
            self.check(p.step > 0, "step should be larger than 0.")
            self.step_h = self.step_w = float(p.step)
        else:
            self.step_h = self.step_w = 0.0
        self.offset = float(p.offset)
        self.cache_key = None

    def reshape(self, bottom, top):
        for i, blob in enumerate(bottom):
            self.check(blob.num_axes <= 4, f"bottom {i} has more than 4 axes (shape "
                       f"{list(blob.shape)}); height and width are its axes 2 and 3")
        layer_h, layer_w = bottom[0].height, bottom[0].width
        dim = layer_h * layer_w * self.num_priors * 4
        self.check(dim > 0, f"no priors for feature map shape {list(bottom[0].shape)}")
        top[0].reshape([1, 2, dim])

    def forward(self, bottom, top):
        layer_h, layer_w = bottom[0].height, bottom[0].width
        if self.img_h == 0 or self.img_w == 0:
            img_h, img_w = bottom[1].height, bottom[1].width
        else:
            img_h, img_w = self.img_h, self.img_w
        if self.step_h == 0 or self.step_w == 0:
            step_h = np.float32(img_h) / np.float32(layer_h)
            step_w = np.float32(img_w) / np.float32(layer_w)
        else:
            step_h, step_w = self.step_h, self.step_w
        key = (layer_h, layer_w, img_h, img_w, common.mode())
        if key != self.cache_key:
            boxes = prior_boxes(layer_h, layer_w, img_h, img_w, step_h, step_w, self.offset,
                                self.sizes, self.clip)
            # One variance broadcast to every coordinate, or four repeated per prior.
            variances = np.resize(self.variance, boxes.size)
            both = np.stack([boxes, variances])
            self.priors = torch.from_numpy(both[None]).to(device=common.device(),
                                                           dtype=self.dtype)
            self.cache_key = key
        top[0].mutable_device_data().copy_(self.priors)
