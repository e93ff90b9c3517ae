"""Batched multi-scale glimpse sensor g(x, a): a G x G patch at a location and a scale.

Locations are in the normalised coordinates of ``grid_sample`` (align_corners=False):
``loc[..., 0]`` is horizontal (-1 left edge, +1 right edge), ``loc[..., 1]`` vertical
(-1 top, +1 bottom). A patch of scale ``s`` covers ``s`` of the canvas side. Parts of a
patch outside the canvas read zeros, so every real-valued location is valid: the sensor
never clips, and the policy's log-density is that of the location actually used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def area_resize(x: Tensor, sizes: list[int]) -> list[Tensor]:
    """x area-downsampled to each of ``sizes``: (B, C, H, W) -> list of (B, C, s, s).

    The same as ``F.interpolate(x, (s, s), mode="area")`` (adaptive average pooling) to
    within float rounding; computed with the B x C images as the channels of one
    channels-last image, where the pooling kernel runs vectorised across them (with one
    channel per image it runs one scalar window at a time, several times slower).
    """
    B, C, H, W = x.shape
    if B * C == 1:
        return [F.adaptive_avg_pool2d(x, s) for s in sizes]
    stacked = x.reshape(1, B * C, H, W).contiguous(memory_format=torch.channels_last)
    return [F.adaptive_avg_pool2d(stacked, s).reshape(B, C, s, s).contiguous() for s in sizes]


class GlimpseSensor(torch.nn.Module):
    """Reads K glimpses per image for all B images in one call per scale.

    Before sampling, the canvas is area-downsampled so that one patch pixel covers about
    one source pixel; otherwise wide glimpses would alias (skip most pixels).
    """

    def __init__(self, canvas_size: int, patch: int, scales: list[float]):
        super().__init__()
        self.canvas_size = canvas_size
        self.patch = patch
        self.scales = [float(s) for s in scales]
        # Level sizes of the pyramid: one patch pixel ~ one level pixel.
        self.level_sizes = [
            max(patch, min(canvas_size, round(canvas_size * patch / (s * canvas_size))))
            for s in self.scales
        ]
        axis = (torch.arange(patch, dtype=torch.float32) * 2 + 1) / patch - 1  # pixel centres
        gy, gx = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("base_grid", torch.stack([gx, gy], -1), persistent=False)  # (G, G, 2)

    def pyramid(self, x: Tensor, also: tuple[int, ...] = ()) -> list[Tensor]:
        """One resampled copy of x per scale: list of (B, C, h_s, h_s); then x resized to
        each of the sizes ``also`` (e.g. the model's context copy), in the same pass."""
        H = x.shape[-1]
        small = iter(area_resize(x, [s for s in self.level_sizes if s < H] + list(also)))
        return [x if size >= H else next(small) for size in self.level_sizes] + list(small)

    def forward(self, levels: list[Tensor], loc: Tensor, scale_idx: Tensor) -> Tensor:
        """Patches at the given actions.

        levels: output of :meth:`pyramid`, list of (B, C, h, h)
        loc: (B, K, 2) float, scale_idx: (B, K) long  ->  (B, K, C, G, G)
        """
        B, K, _ = loc.shape
        G = self.patch
        axis = self.base_grid[0, :, 0]  # (G,) pixel centres, the same on both axes
        loc_x, loc_y = loc[..., 0, None], loc[..., 1, None]  # (B, K, 1)
        patches = []
        for scale, level in zip(self.scales, levels, strict=True):
            # (B, K, G, G, 2): the base grid scaled to the patch size and moved to the
            # location, written from its two (B, K, G) axes (a broadcast over the last
            # dimension of size 2 is several times slower; the values are the same).
            a = axis * scale
            grid = torch.stack(torch.broadcast_tensors((a + loc_x)[:, :, None, :],
                                                       (a + loc_y)[:, :, :, None]), -1)
            p = F.grid_sample(
                level, grid.reshape(B, K * G, G, 2), mode="bilinear",
                padding_mode="zeros", align_corners=False,
            )  # (B, C, K*G, G)
            patches.append(p.reshape(B, -1, K, G, G).transpose(1, 2))  # (B, K, C, G, G)
        out = patches[-1]
        for s in range(len(patches) - 2, -1, -1):  # the chosen scale's patch
            out = torch.where((scale_idx == s)[:, :, None, None, None], patches[s], out)
        return out

    def boxes(self, loc: Tensor, scale_idx: Tensor) -> Tensor:
        """Patch boxes in canvas pixels, (..., 4) as (x0, y0, x1, y1), for drawing."""
        scale = torch.tensor(self.scales, device=loc.device)[scale_idx]  # (...)
        H = self.canvas_size
        centre = (loc + 1) * H / 2
        half = (scale * H / 2).unsqueeze(-1)
        return torch.cat([centre - half, centre + half], -1)
