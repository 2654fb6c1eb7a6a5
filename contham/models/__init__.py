"""Networks: the report's Hamiltonian classifiers, He et al.'s CIFAR ResNets, the thesis's
ResNet-k / ODENet and a Hamiltonian network of the same shape; all by name in `build`."""

from .hamiltonian_net import ChannelPad, HamiltonianNet, init_field, init_layer, make_block, make_field
from .presets import PRESETS, preset
from .registry import available, build, count_parameters, default_data, describe, options
from .resnet import BasicBlock, CifarResNet, ShortcutA
from .thesis import PreActBlock, ThesisNet, thesis_hamiltonian, thesis_odenet, thesis_resnet

__all__ = [
    "PRESETS",
    "BasicBlock",
    "ChannelPad",
    "CifarResNet",
    "HamiltonianNet",
    "PreActBlock",
    "ShortcutA",
    "ThesisNet",
    "available",
    "build",
    "count_parameters",
    "default_data",
    "describe",
    "init_field",
    "init_layer",
    "make_block",
    "make_field",
    "options",
    "preset",
    "thesis_hamiltonian",
    "thesis_odenet",
    "thesis_resnet",
]
