"""The math of aggregation: pure functions on factor tensors (no state, no I/O).

Shapes: A_k (r_k x in), B_k (out x r_k), scale already folded into B_k; p_k weights summing to 1.
"""
from __future__ import annotations

from typing import Sequence


def pad(A, B, rank: int):
    """Zero-pad factors to ``rank`` (HetLoRA): A (rank x in), B (out x rank); ΔW unchanged."""
    import torch

    r = A.shape[0]
    return (torch.cat([A, A.new_zeros(rank - r, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], rank - r)], dim=1))


def truncate(A, B, rank: int):
    """Keep the leading ``rank`` components."""
    return A[:rank], B[:, :rank]


def weighted_mean(tensors: Sequence, weights: Sequence[float]):
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        out = out + t * w
    return out


def fedavg(As: Sequence, Bs: Sequence, p: Sequence[float]):
    """FedIT: average A and B separately (inexact: Σp·B · Σp·A ≠ Σ p·B·A)."""
    return weighted_mean(As, p), weighted_mean(Bs, p)


def zero_pad_mean(As: Sequence, Bs: Sequence, p: Sequence[float]):
    """HetLoRA: pad every client to the largest rank, then average the factors."""
    R = max(a.shape[0] for a in As)
    padded = [pad(a, b, R) for a, b in zip(As, Bs)]
    return fedavg([a for a, _ in padded], [b for _, b in padded], p)


def stack(As: Sequence, Bs: Sequence, p: Sequence[float]):
    """FLoRA: A = [p_1 A_1; ...; p_K A_K], B = [B_1 ... B_K], so B @ A = Σ p_k B_k A_k exactly."""
    import torch

    return torch.cat([a * w for a, w in zip(As, p)]), torch.cat(list(Bs), dim=1)


def svd_of_product(A, B, rank: int):
    """Rank-``rank`` SVD factors of B @ A without forming it: QR of both factors, SVD of the small core.

    Returns (A', B') with B' @ A' the best rank-``rank`` approximation of B @ A, components ordered
    by singular value so that truncating to fewer ranks stays optimal.
    """
    import torch

    qb, rb = torch.linalg.qr(B.to(torch.float64))  # B = Qb Rb, Qb (out x R)
    qa, ra = torch.linalg.qr(A.to(torch.float64).T)  # A^T = Qa Ra, Qa (in x R)
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # core (R x R)
    k = min(rank, s.shape[0])
    root = s[:k].sqrt()
    B2 = (qb @ u[:, :k]) * root
    A2 = root[:, None] * (vh[:k] @ qa.T)
    return A2.to(A.dtype), B2.to(B.dtype)


def sparsity_weights(As: Sequence, Bs: Sequence) -> list[float]:
    """HetLoRA's sparsity weighting: p_k ∝ ‖B_k A_k‖_F (computed from the small Gram matrices)."""
    norms = []
    for a, b in zip(As, Bs):
        # ‖BA‖_F^2 = trace((BᵀB)(AAᵀ))
        norms.append(float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0).sqrt()))
    total = sum(norms)
    return [n / total for n in norms] if total > 0 else [1.0 / len(norms)] * len(norms)
