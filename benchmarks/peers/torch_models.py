"""The benchmark's nets written by hand in PyTorch eager (torch.nn), as a PyTorch user would.

CaffeNet, GoogLeNet, ResNet-50 (BatchNorm+Scale as one ``nn.BatchNorm2d``) and SSD300-VGG16
(body and heads up to the softmaxed confidences; its DetectionOutput is not written here).
Caffe's pooling sizes are ``ceil((H + 2 pad - k) / stride) + 1`` minus one when the last window
starts in the padding: exactly torch's ``ceil_mode=True`` rule. Nothing here imports caffe:
``load_caffe(model, params)`` takes ``{layer name: [numpy arrays]}`` (``caffe.Net.params``'s
blobs' data) and copies them into the modules, matched by Caffe layer name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _lrn() -> nn.Module:
    # Caffe LRN ACROSS_CHANNELS: x / (1 + alpha/n * sum of squares over n channels)^beta.
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class CaffeNet(nn.Module):
    """bvlc_reference_caffenet: conv1..conv5 (pool before LRN), fc6..fc8, softmax."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(9216, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, classes)
        self.norm = _lrn()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.max_pool2d(F.relu(self.conv1(x)), 3, 2, ceil_mode=True))
        x = self.norm(F.max_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2, ceil_mode=True)
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(x), dim=1)

    def caffe_layers(self) -> Iterator[tuple[str, nn.Module]]:
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            yield name, getattr(self, name)


class Inception(nn.Module):
    """One GoogLeNet inception module: 1x1, 1x1-3x3, 1x1-5x5 and pool-1x1 branches, concat."""

    def __init__(self, name: str, cin: int, n1: int, n3r: int, n3: int, n5r: int, n5: int,
                 npool: int) -> None:
        super().__init__()
        self.name = name
        self.b1 = nn.Conv2d(cin, n1, 1)
        self.b3r = nn.Conv2d(cin, n3r, 1)
        self.b3 = nn.Conv2d(n3r, n3, 3, padding=1)
        self.b5r = nn.Conv2d(cin, n5r, 1)
        self.b5 = nn.Conv2d(n5r, n5, 5, padding=2)
        self.proj = nn.Conv2d(cin, npool, 1)
        self.out_channels = n1 + n3 + n5 + npool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = F.relu(self.b1(x))
        b3 = F.relu(self.b3(F.relu(self.b3r(x))))
        b5 = F.relu(self.b5(F.relu(self.b5r(x))))
        bp = F.relu(self.proj(F.max_pool2d(x, 3, 1, padding=1, ceil_mode=True)))
        return torch.cat([b1, b3, b5, bp], 1)

    def caffe_layers(self) -> Iterator[tuple[str, nn.Module]]:
        m = f"inception_{self.name}"
        yield from ((f"{m}/1x1", self.b1), (f"{m}/3x3_reduce", self.b3r), (f"{m}/3x3", self.b3),
                    (f"{m}/5x5_reduce", self.b5r), (f"{m}/5x5", self.b5),
                    (f"{m}/pool_proj", self.proj))


# (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) per module (Szegedy et al. 2014, table 1)
GOOGLENET_INCEPTION = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
                       "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
                       "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
                       "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
                       "5b": (384, 192, 384, 48, 128, 128)}


