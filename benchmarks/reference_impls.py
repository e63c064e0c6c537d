"""Reference implementations the harness races against (benchmark-only code).

Written the way public RePr code does it: a Python loop over layers, each step a separate
array-library call. ``numpy_*`` use NumPy; ``torch_*`` use PyTorch on a given device.
"""
from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- metric + ranking
def numpy_rank(kernels: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """Per-layer O_f (flatten, normalise, matmul, abs, row-sum), then a global percentile."""
    scores = []
    for k in kernels:
        w = k.reshape(-1, k.shape[-1]).T
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        p = np.abs(w @ w.T - np.eye(w.shape[0], dtype=w.dtype))
        scores.append(p.sum(1) / w.shape[0])
    threshold = np.percentile(np.concatenate(scores), 100 * (1 - fraction))
    return [(s < threshold).astype(np.float32) for s in scores]


def torch_rank(kernels, fraction: float):
    import torch
    scores = []
    for k in kernels:  # torch layout (F, c_in, kh, kw)
        w = k.reshape(k.shape[0], -1)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        p = (w @ w.T - torch.eye(w.shape[0], device=w.device, dtype=w.dtype)).abs()
        scores.append(p.sum(1) / w.shape[0])
    flat = torch.cat(scores)
    threshold = torch.quantile(flat, 1 - fraction)
    return [(s < threshold).float() for s in scores]


# --------------------------------------------------------------------------- re-initialisation
def numpy_reinit(kernels, keeps, saved, seed: int = 0):
    """Complete QR of the constraint rows per layer; new filters from the null-space basis."""
    rng = np.random.default_rng(seed)
    out = []
    for k, keep, s in zip(kernels, keeps, saved):
        f = k.shape[-1]
        w, sv = k.reshape(-1, f).T, s.reshape(-1, f).T
        c = np.where(keep[:, None], w, sv)
        q, _ = np.linalg.qr(c.T, mode="complete")          # D × D
        null = q[:, f:]                                    # complement (if any)
        n_drop = int((~keep).sum())
        if null.shape[1] >= n_drop and n_drop:
            coeff = rng.normal(size=(null.shape[1], n_drop))
            new, _ = np.linalg.qr(null @ coeff)
            w = w.copy()
            w[~keep] = new.T * np.linalg.norm(w[keep], axis=1).mean()
        out.append(w.T.reshape(k.shape))
    return out


def torch_reinit(kernels, keeps, saved, seed: int = 0):
    import torch
    gen = torch.Generator(device=kernels[0].device).manual_seed(seed)
    out = []
    for k, keep, s in zip(kernels, keeps, saved):
        f = k.shape[0]
        w, sv = k.reshape(f, -1), s.reshape(f, -1)
        c = torch.where(keep[:, None], w, sv)
        q, _ = torch.linalg.qr(c.T, mode="complete")
        null = q[:, f:]
        n_drop = int((~keep).sum())
        if null.shape[1] >= n_drop and n_drop:
            coeff = torch.randn(null.shape[1], n_drop, generator=gen, device=k.device)
            new, _ = torch.linalg.qr(null @ coeff)
            w = w.clone()
            w[~keep] = new.T * w[keep].norm(dim=1).mean()
        out.append(w.reshape(k.shape))
    return out


# --------------------------------------------------------------------------- models
def torch_models():
    """repr_jax's zoo models in PyTorch (C^3(32), CIFAR ResNet-20 option A, VGG-16, MobileNetV2,
    ResNet-18 at 32×32, LeNet-5), He-normal init like repr_jax: the train-step comparisons."""
    from torch import nn
    import torch.nn.functional as F

    def he(m):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    class ConvNet(nn.Module):
        def __init__(self, width=32, depth=3, classes=10):
            super().__init__()
            chans = [3] + [width] * depth
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
            self.head = nn.Linear(width * 32 * 32, classes)
            self.apply(he)

        def forward(self, x):
            for c in self.convs:
                x = F.relu(c(x))
            return self.head(x.flatten(1))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            if self.stride != 1 or self.pad:
                x = x[:, :, ::self.stride, ::self.stride]
                x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(x + y)

    class ResNet(nn.Module):
        def __init__(self, depth=20, classes=10):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            blocks, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for b in range(n):
                    blocks.append(Block(cin, width, 2 if stage and b == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(64, classes)
            self.apply(he)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    class VGG16(nn.Module):
        """CIFAR VGG-16 as repr_jax's ``vgg16`` (paper variant): 13 conv+BN+ReLU, max-pools, 512→10."""
        CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

        def __init__(self, classes=10):
            super().__init__()
            layers, cin = [], 3
            for item in self.CFG:
                if item == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
                    cin = item
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(512, classes)
            self.apply(he)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            layers = [] if t == 1 else [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
            layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        """repr_jax's ``mobilenetv2``: torchvision's layout with its CIFAR strides (stem and stage 2 at 1)."""
        SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))

        def __init__(self, classes=10):
            super().__init__()
            layers, cin = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()], 32
            for stage, (t, c, n, s) in enumerate(self.SETTINGS):
                for j in range(n):
                    layers.append(InvertedResidual(cin, c, s if j == 0 and stage not in (0, 1) else 1, t))
                    cin = c
            layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(1280, classes)
            self.apply(he)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return F.relu(self.short(x) + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))

    class ResNet18(nn.Module):
        """repr_jax's ``resnet18`` at 32×32: 3×3 stride-1 stem, no max-pool, projection shortcuts."""
        def __init__(self, classes=10):
            super().__init__()
            layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
            for stage in range(4):
                for b in range(2):
                    width = 64 * 2 ** stage
                    layers.append(BasicBlock(cin, width, 2 if stage and b == 0 else 1))
                    cin = width
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(512, classes)
            self.apply(he)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    class LeNet5(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 20, 5), nn.Conv2d(20, 50, 5)
            self.fc1, self.head = nn.Linear(50 * 5 * 5, 500), nn.Linear(500, classes)
            self.apply(he)

        def forward(self, x):
            x = F.max_pool2d(self.c2(F.max_pool2d(self.c1(x), 2)), 2)
            return self.head(F.relu(self.fc1(x.flatten(1))))

    return {"convnet": ConvNet, "resnet20": ResNet, "vgg16": VGG16, "mobilenetv2": MobileNetV2,
            "resnet18": ResNet18, "lenet5": LeNet5}


def torch_convs_in_order(model):
    """The model's ``Conv2d`` modules in definition order (repr_jax's channel-graph order)."""
    from torch import nn
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]
