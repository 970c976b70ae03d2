"""Models. Each has ``body`` and ``head`` submodules (ANIL adapts the head)."""

from innerloop.models.conv import BatchNorm2d, Conv4, GroupNorm
from innerloop.models.mlp import MLP, LinNet, LogisticRegression
from innerloop.models.norms import exact_norms
from innerloop.models.resnet import ResNet12

__all__ = ["MLP", "BatchNorm2d", "Conv4", "GroupNorm", "LinNet", "LogisticRegression", "ResNet12", "exact_norms"]
