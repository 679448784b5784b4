"""MultiBoxLoss (SSD fork): match priors to ground truth, mine hard negatives, and sum the
localization and confidence losses."""

from __future__ import annotations

import numpy as np
import torch

from caffe import bbox_util
from caffe.layer import LossLayer, register
from caffe.layers.detection_output import check_predictions
from caffe.layers.loss import BATCH_SIZE, FLT_MIN, FULL, VALID, normalization_mode
from caffe.proto import caffe_pb2
from caffe.proto.floats import float_field

P = caffe_pb2.MultiBoxLossParameter


def cross_boundary(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (..., 4) with a coordinate outside [0, 1] (SSD's IsCrossBoundaryBBox)."""
    return ((boxes < 0) | (boxes > 1)).any(dim=-1)


def softmax_conf_loss(conf: torch.Tensor, target: torch.Tensor):
    """Per-row -log(max(softmax(conf)[target], FLT_MIN)) of ``conf`` (..., C) and its gradient
    softmax - onehot(target)."""
    prob = torch.softmax(conf, dim=-1)
    picked = prob.gather(-1, target[..., None])[..., 0]
    grad = prob.scatter_add(-1, target[..., None], -torch.ones_like(picked)[..., None])
    return -torch.log(picked.clamp_min(FLT_MIN)), grad


def logistic_conf_loss(conf: torch.Tensor, target: torch.Tensor):
    """Per-row sum over classes of the sigmoid cross-entropy of ``conf`` (..., C) with targets
    of the same shape (Caffe's stable form), and its gradient sigmoid(conf) - target."""
    positive = (conf >= 0).to(conf.dtype)
    loss = -(conf * (target - positive) - torch.log1p(torch.exp(conf - 2 * conf * positive)))
    return loss.sum(dim=-1), torch.sigmoid(conf) - target


@register("MultiBoxLoss")
class MultiBoxLossLayer(LossLayer):
    """Caffe type ``MultiBoxLoss`` of the SSD fork (weiliu89/caffe ``ssd``); reads
    ``multibox_loss_param`` (``num_classes`` required; ``loc_loss_type`` SMOOTH_L1 | L2,
    ``conf_loss_type`` SOFTMAX | LOGISTIC, ``loc_weight`` 1, ``share_location`` true,
    ``match_type`` PER_PREDICTION | BIPARTITE, ``overlap_threshold`` 0.5,
    ``use_prior_for_matching`` true, ``background_label_id`` 0, ``use_difficult_gt`` true,
    ``mining_type`` MAX_NEGATIVE | HARD_EXAMPLE | NONE, ``neg_pos_ratio`` 3, ``neg_overlap`` 0.5,
    ``code_type`` CORNER, ``encode_variance_in_target``, ``map_object_to_agnostic``,
    ``ignore_cross_boundary_bbox``, ``bp_inside``, HARD_EXAMPLE's ``sample_size`` 64, NMS
    before mining: ``nms_param``, ``use_prior_for_nms``) and ``loss_param.normalization``
    (VALID).

    Bottoms: loc (N, P*L*4), L = 1 (share_location) or C; conf logits (N, P*C); priors
    (1, 2, P*4); ground truth (1, 1, G, 8) rows [image, label, instance, xmin, ymin, xmax, ymax,
    difficult] (image -1: padding). Top: the scalar loss.

    Per image, priors are matched to its ground truths (bipartite, then per prediction with
    IoU >= overlap_threshold); MAX_NEGATIVE keeps the int(num_pos * neg_pos_ratio) unmatched
    priors with IoU < neg_overlap and the largest background conf loss, HARD_EXAMPLE the
    sample_size priors of largest conf + loc loss (dropping matches not picked), NONE every
    prior.
    loss = (loc_weight * sum smoothL1(loc - encode(gt)) over matches + sum conf loss over
    matches and negatives) / normalizer (VALID: the number of matches, at least 1).
    Gradients go to loc and conf only.
    """

    exact_num_bottom = 4
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.multibox_loss_param
        self.p = p
        self.check(p.HasField("num_classes"), "Must provide num_classes.")
        self.num_classes = int(p.num_classes)
        self.check(self.num_classes >= 1, "num_classes should not be less than 1.")
        self.share_location = p.share_location
        self.loc_classes = 1 if self.share_location else self.num_classes
        self.background_label_id = int(p.background_label_id)
        self.mining_type = int(p.mining_type)
        if p.HasField("do_neg_mining"):
            self.check(p.do_neg_mining == (self.mining_type != P.NONE),
                       "do_neg_mining is deprecated and disagrees with mining_type")
        self.do_neg_mining = self.mining_type != P.NONE
        if self.mining_type == P.HARD_EXAMPLE:
            self.check(p.sample_size > 0, f"sample_size must be positive (got {p.sample_size})")
        # NMS among the mining candidates (ranked by loss) before picking them.
        self.mining_nms = p.HasField("nms_param") and p.nms_param.nms_threshold > 0
        self.normalization = normalization_mode(self.layer_param.loss_param)
        if self.do_neg_mining:
            self.check(self.share_location, "Currently only support negative mining if "
                       "share_location is true.")
        self.conf_softmax = p.conf_loss_type == P.SOFTMAX
        # The fork requires this for SOFTMAX, and its mining code for LOGISTIC too.
        self.check(0 <= self.background_label_id < self.num_classes,
                   f"background_label_id should be within [0, num_classes) (background_label_id "
                   f"{self.background_label_id}, num_classes {self.num_classes}).")
        if p.map_object_to_agnostic:
            self.check(self.num_classes == 2, f"map_object_to_agnostic needs num_classes 2 "
                       f"(got {self.num_classes})")
        # The fork adds propagate_down (true, true, false, false) when none is given; a loss
        # term whose bottom is not propagated is left out of the loss.
        given = list(self.layer_param.propagate_down)
        self.loss_terms = given[:2] if len(given) == 4 else [True, True]
        self.neg_pos_ratio = np.float32(p.neg_pos_ratio)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        loc, conf, prior, gt = bottom
        self.num_priors = check_predictions(self, loc, conf, prior, self.loc_classes,
                                            self.num_classes)
        self.num_gt = gt.height
        self.check(gt.num_axes == 4 and gt.count == self.num_gt * 8,
                   f"ground truth must be (1, 1, G, 8) (shape {list(gt.shape)})")

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < 2

    # --- forward pieces ----------------------------------------------------------------------
    def _ground_truth(self, gt: torch.Tensor):
        """The ground-truth rows used: (image ids, labels, boxes) of every row that is not
        padding (and not difficult unless use_difficult_gt), after the fork's label checks."""
        item = gt[:, 0].to(torch.int64)
        label = gt[:, 1].to(torch.int64)
        real = item != -1
        bad = real & (label == self.background_label_id)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            self.check(False, f"Found background label in the dataset (ground truth row {row} "
                       f"has label {int(label[row])} = background_label_id; ground truth "
                       f"shape {[1, 1, self.num_gt, 8]})")
        bad = real & ((label < 0) | (label >= self.num_classes))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            self.check(False, f"ground truth row {row} has label {int(label[row])} outside "
                       f"[0, num_classes = {self.num_classes})")
        if not self.p.use_difficult_gt:
            real &= gt[:, 7] == 0
        keep = real.nonzero()[:, 0]
        return item[keep], label[keep], gt[keep, 3:7]

    def _match(self, loc, priors, variances, gt_item, gt_label, gt_boxes):
        """FindMatches: (indices (N, L, P) into the used ground truths, -1 unmatched, and
        overlaps (N, L, P)), and which (image, label) entries exist (N, L): none for images
        without ground truth, none for the background's location class."""
        p = self.p
        num, num_priors, loc_classes = loc.shape[0], self.num_priors, self.loc_classes
        dev = loc.device
        indices = torch.full((num, loc_classes, num_priors), -1, dtype=torch.int64, device=dev)
        overlaps = torch.zeros((num, loc_classes, num_priors), dtype=loc.dtype, device=dev)
        present = torch.zeros((num, loc_classes), dtype=torch.bool, device=dev)
        bipartite_only = p.match_type == P.BIPARTITE
        threshold = float(p.overlap_threshold)
        slots = [c for c in range(loc_classes)
                 if self.share_location or c != self.background_label_id]
        for i in range(num):
            rows = (gt_item == i).nonzero()[:, 0]
            if rows.numel() == 0:
                continue
            present[i, slots] = True
            if p.use_prior_for_matching:
                ignore = cross_boundary(priors) if p.ignore_cross_boundary_bbox else None
                local, ov = bbox_util.match(gt_boxes[rows], priors, bipartite_only, threshold,
                                            ignore)
                found = local > -1
                matched = torch.where(found, rows[local.clamp_min(0)], local)
                for c in slots:
                    overlaps[i, c] = ov
                    if self.share_location:
                        indices[i, c] = matched
                    else:
                        own = found & (gt_label[rows[local.clamp_min(0)]] == c)
                        indices[i, c] = torch.where(own, matched, torch.full_like(matched, -1))
                continue
            for c in slots:
                mine = rows if self.share_location else rows[gt_label[rows] == c]
                preds = bbox_util.decode(loc[i, :, c], priors, variances, self.p.code_type,
                                         self.p.encode_variance_in_target)
                ignore = cross_boundary(preds) if p.ignore_cross_boundary_bbox else None
                local, ov = bbox_util.match(gt_boxes[mine], preds, bipartite_only, threshold,
                                            ignore)
                if mine.numel():
                    local = torch.where(local > -1, mine[local.clamp_min(0)], local)
                indices[i, c], overlaps[i, c] = local, ov
        return indices, overlaps, present

    def _conf_targets(self, matched, indices, gt_label, num):
        """The class each prior's confidence is trained towards (N, P): its ground truth's
        label (or background + 1 with map_object_to_agnostic) where matched, later location
        classes overriding earlier ones, the background elsewhere."""
        target = torch.full((num, self.num_priors), self.background_label_id, dtype=torch.int64,
                            device=indices.device)
        for c in range(self.loc_classes):
            hit = matched[:, c]
            if self.p.map_object_to_agnostic:
                label = torch.full_like(target, self.background_label_id + 1)
            else:
                label = gt_label[indices[:, c].clamp_min(0)] if gt_label.numel() else target
            target = torch.where(hit, label, target)
        return target

    def _loc_loss(self, loc, priors, variances, indices, matched, gt_boxes):
        """The location loss of each matched (image, class, prior) and its gradient
        (losses (M,), positions, d loss / d loc at them (M, 4))."""
        p = self.p
        where = matched.nonzero()
        img, slot, prior = where[:, 0], where[:, 1], where[:, 2]
        code_type = int(p.code_type)
        box_prior, box_var = priors[prior], variances[prior]
        gt = gt_boxes[indices[img, slot, prior]]
        if code_type != bbox_util.CORNER:
            bad = ((box_prior[:, 2] <= box_prior[:, 0]) | (box_prior[:, 3] <= box_prior[:, 1]))
            self.check(not bool(bad.any()), "a matched prior box has no positive width/height")
        if code_type == bbox_util.CENTER_SIZE:
            bad = (gt[:, 2] <= gt[:, 0]) | (gt[:, 3] <= gt[:, 1])
            self.check(not bool(bad.any()), "a matched ground-truth box has no positive "
                       "width/height (CENTER_SIZE encoding takes its log)")
        target = bbox_util.encode(gt, box_prior, box_var, code_type, p.encode_variance_in_target)
        pred = loc[img, prior, slot]
        if p.bp_inside:
            inside_of = box_prior
            if not p.use_prior_for_matching:
                inside_of = bbox_util.decode(pred, box_prior, box_var, code_type,
                                             p.encode_variance_in_target)
            outside = (inside_of < 0) | (inside_of > 1)
            pred = torch.where(outside, target, pred)
        if p.encode_variance_in_target:
            # As the fork does: both sides divided by the variance (and the gradient is passed
            # to loc as it is).
            pred, target = pred / box_var, target / box_var
        d = pred - target
        if p.loc_loss_type == P.SMOOTH_L1:
            small = d.abs() < 1
            loss = torch.where(small, 0.5 * d * d, d.abs() - 0.5).sum(dim=1)
            grad = torch.where(small, d, torch.sign(d))
        else:
            loss = 0.5 * (d * d).sum(dim=1)
            grad = d
        return loss, (img, prior, slot), grad

    def _conf_loss(self, conf, target, matched_any, rows, softmax=None):
        """Sum of the confidence loss over ``rows`` (N, P) and its gradient (N, P, C)
        (``softmax``: softmax_conf_loss(conf, target) when already computed)."""
        if self.conf_softmax:
            loss, grad = softmax if softmax is not None else softmax_conf_loss(conf, target)
        else:
            bg = self.background_label_id
            onehot = torch.full_like(conf, float(bg))
            if self.do_neg_mining:
                # Rows start at the background id's value; positives get 1 at their label,
                # negatives at the background.
                onehot.scatter_(-1, target[..., None], 1.0)
            else:
                # The fork writes positives' targets at image * P + prior * C + label of the
                # flat target array (its pointer steps by P, not P * C, per image).
                num, num_priors, classes = conf.shape
                img, prior = matched_any.nonzero(as_tuple=True)
                flat = onehot.view(-1)
                flat[img * num_priors + prior * classes + target[img, prior]] = 1.0
            loss, grad = logistic_conf_loss(conf, onehot)
        loss = torch.where(rows, loss, torch.zeros_like(loss)).sum()
        return loss, grad * rows[..., None]

    def _mine(self, loc, conf, priors, variances, indices, overlaps, present, matched, target,
              softmax, gt_boxes):
        """MineHardExamples for the one shared location class: the matches that stay (N, 1, P)
        and the negatives (N, P). Priors are ranked by their conf loss towards their targets
        (plus their location loss for HARD_EXAMPLE); MAX_NEGATIVE picks int(num_pos *
        neg_pos_ratio) of the unmatched priors with overlap < neg_overlap, HARD_EXAMPLE
        sample_size of all priors and drops the matches it does not pick. Images without
        ground truth take part in neither."""
        p = self.p
        if self.conf_softmax:
            loss = softmax[0]
        else:
            onehot = torch.nn.functional.one_hot(target, self.num_classes).to(conf.dtype)
            loss = logistic_conf_loss(conf, onehot)[0]
        unmatched = indices[:, 0] == -1
        if self.mining_type == P.HARD_EXAMPLE:
            if bool(matched.any()):
                per_match, (img, prior, _), _ = self._loc_loss(loc, priors, variances, indices,
                                                               matched, gt_boxes)
                loss = loss.index_put((img, prior), per_match, accumulate=True)
            eligible = present[:, 0, None].expand_as(unmatched)
            num_sel = eligible.sum(dim=1).clamp_max(int(p.sample_size))
        else:
            eligible = present[:, 0, None] & unmatched & (overlaps[:, 0] < float(p.neg_overlap))
            num_pos = matched[:, 0].sum(dim=1).cpu().numpy().astype(np.float32)
            wanted = torch.from_numpy((num_pos * self.neg_pos_ratio).astype(np.int64))
            num_sel = torch.minimum(wanted.to(eligible.device), eligible.sum(dim=1))
        if self.mining_nms:
            chosen = self._nms_pick(loc, priors, variances, loss, eligible, num_sel)
        else:
            chosen = bbox_util.hard_negatives(loss, eligible, num_sel)
        if self.mining_type == P.HARD_EXAMPLE:
            matched = matched & chosen[:, None, :]
        return matched, chosen & unmatched

    def _nms_pick(self, loc, priors, variances, loss, eligible, num_sel):
        """The first num_sel survivors, by loss, of SSD's ApplyNMS over each image's eligible
        priors (their own boxes with use_prior_for_nms, else the decoded predictions): the
        nms_param.top_k highest losses (an unset top_k reads as 0 and picks nothing, as in the
        fork), boxes of area < 1e-5 dropped, overlap > nms_threshold suppressed."""
        p = self.p
        nms = p.nms_param
        chosen = torch.zeros_like(eligible)
        for i in range(loc.shape[0]):
            where = eligible[i].nonzero()[:, 0]
            boxes = priors if p.use_prior_for_nms else bbox_util.decode(
                loc[i, :, 0], priors, variances, p.code_type, p.encode_variance_in_target)
            keep = bbox_util.nms(boxes[where], loss[i, where], float_field(nms, "nms_threshold"),
                                 int(nms.top_k), min_area=1e-5)
            chosen[i, where[keep[:int(num_sel[i])]]] = True
        return chosen

    def _normalizer(self, num, num_matches) -> float:
        if self.normalization == FULL:
            value = num * self.num_priors
        elif self.normalization == VALID:
            value = num_matches
        elif self.normalization == BATCH_SIZE:
            value = num
        else:
            value = 1
        return float(max(1, value))

    def forward(self, bottom, top):
        num = bottom[0].shape[0]
        loc = bottom[0].device_data().reshape(num, self.num_priors, self.loc_classes, 4)
        conf = bottom[1].device_data().reshape(num, self.num_priors, self.num_classes)
        prior = bottom[2].device_data().reshape(2, self.num_priors, 4)
        priors, variances = prior[0], prior[1]
        gt_item, gt_label, gt_boxes = self._ground_truth(
            bottom[3].device_data().reshape(self.num_gt, 8))
        indices, overlaps, present = self._match(loc, priors, variances, gt_item, gt_label,
                                                 gt_boxes)
        matched = (indices > -1) & present[..., None]
        matched_any = matched.any(dim=1)
        target = self._conf_targets(matched, indices, gt_label, num)
        num_matches = int(matched.sum())
        # Softmax: mining ranks priors by the loss towards the same targets the conf loss uses.
        softmax = softmax_conf_loss(conf, target) if self.conf_softmax else None
        if self.do_neg_mining:
            matched, negatives = self._mine(loc, conf, priors, variances, indices, overlaps,
                                            present, matched, target, softmax, gt_boxes)
            matched_any = matched.any(dim=1)
            num_matches = int(matched.sum())
            rows = matched_any | negatives
        else:
            rows = torch.ones_like(matched_any)
        self.normalizer = self._normalizer(num, num_matches)
        self.num_matches = num_matches
        loss = torch.zeros((), dtype=conf.dtype, device=conf.device)
        self.loc_grad = None
        if num_matches >= 1:
            loc_loss, self.loc_where, self.loc_grad = self._loc_loss(
                loc, priors, variances, indices, matched, gt_boxes)
            loc_loss = loc_loss.sum()
            if self.loss_terms[0]:
                loss = loss + float(self.p.loc_weight) * loc_loss / self.normalizer
        self.conf_grad = None
        if bool(rows.any()):
            conf_loss, self.conf_grad = self._conf_loss(conf, target, matched_any, rows,
                                                        softmax)
            if self.loss_terms[1]:
                loss = loss + conf_loss / self.normalizer
        top[0].mutable_device_data().copy_(loss)

    def backward(self, top, propagate_down, bottom):
        hint = (" (SSD's nets give the layer propagate_down: true true false false, since the "
                "priors come from layers that need backward)")
        self.check(not propagate_down[2], "Layer cannot backpropagate to prior inputs." + hint)
        self.check(not propagate_down[3], "Layer cannot backpropagate to label inputs." + hint)
        scale = top[0].device_diff() / self.normalizer
        if propagate_down[0]:
            num = bottom[0].shape[0]
            diff = bottom[0].mutable_device_diff()
            diff.zero_()
            if self.loc_grad is not None:
                img, prior, slot = self.loc_where
                view = diff.view(num, self.num_priors, self.loc_classes, 4)
                view[img, prior, slot] = self.loc_grad * (float(self.p.loc_weight) * scale)
        if propagate_down[1]:
            diff = bottom[1].mutable_device_diff()
            if self.conf_grad is None:
                diff.zero_()
            else:
                torch.mul(self.conf_grad.reshape(diff.shape), scale, out=diff)
