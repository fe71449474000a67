"""Contrastive losses over L2-normalised vectors."""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["info_nce", "multi_positive_nce"]


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` and row i of `b` are the positive pair, every other
    row of the batch a negative. a, b: (B, d) unit vectors; scale = 1 / temperature."""
    logits = scale * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def multi_positive_nce(x: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
                       ) -> torch.Tensor:
    """Supervised contrastive loss within one batch: rows with the same label (a category)
    are positives of each other. Rows with no other row of their label are skipped;
    labels < 0 mean 'no label'. Zero when no row has a positive."""
    n = x.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    logits = (scale * x @ x.t()).masked_fill(eye, float("-inf"))
    same = (labels[:, None] == labels[None, :]) & ~eye & (labels[:, None] >= 0)
    has = same.any(dim=1)
    if not bool(has.any()):
        return x.sum() * 0.0
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(~same, 0.0)
    per_row = log_prob.sum(dim=1) / same.sum(dim=1).clamp_min(1)
    return -per_row[has].mean()
