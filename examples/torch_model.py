"""A PyTorch module in jaxoip, run in JAX through torchax: its submodules are the layers, named by
`named_modules()` path ("blocks.1.conv"; Lucent's "blocks_1_conv" too). Needs `pip install 'jaxoip[torch]'`."""

import torch
from torch import nn

import jaxoip

# ImageNet's per-channel mean and standard deviation, in pixel units (0-255): what the module takes.
IMAGENET = jaxoip.Standardization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


class Block(nn.Module):
    """A residual block: conv, batch norm, PReLU, and the input added back."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return x + self.act(self.bn(self.conv(x)))


class SmallNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def factory() -> jaxoip.TrainedModel:
    """What `--model examples/torch_model.py:factory` calls: the module, its input shape (H, W, C) and
    standardization."""
    torch.manual_seed(0)
    net = SmallNet()  # Random weights here; load your trained state instead (net.load_state_dict(torch.load(...))).
    return jaxoip.from_torch(net, input_shape=(32, 32, 3), standardization=IMAGENET)


if __name__ == "__main__":
    model = factory()
    print("layers:", ", ".join(jaxoip.layer_names(model.config)))
