"""Callables for layers whose exported form is not a plain ``caffe.functional`` call."""

from __future__ import annotations

import torch

from caffe.layers.detection_output import detect


class DetectionOutput:
    """SSD's DetectionOutput as a non-differentiable call of the layer's own ``detect``: decode,
    per-class NMS and keep_top_k, giving (1, 1, K, 7) rows (placeholder rows of -1 with the
    image index when nothing is found). Runs eagerly only: K depends on the data."""

    __name__ = "detection_output"

    def __init__(self, layer) -> None:
        self.options = dict(
            num_classes=layer.num_classes, share_location=layer.share_location,
            background_label_id=layer.background_label_id, code_type=layer.code_type,
            variance_encoded_in_target=layer.variance_encoded_in_target,
            confidence_threshold=layer.confidence_threshold,
            nms_threshold=layer.nms_threshold, top_k=layer.top_k, eta=layer.eta,
            keep_top_k=layer.keep_top_k, clip=layer.clip)
        self.num_priors = layer.num_priors
        self.num_loc_classes = layer.num_loc_classes

    def __call__(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor
                 ) -> torch.Tensor:
        with torch.no_grad():
            num = loc.shape[0]
            loc = loc.reshape(num, self.num_priors, self.num_loc_classes, 4)
            conf = conf.reshape(num, self.num_priors, self.options["num_classes"])
            prior = prior.reshape(2, self.num_priors, 4)
            rows = detect(loc, conf, prior[0], prior[1], **self.options)
            if rows.shape[0] == 0:
                out = torch.full((1, 1, num, 7), -1.0, dtype=loc.dtype, device=loc.device)
                out[0, 0, :, 0] = torch.arange(num, dtype=loc.dtype, device=loc.device)
                return out
            return rows.reshape(1, 1, -1, 7)
