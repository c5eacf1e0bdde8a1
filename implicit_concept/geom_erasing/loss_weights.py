"""Geom-Erasing's re-weighted loss: where the concept is, the model learns less.

On the latent grid of T positions with K inside the concept's region, each position's squared error
is weighted ``T / (K + a(T - K))`` inside and ``a T / (K + a(T - K))`` outside. The weights sum to T,
so the loss keeps its scale; ``a > 1`` shifts learning away from the concept. With no box, every
weight is 1 (a plain MSE).

A box in image pixels (``x2``/``y2`` exclusive) is rasterised to the latent grid generously: a latent
cell is inside when its pixel footprint overlaps the box at all, so a concept is never left partly
outside the down-weighted region by rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch

from implicit_concept.sample import Box

DEFAULT_ALPHA = 2.0


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    return float(alpha)


def latent_cells(box: Box | Sequence[int], width: int, height: int, grid_w: int, grid_h: int) -> tuple[int, int, int, int]:
    """The latent cells ``(c1, r1, c2, r2)`` (ends exclusive) whose footprint overlaps the box."""
    x1, y1, x2, y2 = box.as_list() if isinstance(box, Box) else box
    c1, c2 = _cell_span(x1, x2, width, grid_w)
    r1, r2 = _cell_span(y1, y2, height, grid_h)
    return c1, r1, c2, r2


def _cell_span(lo: int, hi: int, extent: int, cells: int) -> tuple[int, int]:
    lo, hi = max(lo, 0), min(hi, extent)
    if hi <= lo:
        return 0, 0
    return lo * cells // extent, -((-hi * cells) // extent)


def region_mask(boxes: Sequence[Box | Sequence[int]], width: int, height: int, grid_w: int, grid_h: int) -> torch.Tensor:
    """Boolean ``(grid_h, grid_w)`` mask of the latent cells any box overlaps."""
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    for box in boxes:
        c1, r1, c2, r2 = latent_cells(box, width, height, grid_w, grid_h)
        mask[r1:r2, c1:c2] = True
    return mask


def reweight_map(mask: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Per-position weights for a boolean region ``mask``: they sum to the mask's size."""
    check_alpha(alpha)
    total = mask.numel()
    inside = int(mask.sum())
    denom = inside + alpha * (total - inside)
    w_in, w_out = total / denom, alpha * total / denom
    return torch.where(mask, torch.tensor(w_in), torch.tensor(w_out)).to(torch.float32)


def weight_map(
    boxes: Sequence[Box | Sequence[int]], width: int, height: int, grid_w: int, grid_h: int, alpha: float = DEFAULT_ALPHA
) -> torch.Tensor:
    """The ``(grid_h, grid_w)`` loss weights for an image of ``width`` x ``height`` with ``boxes``."""
    return reweight_map(region_mask(boxes, width, height, grid_w, grid_h), alpha)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``weights * (pred - target)**2`` over channels and positions; ``weights`` is ``(B, H, W)``."""
    err = (pred.float() - target.float()).pow(2)
    return (err * weights[:, None].to(err.dtype)).mean(dim=tuple(range(1, err.dim())))
