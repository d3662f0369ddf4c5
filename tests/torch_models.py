"""PyTorch modules for the torchax tests: a small CNN with batch norm, PReLU, max pooling, a residual block,
adaptive average pooling and a linear layer, and torchvision's ResNet-18 written out (torchvision's wheels do
not import beside the CPU build of torch that the `torch` extra installs)."""

import torch
from torch import nn


def randomize_batch_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters of every batch norm set away from their defaults."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return net


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return x + self.act(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.PReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.block = Residual(8)
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)
        self.unused = nn.Conv2d(8, 8, 1)  # Never called: not a layer.

    def forward(self, x):
        x = self.block(self.pool1(self.act1(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool2(x), 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one `relu` called twice, a downsampling shortcut where shapes change."""

    def __init__(self, channels_in: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or channels_in != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's `resnet18(weights=None)`, module for module and name for name (`layer4.1.conv1`)."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(widths[max(i - 1, 0)], width, 1 if i == 0 else 2), BasicBlock(width, width)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
