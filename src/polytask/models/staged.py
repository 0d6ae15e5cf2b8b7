"""What a dense backbone returns when an architecture may attend over its stages.

A dense backbone (SegNet) returns, at level ``"dense"``, a `StagedFeatures`: its final map
plus the maps of its encoder and decoder stages. An architecture that reads stages (MTAN,
`SharingArchitecture.reads_stages`) gets the whole object; every other architecture gets
`StagedFeatures.output` only (see `MultiTaskModel`), so hard sharing over SegNet is the
plain SegNet.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(eq=False)
class StagedFeatures:
    """A dense backbone's final map and the maps of its stages, all B x C x H x W.

    Attributes:
        output: the final map (the input of the heads under hard sharing).
        encoder: per encoder stage, shallowest first: (the map after the stage's first
            convolution, the stage's output before pooling).
        decoder: per decoder stage, deepest first: (the unpooled map that enters the stage,
            the stage's output).
        widths: the channels of the encoder stages, shallowest first.
    """

    output: Tensor
    encoder: list[tuple[Tensor, Tensor]]
    decoder: list[tuple[Tensor, Tensor]]
    widths: tuple[int, ...]
