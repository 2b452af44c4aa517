"""LeNet-5 (LeCun et al., 1998): the one architecture tlserve defines itself, since neither timm nor
torchvision ships it. 32×32 grayscale in; C1 conv5 → S2 pool → C3 conv5 → S4 pool → F5 120 → F6 84 → head.
Classic tanh and average-pool subsampling; C3 is fully connected (no partial connection table) and the
output is a linear layer rather than the paper's RBF units."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5),  # C1: 32 → 28
            nn.Tanh(),
            nn.AvgPool2d(2),  # S2: 28 → 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 → 10
            nn.Tanh(),
            nn.AvgPool2d(2),  # S4: 10 → 5
        )
        self.flatten = nn.Flatten()  # 16 × 5 × 5 = 400
        self.fc = nn.Sequential(nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh())  # F5, F6
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.flatten(self.features(x))))
