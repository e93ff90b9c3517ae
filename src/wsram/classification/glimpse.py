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

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """One resampled copy of x per scale: list of (B, C, h_s, h_s)."""
        H = x.shape[-1]
        return [
            x if size >= H else F.interpolate(x, size=(size, size), mode="area")
            for size in self.level_sizes
        ]

    def forward(self, levels: list[Tensor], loc: Tensor, scale_idx: Tensor) -> Tensor:
        """Patches at the given actions.

        levels: output of :meth:`pyramid`, list of (B, C, h, h)
        loc: (B, K, 2) float, scale_idx: (B, K) long  ->  (B, K, C, G, G)
        """
        B, K, _ = loc.shape
        G = self.patch
        out = None
        for s, (scale, level) in enumerate(zip(self.scales, levels, strict=True)):
            # (B, K, G, G, 2): base grid scaled to the patch size and moved to the location
            grid = self.base_grid * scale + loc[:, :, None, None, :]
            p = F.grid_sample(
                level, grid.reshape(B, K * G, G, 2), mode="bilinear",
                padding_mode="zeros", align_corners=False,
            )  # (B, C, K*G, G)
            p = p.reshape(B, -1, K, G, G).transpose(1, 2)  # (B, K, C, G, G)
            if len(self.scales) == 1:
                return p
            chosen = (scale_idx == s)[:, :, None, None, None]
            out = torch.where(chosen, p, out if out is not None else torch.zeros_like(p))
        return out

    def boxes(self, loc: Tensor, scale_idx: Tensor) -> Tensor:
        """Patch boxes in canvas pixels, (..., 4) as (x0, y0, x1, y1), for drawing."""
        scale = torch.tensor(self.scales, device=loc.device)[scale_idx]  # (...)
        H = self.canvas_size
        centre = (loc + 1) * H / 2
        half = (scale * H / 2).unsqueeze(-1)
        return torch.cat([centre - half, centre + half], -1)
