"""MTAN: per-task soft attention over a shared SegNet.

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, as the
MTAN code (github.com/lorenmt/mtan) and Nash-MTL's `SegNetMtan` build it. The shared
network is the SegNet backbone (`model.backbone.type: segnet`); its stages' maps reach this
architecture as a `StagedFeatures`. Each task has an attention module per stage: a
1x1 conv-BN-ReLU then 1x1 conv-BN-sigmoid that turns the stage's first map (concatenated
with the task's attended map from the stage before) into a mask, which multiplies the
stage's output elementwise. Between stages a shared 3x3 conv-BN-ReLU block carries the
attended map on (max-pooled on the way down, bilinearly upsampled x2 on the way up).

Stage widths f = w x [1, 2, 4, 8, 8] (w = the backbone's output width):
  encoder stage j: mask_j = att_j([first_j, carried_{j-1}]) (first_0 alone at j = 0),
    attended_j = mask_j * out_j, carried_j = maxpool(block_j(attended_j));
  decoder stage j (deepest first): up_j = block'_j(upsample(carried)),
    mask'_j = att'_j([unpooled_j, up_j]), carried = attended'_j = mask'_j * out'_j.
The task's representation is its last attended decoder map (B x w x H x W).

Ownership: the attention modules (`encoder_attention[t]`, `decoder_attention[t]`) are
task `t`'s; the blocks between stages are shared, as in the MTAN code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.segnet import conv_bn_relu, init_like_mtan, segnet_widths
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture
from polytask.models.staged import StagedFeatures


def attention_layer(in_channels: int, channels: int) -> nn.Sequential:
    """MTAN's attention module: 1x1 conv-BN-ReLU, then 1x1 conv-BN-sigmoid (a soft mask)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=1), nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, kernel_size=1), nn.BatchNorm2d(channels), nn.Sigmoid())


@ARCHITECTURES.register(
    "mtan", paper="End-to-End Multi-Task Learning with Attention (Liu et al. 2019)")
class MTAN(SharingArchitecture):
    """Per-task attention over the stages of a shared SegNet (`model.backbone.type:
    segnet`); no hyperparameters: the stage widths follow the backbone's width."""

    reads_stages: ClassVar[bool] = True

    def __init__(self, input_dim: int, task_names: Sequence[str]) -> None:
        super().__init__(input_dim, task_names)
        f = segnet_widths(input_dim)
        self.widths = f
        # Shared blocks: encoder stage j carries f[j] -> f[j + 1] (f[4] at the last stage);
        # decoder stage j (deepest first) mirrors encoder stage k = 4 - j: f[k] -> f[k - 1].
        self.encoder_blocks = nn.ModuleList(
            conv_bn_relu(f[j], f[min(j + 1, 4)]) for j in range(5))
        self.decoder_blocks = nn.ModuleList(
            conv_bn_relu(f[4 - j], f[4 - j] if j == 0 else f[max(3 - j, 0)])
            for j in range(5))
        self.encoder_attention = nn.ModuleDict({
            t: nn.ModuleList(attention_layer(f[0] if j == 0 else 2 * f[j], f[j])
                             for j in range(5))
            for t in self.task_names})
        self.decoder_attention = nn.ModuleDict({
            t: nn.ModuleList(self._decoder_attention(f, j) for j in range(5))
            for t in self.task_names})
        init_like_mtan(self)

    @staticmethod
    def _decoder_attention(f: tuple[int, ...], j: int) -> nn.Sequential:
        """Decoder stage j's attention: [unpooled map, carried map] -> the stage's width."""
        k = 4 - j  # the mirrored encoder stage
        out = f[max(k - 1, 0)]
        carried = f[4] if j == 0 else out
        return attention_layer(f[k] + carried, out)

    @property
    def output_dim(self) -> int:
        return self.widths[0]

    def _check(self, features: StagedFeatures | Tensor) -> StagedFeatures:
        if not isinstance(features, StagedFeatures):
            raise ConfigError(
                "model.architecture: mtan attends over the stages of a SegNet backbone and "
                f"got a plain {tuple(features.shape)} tensor; set model.backbone.type: segnet "
                "and give the tasks a dense kind (segmentation, depth, normals).")
        if tuple(features.widths) != self.widths:
            raise ConfigError(
                f"model.architecture: mtan was built for stage widths {list(self.widths)} but "
                f"the backbone's stages have {list(features.widths)}; build both from the "
                "same model.backbone.width.")
        return features

    def _attend(self, staged: StagedFeatures, task: str) -> Tensor:
        encoder_attention = self.encoder_attention[task]
        carried: Tensor | None = None
        for j, (first, out) in enumerate(staged.encoder):
            entry = first if carried is None else torch.cat((first, carried), dim=1)
            attended = encoder_attention[j](entry) * out
            carried = F.max_pool2d(self.encoder_blocks[j](attended), kernel_size=2, stride=2)
        assert carried is not None
        decoder_attention = self.decoder_attention[task]
        for j, (unpooled, out) in enumerate(staged.decoder):
            up = F.interpolate(carried, scale_factor=2, mode="bilinear", align_corners=True)
            up = self.decoder_blocks[j](up)
            carried = decoder_attention[j](torch.cat((unpooled, up), dim=1)) * out
        return carried

    def forward(self, features: StagedFeatures | Tensor,  # type: ignore[override]
                tasks: Sequence[str]) -> dict[str, Tensor]:
        staged = self._check(features)
        return {t: self._attend(staged, t) for t in tasks}

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.encoder_attention[task].parameters()
        yield from self.decoder_attention[task].parameters()
