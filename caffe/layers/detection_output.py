"""DetectionOutput (SSD fork): decode boxes, per-class NMS, keep the best detections."""

from __future__ import annotations

import logging

import torch

from caffe import bbox_util
from caffe.layer import Layer, register
from caffe.proto.floats import float_field

FLT_MAX = 3.4028234663852886e38

log = logging.getLogger("caffe")


def detect(loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor,
           *, num_classes: int, share_location: bool, background_label_id: int, code_type: int,
           variance_encoded_in_target: bool, confidence_threshold: float, nms_threshold: float,
           top_k: int, eta: float, keep_top_k: int, clip: bool = False) -> torch.Tensor:
    """Detections (K, 7) rows [image, label, score, xmin, ymin, xmax, ymax] from location
    predictions ``loc`` (N, P, L, 4), class scores ``conf`` (N, P, C) and priors / variances
    (P, 4); rows grouped by image, then label ascending, then score descending. K = 0 when
    nothing is found (the layer then writes its placeholder rows). ``clip`` (OpenCV's field)
    clamps the decoded boxes to [0, 1] before NMS."""
    boxes = bbox_util.decode(loc, priors[None, :, None, :], variances[None, :, None, :],
                             code_type, variance_encoded_in_target)
    if clip:
        boxes = boxes.clamp(0, 1)
    classes = [c for c in range(num_classes) if c != background_label_id]
    if not classes or loc.shape[0] == 0:
        return conf.new_empty((0, 7))
    if eta < 1:
        return _detect_adaptive(boxes, conf, classes, share_location=share_location,
                                confidence_threshold=confidence_threshold,
                                nms_threshold=nms_threshold, top_k=top_k, eta=eta,
                                keep_top_k=keep_top_k)
    num, num_priors = conf.shape[:2]
    label = torch.tensor(classes, device=conf.device)
    # One NMS set per (image, class), image-major: rows of candidates in score order.
    scores = conf.transpose(1, 2).contiguous()[:, label].reshape(-1, num_priors)
    live = torch.where(scores > confidence_threshold, scores,
                       torch.full_like(scores, -float("inf")))
    width = min(num_priors if top_k < 0 else top_k, num_priors,
                int((scores > confidence_threshold).sum(dim=1).max()))
    if width == 0:
        return conf.new_empty((0, 7))
    order = bbox_util.stable_top_k(live, width)
    valid = live.gather(1, order) > -float("inf")
    image = torch.arange(num, device=conf.device).repeat_interleave(len(classes))
    slot = torch.zeros_like(label) if share_location else label
    loc_slot = slot.repeat(num)
    picked = boxes[image[:, None], order, loc_slot[:, None]]
    keep = bbox_util.nms_keep(picked, valid, nms_threshold)
    # The kept boxes by image, label ascending, NMS (score) order.
    sets, rank = torch.nonzero(keep, as_tuple=True)
    kept_scores = live[sets, order[sets, rank]]
    if keep_top_k > -1:
        # Per image, the keep_top_k best scores (ties in (label, NMS) order): rank each kept
        # box within its image by a stable sort on score, then on image. Within a label the
        # NMS order is already by score, so the chosen ones stay in (label, NMS) order.
        by_score = torch.sort(kept_scores, descending=True, stable=True).indices
        by_image = by_score[torch.sort(image[sets][by_score], stable=True).indices]
        first = torch.searchsorted(image[sets][by_image], image[sets][by_image], right=False)
        place = torch.empty_like(by_image)
        place[by_image] = torch.arange(by_image.numel(), device=conf.device) - first
        chosen = place < keep_top_k
        sets, rank, kept_scores = sets[chosen], rank[chosen], kept_scores[chosen]
    index = order[sets, rank]
    return torch.cat([image[sets, None].to(conf.dtype), label.repeat(num)[sets, None].to(
        conf.dtype), kept_scores[:, None], boxes[image[sets], index, loc_slot[sets]]], dim=1)


def _detect_adaptive(boxes, conf, classes, *, share_location, confidence_threshold,
                     nms_threshold, top_k, eta, keep_top_k):
    """``detect`` with an adaptive NMS threshold (eta < 1): each class of each image goes
    through ``bbox_util.nms`` on its own (the threshold follows the keeps one by one)."""
    rows = []
    for i in range(boxes.shape[0]):
        class_scores = conf[i, :, classes].t()  # (classes, P)
        keeps = [bbox_util.nms(boxes[i, :, 0 if share_location else c], class_scores[k],
                               nms_threshold, top_k, eta, score_threshold=confidence_threshold)
                 for k, c in enumerate(classes)]
        index = torch.cat(keeps)
        if index.numel() == 0:
            continue
        labels = torch.cat([torch.full_like(k, c) for c, k in zip(classes, keeps)])
        scores = conf[i, index, labels]
        if -1 < keep_top_k < index.numel():
            # The best keep_top_k over all classes, then back to (label, score) order; a
            # stable sort keeps equal scores in (label, NMS) order.
            best = torch.sort(scores, descending=True, stable=True).indices[:keep_top_k]
            regroup = torch.sort(labels[best], stable=True).indices
            best = best[regroup]
            labels, index, scores = labels[best], index[best], scores[best]
        loc_slot = torch.zeros_like(labels) if share_location else labels
        image = torch.full_like(scores, i)
        rows.append(torch.cat([image[:, None], labels[:, None].to(scores.dtype),
                               scores[:, None], boxes[i, index, loc_slot]], dim=1))
    if not rows:
        return conf.new_empty((0, 7))
    return torch.cat(rows)


