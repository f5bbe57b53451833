"""The two residual MLP families of the paper, and their closed-form parameter counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from hgsearch.errors import UsageError
from hgsearch.names import FAMILIES


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to build one model; a frontier CSV row holds exactly these fields."""

    family: str  # "hourglass" (wide-narrow-wide) or "conventional" (narrow-wide-narrow)
    d_in: int  # flattened input size (196 for x2 super-resolution of 28x28 images)
    d_out: int  # flattened output size (the image, 784 for 28x28)
    width: int  # residual stream width: d_z for Hourglass, d_x for conventional
    bottleneck: int  # inner width d_h of each residual branch
    depth: int  # number of residual blocks L
    fixed_win: bool = False  # keep W_in frozen at its random initialisation

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UsageError(f"unknown family {self.family!r}: use one of {', '.join(FAMILIES)}")
        for name in ("d_in", "d_out", "width", "bottleneck", "depth"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be a positive integer, got {getattr(self, name)}")
        # The paper's defining constraints: Hourglass widens the stream and squeezes the branch,
        # conventional keeps the stream at the image size and widens the branch.
        if self.family == "hourglass" and not self.bottleneck < self.width:
            raise UsageError(
                f"hourglass needs bottleneck < width, got {self.bottleneck} >= {self.width}"
            )
        if self.family == "conventional" and not self.bottleneck > self.width:
            raise UsageError(
                f"conventional needs bottleneck > width, got {self.bottleneck} <= {self.width}"
            )

    @property
    def params(self) -> int:
        """Total parameter count (the paper's x-axis): W_in + W_out + L blocks of two matrices."""
        return param_count(self.d_in, self.d_out, self.width, self.bottleneck, self.depth)

    @property
    def trainable_params(self) -> int:
        """Parameters the optimizer updates: the total minus W_in when W_in is fixed."""
        return self.params - (self.width * self.d_in if self.fixed_win else 0)

    def to_dict(self) -> dict:
        return asdict(self)


def param_count(d_in: int, d_out: int, width: int, bottleneck: int, depth: int) -> int:
    """Closed form shared by both families: no biases, BatchNorm without affine parameters."""
    return width * d_in + d_out * width + 2 * depth * width * bottleneck


class Block(nn.Module):
    """Pre-norm residual block z <- z + W_up relu(W_down norm(z)), as in the authors' code."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.down = nn.Linear(width, bottleneck, bias=False)
        self.up = nn.Linear(bottleneck, width, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.up(torch.relu(self.down(self.norm(z))))


class ResidualMLP(nn.Module):
    """x -> W_in -> L blocks -> W_out -> sigmoid; both families share this outer structure."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.w_in = nn.Linear(spec.d_in, spec.width, bias=False)
        self.blocks = nn.Sequential(*[Block(spec.width, spec.bottleneck) for _ in range(spec.depth)])
        self.w_out = nn.Linear(spec.width, spec.d_out, bias=False)
        if spec.fixed_win:
            # PyTorch's default init (uniform +-1/sqrt(d_in)) is the paper's fixed random lift.
            self.w_in.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No norm after the last block: W_out reads the raw residual stream.
        return torch.sigmoid(self.w_out(self.blocks(self.w_in(x))))


def build(spec: ArchSpec) -> ResidualMLP:
    """Build the module for a spec; its parameter counts equal spec.params / spec.trainable_params."""
    return ResidualMLP(spec)


def count_module_params(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts of a built module, to check the closed form against."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable
