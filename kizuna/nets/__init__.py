"""Reusable networks."""

from kizuna.nets.made import MADE, MaskedLinear
from kizuna.nets.mlp import MLP
from kizuna.nets.pixelcnn import MaskedConv2d, PixelCNN
from kizuna.nets.resnet import ResidualBlock, ResNet
from kizuna.nets.unet import UNet

__all__ = ["MADE", "MLP", "MaskedConv2d", "MaskedLinear", "PixelCNN", "ResNet", "ResidualBlock", "UNet"]
