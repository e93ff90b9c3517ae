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
    """Reads K glimpses per image for all B images in one call, each at its own scale.

    Before sampling, the canvas is area-downsampled so that one patch pixel covers about
    one source pixel; otherwise wide glimpses would alias (skip most pixels). With several
    scales, the pyramid levels are laid side by side in one "atlas" image per canvas, each
    inside a border of zeros, and each glimpse reads its own level there: one bilinear read
    per glimpse pixel, instead of one per scale and keeping one.
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
        # Atlas geometry: level s at rows 1..h_s, columns offset_s..offset_s + h_s - 1, with
        # a column of zeros between levels and a row of zeros above and below all of them.
        self.offsets = [1 + sum(h + 1 for h in self.level_sizes[:i]) for i in range(len(scales))]
        self.atlas_size = (max(self.level_sizes) + 2, sum(h + 1 for h in self.level_sizes) + 1)
        for name, values in (("_scale", self.scales), ("_size", self.level_sizes),
                             ("_offset", self.offsets)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32),
                                 persistent=False)

    def pyramid(self, x: Tensor, also: tuple[int, ...] = ()) -> list[Tensor]:
        """One resampled copy of x per scale: list of (B, C, h_s, h_s); then x resized to
        each of the sizes ``also`` (e.g. the model's context copy), in the same pass."""
        H = x.shape[-1]
        small = iter(area_resize(x, [s for s in self.level_sizes if s < H] + list(also)))
        return [x if size >= H else next(small) for size in self.level_sizes] + list(small)

    def atlas(self, levels: list[Tensor]) -> Tensor:
        """What :meth:`forward` reads: with one scale its level itself, (B, C, h, h); with
        several, the levels side by side in zeros, (B, C, *atlas_size)."""
        if len(levels) == 1:
            return levels[0]
        B, C = levels[0].shape[:2]
        out = levels[0].new_zeros(B, C, *self.atlas_size)
        for level, h, o in zip(levels, self.level_sizes, self.offsets, strict=True):
            out[:, :, 1:1 + h, o:o + h] = level
        return out

    def forward(self, levels: list[Tensor] | Tensor, loc: Tensor, scale_idx: Tensor) -> Tensor:
        """Patches at the given actions.

        levels: output of :meth:`pyramid`, list of (B, C, h, h), or its :meth:`atlas`
        loc: (B, K, 2) float, scale_idx: (B, K) long  ->  (B, K, C, G, G)
        """
        image = self.atlas(levels) if isinstance(levels, (list, tuple)) else levels
        B, K, _ = loc.shape
        G = self.patch
        axis = self.base_grid[0, :, 0]  # (G,) pixel centres, the same on both axes
        if len(self.scales) == 1:
            a = axis * self.scales[0]
            gx, gy = a + loc[..., 0, None], a + loc[..., 1, None]  # (B, K, G)
        else:
            scale = self._scale[scale_idx][..., None]  # (B, K, 1)
            h = self._size[scale_idx][..., None]
            a = axis * scale  # (B, K, G): the patch grid in the level's normalised coordinates
            gx, gy = a + loc[..., 0, None], a + loc[..., 1, None]
            # Level pixel coordinates (grid_sample's own, align_corners=False), clamped to
            # one pixel outside the level: farther out every bilinear neighbour is outside
            # and reads zero, and the clamp keeps such reads in the level's zero border.
            ux = (((gx + 1) * h - 1) / 2).clamp_min(-1).minimum(h)
            uy = (((gy + 1) * h - 1) / 2).clamp_min(-1).minimum(h)
            Ha, Wa = self.atlas_size
            gx = (2 * (ux + self._offset[scale_idx][..., None]) + 1) / Wa - 1
            gy = (2 * (uy + 1) + 1) / Ha - 1
        # (B, K, G, G, 2), written from its two (B, K, G) axes (a broadcast over a last
        # dimension of size 2 is several times slower).
        grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), -1)
        p = F.grid_sample(
            image, grid.reshape(B, K * G, G, 2), mode="bilinear",
            padding_mode="zeros", align_corners=False,
        )  # (B, C, K*G, G)
        return p.reshape(B, -1, K, G, G).transpose(1, 2)  # (B, K, C, G, G)

    def boxes(self, loc: Tensor, scale_idx: Tensor) -> Tensor:
        """Patch boxes in canvas pixels, (..., 4) as (x0, y0, x1, y1), for drawing."""
        scale = torch.tensor(self.scales, device=loc.device)[scale_idx]  # (...)
        H = self.canvas_size
        centre = (loc + 1) * H / 2
        half = (scale * H / 2).unsqueeze(-1)
        return torch.cat([centre - half, centre + half], -1)