class GoogLeNet(nn.Module):
    """bvlc_googlenet deploy: stem, nine inception modules, 7x7 average pool, classifier."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.conv2_reduce = nn.Conv2d(64, 64, 1)
        self.conv2 = nn.Conv2d(64, 192, 3, padding=1)
        self.norm = _lrn()
        blocks, cin = [], 192
        for name, widths in GOOGLENET_INCEPTION.items():
            blocks.append(Inception(name, cin, *widths))
            cin = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(cin, classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.max_pool2d(F.relu(self.conv1(x)), 3, 2, ceil_mode=True))
        x = F.relu(self.conv2(F.relu(self.conv2_reduce(x))))
        x = F.max_pool2d(self.norm(x), 3, 2, ceil_mode=True)
        for block in self.blocks:
            x = block(x)
            if block.name in ("3b", "4e"):
                x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = F.avg_pool2d(x, 7, 1, ceil_mode=True)
        x = F.dropout(x.flatten(1), 0.4, self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(x), dim=1)

    def caffe_layers(self) -> Iterator[tuple[str, nn.Module]]:
        yield from (("conv1/7x7_s2", self.conv1), ("conv2/3x3_reduce", self.conv2_reduce),
                    ("conv2/3x3", self.conv2))
        for block in self.blocks:
            yield from block.caffe_layers()
        yield "loss3/classifier", self.classifier


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck, MSRA layout: stride on the first 1x1, projection shortcut when
    the shape changes; each conv (no bias) followed by BatchNorm+Scale = one BatchNorm2d."""

    def __init__(self, name: str, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.name = name
        self.project = stride != 1 or cin != cout
        if self.project:
            self.conv1 = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
        self.conv2a = nn.Conv2d(cin, mid, 1, stride=stride, bias=False)
        self.bn2a = nn.BatchNorm2d(mid)
        self.conv2b = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2b = nn.BatchNorm2d(mid)
        self.conv2c = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2c = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.bn1(self.conv1(x)) if self.project else x
        y = F.relu(self.bn2a(self.conv2a(x)))
        y = F.relu(self.bn2b(self.conv2b(y)))
        return F.relu(self.bn2c(self.conv2c(y)) + short)

    def caffe_layers(self) -> Iterator[tuple[str, nn.Module]]:
        n = self.name
        branches = (("1", self.conv1, self.bn1),) if self.project else ()
        branches += (("2a", self.conv2a, self.bn2a), ("2b", self.conv2b, self.bn2b),
                     ("2c", self.conv2c, self.bn2c))
        for b, conv, bn in branches:
            yield from ((f"res{n}_branch{b}", conv), (f"bn{n}_branch{b}", bn),
                        (f"scale{n}_branch{b}", bn))


#: (stage, blocks, bottleneck width, output width) of ResNet-50
RESNET50_STAGES = ((2, 3, 64, 256), (3, 4, 128, 512), (4, 6, 256, 1024), (5, 3, 512, 2048))


class ResNet50(nn.Module):
    """ResNet-50 (He et al. 2015) as in MSRA's Caffe deploy net; global ``pool`` x ``pool``
    average pool (7 on a 224 x 224 input) and fc1000."""

    def __init__(self, classes: int = 1000, pool: int = 7) -> None:
        super().__init__()
        self.pool = pool
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for stage, count, mid, cout in RESNET50_STAGES:
            for i in range(count):
                stride = 2 if i == 0 and stage > 2 else 1
                blocks.append(Bottleneck(f"{stage}{'abcdef'[i]}", cin, mid, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, ceil_mode=True)
        x = F.avg_pool2d(self.blocks(x), self.pool, 1, ceil_mode=True)
        return self.fc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(x), dim=1)

    def caffe_layers(self) -> Iterator[tuple[str, nn.Module]]:
        yield from (("conv1", self.conv1), ("bn_conv1", self.bn1), ("scale_conv1", self.bn1))
        for block in self.blocks:
            yield from block.caffe_layers()
        yield "fc1000", self.fc


class L2Norm(nn.Module):
    """SSD's Normalize (across_spatial false, per-channel scale): x / sqrt(sum_c x^2 + eps)."""

    def __init__(self, channels: int, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 20.0))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(1, keepdim=True).add_(self.eps).sqrt_()
        return x / norm * self.weight.view(1, -1, 1, 1)


#: VGG-16 convolutions of SSD300: (name, out channels) per stage, 'M' = 2x2/2 max pool
SSD_VGG = (("conv1", (64, 64)), "M", ("conv2", (128, 128)), "M", ("conv3", (256, 256, 256)),
           "M", ("conv4", (512, 512, 512)), "M", ("conv5", (512, 512, 512)))
#: extra layers: (1x1 name, width, 3x3 name, width, stride, pad)
SSD_EXTRAS = (("conv6_1", 256, "conv6_2", 512, 2, 1), ("conv7_1", 128, "conv7_2", 256, 2, 1),
              ("conv8_1", 128, "conv8_2", 256, 1, 0), ("conv9_1", 128, "conv9_2", 256, 1, 0))
#: detection sources: (blob name, channels, priors per location)
SSD_SOURCES = (("conv4_3_norm", 512, 4), ("fc7", 1024, 6), ("conv6_2", 512, 6),
               ("conv7_2", 256, 6), ("conv8_2", 256, 4), ("conv9_2", 256, 4))


