"""SegNet: the encoder-decoder of the MTAN / Nash-MTL / CAGrad / FAMO NYUv2 experiments.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
for Image Segmentation", TPAMI 2017, in the form Liu, Johns, Davison, "End-to-End
Multi-Task Learning with Attention", CVPR 2019 (github.com/lorenmt/mtan) use as the shared
network, and Nash-MTL (Navon et al. 2022) reuses unchanged:

- five encoder stages of widths w x [1, 2, 4, 8, 8] (w = 64 in the papers); stage i is a
  3x3 conv-BN-ReLU to its width, then one (stage 0 and 1) or two more conv-BN-ReLU, then a
  2x2 max-pool that keeps its indices;
- five decoder stages mirroring them: max-unpool with the encoder's indices, a 3x3
  conv-BN-ReLU to the shallower width, then one or two more;
- Xavier-normal conv weights, zero biases, BatchNorm at (1, 0).

At level ``"dense"`` the backbone returns a `StagedFeatures` (final B x w x H x W map plus
every stage's maps, which `mtan` attends over); at any other level, the final map averaged
over the pixels (B x w), for image-level tasks on the same network. H and W must be
multiples of 32 (five poolings).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from polytask.errors import DataError
from polytask.models.images import IMAGE_KEY, ImageInputs, ImageNormalize
from polytask.models.spec import BackboneSpec
from polytask.models.staged import StagedFeatures
from polytask.models.vision import load_weights, register_vision

#: Stage widths as multiples of the first stage's width (64, 128, 256, 512, 512 at w = 64).
WIDTH_MULTIPLES = (1, 2, 4, 8, 8)
#: Each stage halves the resolution once: H and W must be multiples of this.
DOWNSAMPLING = 2 ** len(WIDTH_MULTIPLES)


def segnet_widths(width: int) -> tuple[int, ...]:
    """The five stage widths of a SegNet whose first stage has `width` channels."""
    return tuple(width * m for m in WIDTH_MULTIPLES)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """The SegNet/MTAN conv layer: 3x3 convolution (padding 1), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def init_like_mtan(module: nn.Module) -> None:
    """The MTAN code's initialisation: Xavier-normal conv/linear weights, zero biases,
    BatchNorm weight 1 and bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0.0)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.constant_(layer.weight, 1.0)
            nn.init.constant_(layer.bias, 0.0)


def image_tensor(inputs: Mapping[str, Tensor] | Tensor) -> Tensor:
    """The B x C x H x W image batch of the model inputs: a tensor, or the image encoder's
    ``{"image": ...}``."""
    if isinstance(inputs, Tensor):
        return inputs
    if IMAGE_KEY not in inputs:
        raise DataError(f"a SegNet backbone reads images; the inputs hold {sorted(inputs)}. "
                        "Give the tasks an image `input` column.")
    return inputs[IMAGE_KEY]


class SegNet(nn.Module):
    """The shared SegNet encoder-decoder (see the module docstring).

    Args:
        width: channels of the first stage (the papers: 64); the output has `width` channels.
        in_channels: channels of the input images (3 for RGB).
        normalize: turns the encoded (uint8) images into floats; None: the inputs are
            float images already.
    """

    def __init__(self, width: int = 64, in_channels: int = 3,
                 normalize: ImageNormalize | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        widths = segnet_widths(width)
        self.widths = widths
        self.output_dim = width
        self.encoder_entry = nn.ModuleList(
            conv_bn_relu(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(5))
        self.encoder_convs = nn.ModuleList(self._stage_convs(widths[i], i) for i in range(5))
        # Decoder stage j (deepest first) mirrors encoder stage k = 4 - j: from widths[k] to
        # widths[k - 1] (to widths[0] at k = 0), with as many convolutions as stage k.
        mirrored = [4 - j for j in range(5)]
        self.decoder_entry = nn.ModuleList(
            conv_bn_relu(widths[k], widths[max(k - 1, 0)]) for k in mirrored)
        self.decoder_convs = nn.ModuleList(
            self._stage_convs(widths[max(k - 1, 0)], k) for k in mirrored)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        init_like_mtan(self)

    @staticmethod
    def _stage_convs(channels: int, stage: int) -> nn.Module:
        """The convolutions after a stage's entry conv: one at stages 0 and 1, two below."""
        if stage <= 1:
            return conv_bn_relu(channels, channels)
        return nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def stages(self, images: Tensor) -> StagedFeatures:
        """Run the encoder-decoder, keeping every stage's maps."""
        height, width = images.shape[-2:]
        if height % DOWNSAMPLING or width % DOWNSAMPLING:
            raise DataError(f"SegNet needs images whose height and width are multiples of "
                            f"{DOWNSAMPLING} (five 2x2 poolings); got {height}x{width}. Resize "
                            "or crop the images (e.g. 288x384 for NYUv2, 128x256 for "
                            "Cityscapes).")
        encoder: list[tuple[Tensor, Tensor]] = []
        indices: list[Tensor] = []
        x = images
        for entry, convs in zip(self.encoder_entry, self.encoder_convs, strict=True):
            first = entry(x)
            out = convs(first)
            encoder.append((first, out))
            x, where = self.pool(out)
            indices.append(where)
        decoder: list[tuple[Tensor, Tensor]] = []
        for j, (entry, convs) in enumerate(zip(self.decoder_entry, self.decoder_convs,
                                               strict=True)):
            unpooled = self.unpool(x, indices[4 - j])
            x = convs(entry(unpooled))
            decoder.append((unpooled, x))
        return StagedFeatures(x, encoder, decoder, self.widths)

    def forward(self, inputs: Mapping[str, Tensor] | Tensor,
                level: str = "dense") -> StagedFeatures | Tensor:
        images = image_tensor(inputs)
        staged = self.stages(self.normalize(images) if self.normalize is not None else images)
        if level == "dense":
            return staged
        return staged.output.mean(dim=(-2, -1))


@register_vision("segnet")
def build_segnet(spec: BackboneSpec, inputs: ImageInputs) -> SegNet:
    """The SegNet of `type: segnet` for the fitted images (`width`: the first stage's
    channels; `weights_path`: a saved state dict of it)."""
    segnet = SegNet(spec.width, inputs.channels or 3, inputs.normalizer())
    if spec.weights_path:
        load_weights(segnet, spec.weights_path)
    return segnet


__all__ = ["DOWNSAMPLING", "SegNet", "build_segnet", "conv_bn_relu", "init_like_mtan",
           "segnet_widths"]