def check_predictions(layer: Layer, loc, conf, prior, loc_classes: int, num_classes: int) -> int:
    """The number of priors P of a PriorBox top (1, 2, P*4), checked against the location
    (N, P*loc_classes*4) and confidence (N, P*num_classes) predictions of an SSD head."""
    layer.check(prior.num_axes in (3, 4) and prior.shape[1] == 2,
                f"prior bottom must be (1, 2, P*4) as PriorBox writes it (shape "
                f"{list(prior.shape)})")
    num_priors = prior.height // 4
    layer.check(loc.count_range(1) == num_priors * loc_classes * 4,
                f"Number of priors must match number of location predictions (loc shape "
                f"{list(loc.shape)}, {num_priors} priors, {loc_classes} location class(es))")
    layer.check(conf.count_range(1) == num_priors * num_classes,
                f"Number of priors must match number of confidence predictions (conf shape "
                f"{list(conf.shape)}, {num_priors} priors, {num_classes} classes)")
    return num_priors


@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """Caffe type ``DetectionOutput`` of the SSD fork (weiliu89/caffe ``ssd``); reads
    ``detection_output_param`` (``num_classes`` required, ``share_location`` default true,
    ``background_label_id`` default 0 (-1: none), ``code_type`` default CORNER,
    ``variance_encoded_in_target``, ``confidence_threshold`` (unset: every score),
    ``nms_param { nms_threshold (0.3) top_k eta (1) }``, ``keep_top_k`` default -1 = all).
    ``clip`` (OpenCV dnn's field, default false) clamps decoded boxes to [0, 1] before NMS.
    Writing results to files (``save_output_param.output_directory``, which SSD's generated
    deploy files set) and visualisation are not done: a warning says so, the top is unaffected.

    Bottoms: loc (N, P*L*4) with L = 1 (share_location) or C, conf (N, P*C) probabilities,
    priors (1, 2, P*4) from PriorBox. Top (1, 1, K, 7): rows [image, label, score, xmin, ymin,
    xmax, ymax]. Boxes are decoded from the priors (clipped only with ``clip``); per image and
    class other than the background, boxes with score > confidence_threshold go through NMS
    (pre-NMS top_k, nms_threshold, adaptive eta); when an image keeps more than keep_top_k,
    the keep_top_k best scores over its classes remain. Rows come by image, label ascending,
    score descending. With no detection at all the top is (1, 1, N, 7), row i = [i, -1, -1,
    -1, -1, -1, -1].
    Forward only.
    """

    exact_num_bottom = 3
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.detection_output_param
        self.check(p.HasField("num_classes"), "Must specify num_classes")
        self.num_classes = int(p.num_classes)
        self.share_location = p.share_location
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background_label_id = int(p.background_label_id)
        self.check(not (self.share_location and self.background_label_id == -1),
                   "background_label_id -1 needs share_location false: the shared location "
                   "predictions carry label -1, which the SSD fork then skips as the "
                   "background (its Forward aborts with 'Could not find location predictions "
                   "for label -1')")
        self.code_type = int(p.code_type)
        self.variance_encoded_in_target = p.variance_encoded_in_target
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = (float(p.confidence_threshold)
                                     if p.HasField("confidence_threshold") else -FLT_MAX)
        nms = p.nms_param
        self.nms_threshold = float_field(nms, "nms_threshold")
        self.check(self.nms_threshold >= 0, f"nms_threshold must be non negative "
                   f"(got {self.nms_threshold}).")
        self.eta = float(nms.eta)
        self.check(0 < self.eta <= 1, f"nms_param.eta must be in (0, 1] (got {self.eta}).")
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        self.clip = p.clip
        if p.save_output_param.output_directory:
            log.warning("DetectionOutput %s: save_output_param ignored: caffepy does not write "
                        "detection files (output_directory %r); the top blob is unaffected",
                        self.name, p.save_output_param.output_directory)

    def reshape(self, bottom, top):
        loc, conf, prior = bottom
        self.check(loc.shape[0] == conf.shape[0], f"loc and conf need the same number of "
                   f"images (shapes {list(loc.shape)} and {list(conf.shape)})")
        self.num_priors = check_predictions(self, loc, conf, prior, self.num_loc_classes,
                                            self.num_classes)
        top[0].reshape([1, 1, 1, 7])

    def forward(self, bottom, top):
        num = bottom[0].shape[0]
        loc = bottom[0].device_data().reshape(num, self.num_priors, self.num_loc_classes, 4)
        conf = bottom[1].device_data().reshape(num, self.num_priors, self.num_classes)
        prior = bottom[2].device_data().reshape(2, self.num_priors, 4)
        rows = detect(loc, conf, prior[0], prior[1], num_classes=self.num_classes,
                      share_location=self.share_location,
                      background_label_id=self.background_label_id, code_type=self.code_type,
                      variance_encoded_in_target=self.variance_encoded_in_target,
                      confidence_threshold=self.confidence_threshold,
                      nms_threshold=self.nms_threshold, top_k=self.top_k, eta=self.eta,
                      keep_top_k=self.keep_top_k, clip=self.clip)
        if rows.shape[0] == 0:
            top[0].reshape([1, 1, num, 7])
            out = top[0].mutable_device_data()
            out.fill_(-1)
            out[0, 0, :, 0] = torch.arange(num, dtype=out.dtype, device=out.device)
            return
        top[0].reshape([1, 1, rows.shape[0], 7])
        top[0].mutable_device_data().copy_(rows.view(1, 1, -1, 7))
