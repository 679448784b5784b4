"""MultinomialLogisticLoss: negative log of the probability given to the true class."""

from __future__ import annotations

from caffe.layer import LossLayer, register
from caffe.layers.loss import LOG_THRESHOLD, check_label_range, integer_labels


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """Caffe type ``MultinomialLogisticLoss``; reads no parameter message.

    Bottoms: probabilities p (N, ...) flattened to (N, D), labels (N) in [0, D) (label blob with
    channels, height and width 1). Top: -sum_n log(max(p[n, label_n], 1e-20)) / N.
    dE/dp[n, label_n] = -loss_weight / N / max(p[n, label_n], 1e-20); 0 elsewhere.
    """

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.check(bottom[1].num_axes <= 4 and bottom[1].channels == 1
                   and bottom[1].height == 1 and bottom[1].width == 1,
                   f"the label blob must have shape (N) or (N, 1, 1, 1), got "
                   f"{list(bottom[1].shape)}")
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // self.num if self.num else 0

    def _picked(self, bottom):
        p = bottom[0].device_data().view(self.num, self.dim)
        labels = integer_labels(bottom[1].device_data()).view(self.num, 1)
        return labels, p.gather(1, labels).clamp_min(LOG_THRESHOLD)

    def forward(self, bottom, top):
        labels = integer_labels(bottom[1].device_data()).view(self.num)
        check_label_range(self, labels, None, self.dim)
        _, prob = self._picked(bottom)
        top[0].mutable_device_data().copy_(-prob.log().sum() / self.num)

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        if not propagate_down[0]:
            return
        labels, prob = self._picked(bottom)
        diff = bottom[0].mutable_device_diff().view(self.num, self.dim)
        diff.zero_()
        diff.scatter_(1, labels, prob.reciprocal() * (-top[0].device_diff() / self.num))