class SSD300(nn.Module):
    """SSD300 on VGG-16 (Liu et al. 2016, VOC0712 deploy): returns ``(mbox_loc,
    mbox_conf_flatten)``, the box offsets and the per-prior class softmax, flattened as the
    Caffe net's blobs; decoding and NMS (DetectionOutput) are left out."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        self.classes = classes
        self.vgg = nn.ModuleDict()
        cin = 3
        for item in SSD_VGG:
            if item == "M":
                continue
            stage, widths = item
            for i, width in enumerate(widths, start=1):
                self.vgg[f"{stage}_{i}"] = nn.Conv2d(cin, width, 3, padding=1)
                cin = width
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.extras = nn.ModuleDict()
        cin = 1024
        for name1, width1, name2, width2, stride, pad in SSD_EXTRAS:
            self.extras[name1] = nn.Conv2d(cin, width1, 1)
            self.extras[name2] = nn.Conv2d(width1, width2, 3, stride=stride, padding=pad)
            cin = width2
        self.norm = L2Norm(512)
        self.loc = nn.ModuleDict()
        self.conf = nn.ModuleDict()
        for name, channels, priors in SSD_SOURCES:
            self.loc[name] = nn.Conv2d(channels, priors * 4, 3, padding=1)
            self.conf[name] = nn.Conv2d(channels, priors * classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sources = {}
        for item in SSD_VGG:
            if item == "M":
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                continue
            stage, widths = item
            for i in range(1, len(widths) + 1):
                x = F.relu(self.vgg[f"{stage}_{i}"](x))
            if stage == "conv4":
                sources["conv4_3_norm"] = self.norm(x)
        x = F.max_pool2d(x, 3, 1, padding=1, ceil_mode=True)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        sources["fc7"] = x
        for name1, _, name2, _, _, _ in SSD_EXTRAS:
            x = F.relu(self.extras[name2](F.relu(self.extras[name1](x))))
            sources[name2] = x
        num = x.shape[0]
        loc = torch.cat([self.loc[n](s).permute(0, 2, 3, 1).flatten(1)
                         for n, s in sources.items()], 1)
        conf = torch.cat([self.conf[n](s).permute(0, 2, 3, 1).flatten(1)
                          for n, s in sources.items()], 1)
        conf = F.softmax(conf.view(num, -1, self.classes), dim=2).flatten(1)
        return loc, conf

    def caffe_layers(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.vgg.items()
        yield from (("fc6", self.fc6), ("fc7", self.fc7))
        yield from self.extras.items()
        yield "conv4_3_norm", self.norm
        for name, _, _ in SSD_SOURCES:
            yield f"{name}_mbox_loc", self.loc[name]
            yield f"{name}_mbox_conf", self.conf[name]


MODELS = {"caffenet": CaffeNet, "googlenet": GoogLeNet, "resnet50": ResNet50, "ssd300": SSD300}


@torch.no_grad()
def load_caffe(model: nn.Module, params: Mapping[str, Sequence[np.ndarray]]) -> nn.Module:
    """Copy Caffe parameter blobs (``{layer name: [arrays]}``) into ``model``'s modules.

    BatchNorm's three blobs (mean sum, variance sum, scale factor) become the running
    statistics, the following Scale's two blobs the affine weight and bias."""
    seen = set()
    for name, module in model.caffe_layers():
        if name not in params:
            raise KeyError(f"the caffemodel has no parameters for layer {name!r}")
        blobs = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
                 for b in params[name]]
        seen.add(name)
        if isinstance(module, nn.BatchNorm2d) and len(blobs) == 3:
            factor = float(blobs[2].reshape(-1)[0])
            factor = 0.0 if factor == 0 else 1.0 / factor
            module.running_mean.copy_(blobs[0] * factor)
            module.running_var.copy_(blobs[1] * factor)
            module.eps = 1e-5  # Caffe BatchNorm's default eps
        elif isinstance(module, (nn.BatchNorm2d, L2Norm)):
            module.weight.copy_(blobs[0].reshape(module.weight.shape))
            if len(blobs) > 1:
                module.bias.copy_(blobs[1].reshape(module.bias.shape))
        else:
            module.weight.copy_(blobs[0].reshape(module.weight.shape))
            if module.bias is not None:
                module.bias.copy_(blobs[1].reshape(module.bias.shape))
    missing = set(params) - seen
    if missing:
        raise KeyError(f"caffemodel layers the torch model does not use: {sorted(missing)}")
    return model
