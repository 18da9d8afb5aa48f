"""The math of aggregation: pure functions on factor tensors (no state, no I/O).

Shapes: A_k (r_k x in), B_k (out x r_k); p_k weights summing to 1; optional per-client
``scales`` s_k (ΔW_k = s_k · B_k A_k, default 1). Sums accumulate in place into one
preallocated output (``add_(x, alpha=p·s)``): one read of each client's factors, no padded or
scaled temporaries — these rules are memory-bound, so passes over memory are what costs.
"""
from __future__ import annotations

import math
from typing import Sequence

EXACT_SVD_MAX_RANK = 128  # stacked rank up to which FlexLoRA's SVD is exact (QR); above it, randomised


def _scales(scales, n):
    return [1.0] * n if scales is None else list(scales)


def pad(A, B, rank: int):
    """Zero-pad factors to ``rank`` (HetLoRA): A (rank x in), B (out x rank); ΔW unchanged."""
    import torch

    r = A.shape[0]
    return (torch.cat([A, A.new_zeros(rank - r, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], rank - r)], dim=1))


def truncate(A, B, rank: int):
    """Keep the leading ``rank`` components."""
    return A[:rank], B[:, :rank]


def zero_pad_mean(As: Sequence, Bs: Sequence, p: Sequence[float], scales: Sequence[float] | None = None, rank: int | None = None):
    """HetLoRA: pad every client to the largest rank (or ``rank``), then average the factors.

    Padding is never materialised: client k adds into the leading r_k rows of A and columns of B.
    """
    R = rank or max(a.shape[0] for a in As)
    A = As[0].new_zeros(R, As[0].shape[1])
    B = Bs[0].new_zeros(Bs[0].shape[0], R)
    for a, b, w, s in zip(As, Bs, p, _scales(scales, len(As))):
        r = a.shape[0]
        A[:r].add_(a, alpha=w)
        B[:, :r].add_(b, alpha=w * s)
    return A, B


def fedavg(As: Sequence, Bs: Sequence, p: Sequence[float], scales: Sequence[float] | None = None):
    """FedIT: average A and B separately (inexact: Σp·B · Σp·A ≠ Σ p·B·A); scales go into B.
    With one rank everywhere this is the zero-padding mean with nothing to pad."""
    return zero_pad_mean(As, Bs, p, scales)


def stack(As: Sequence, Bs: Sequence, p: Sequence[float], scales: Sequence[float] | None = None):
    """FLoRA: A = [p_1 A_1; ...; p_K A_K], B = [s_1 B_1 ... s_K B_K], so B @ A = Σ p_k s_k B_k A_k exactly."""
    import torch

    K = sum(a.shape[0] for a in As)
    A = torch.empty(K, As[0].shape[1], dtype=As[0].dtype)
    B = torch.empty(Bs[0].shape[0], K, dtype=Bs[0].dtype)
    off = 0
    for a, b, w, s in zip(As, Bs, p, _scales(scales, len(As))):
        r = a.shape[0]
        torch.mul(a, w, out=A[off:off + r])
        B[:, off:off + r] = b * s if s != 1.0 else b
        off += r
    return A, B


def svd_of_product(A, B, rank: int, seed: int = 0):
    """Rank-``rank`` SVD factors of B @ A without forming it.

    Up to ``EXACT_SVD_MAX_RANK`` stacked components: exact (QR of both factors, SVD of the small
    core, float64). Above it (e.g. 100 clients stacked: rank ~2,500 x 4,096 wide), a randomised
    range finder on the factored product (oversampling 16, two power iterations, float32) — a
    QR of the stack would cost ~2·n·K² per factor. Returns (A', B') with B' @ A' ≈ the best
    rank-``rank`` approximation, components ordered by singular value (truncation stays optimal).
    """
    import torch

    K = A.shape[0]
    if K <= EXACT_SVD_MAX_RANK:
        qb, rb = torch.linalg.qr(B.to(torch.float64))  # B = Qb Rb, Qb (out x K)
        qa, ra = torch.linalg.qr(A.to(torch.float64).T)  # A^T = Qa Ra, Qa (in x K)
        u, s, vh = torch.linalg.svd(rb @ ra.T)  # core (K x K)
        k = min(rank, s.shape[0])
        root = s[:k].sqrt()
        return (root[:, None] * (vh[:k] @ qa.T)).to(A.dtype), ((qb @ u[:, :k]) * root).to(B.dtype)
    gen = torch.Generator().manual_seed(seed)
    ell = min(rank + 16, K)
    omega = torch.randn(A.shape[1], ell, generator=gen, dtype=A.dtype)
    y = B @ (A @ omega)  # (out x ell): the range of B A
    for _ in range(2):  # power iterations sharpen the spectrum
        q, _ = torch.linalg.qr(y)
        z, _ = torch.linalg.qr(A.T @ (B.T @ q))
        y = B @ (A @ z)
    q, _ = torch.linalg.qr(y)
    small = (q.T @ B) @ A  # (ell x in)
    u, s, vh = torch.linalg.svd(small, full_matrices=False)
    k = min(rank, s.shape[0])
    root = s[:k].sqrt()
    return root[:, None] * vh[:k], (q @ u[:, :k]) * root


def product_norm(A, B) -> float:
    """‖B A‖_F from the small Gram matrices: ‖BA‖² = Σ (BᵀB) ∘ (AAᵀ)."""
    return float(((B.T @ B) * (A @ A.T)).sum().clamp_min(0).sqrt())


def sparsity_weights(As: Sequence, Bs: Sequence, scales: Sequence[float] | None = None) -> list[float]:
    """HetLoRA's sparsity weighting: p_k ∝ ‖s_k B_k A_k‖_F (computed from the small Gram matrices)."""
    norms = [abs(s) * product_norm(a, b) for a, b, s in zip(As, Bs, _scales(scales, len(As)))]
    total = sum(norms)
    return [n / total for n in norms] if total > 0 else [1.0 / len(norms)] * len(norms)


def relative_change(W_A, W_B, A, B) -> float:
    """‖B A − W_B W_A‖_F / ‖W_B W_A‖_F, from Gram matrices (never out x in); 1 when W is zero."""
    import torch

    diff = product_norm(torch.cat([A, W_A]), torch.cat([B, -W_B], dim=1))
    base = product_norm(W_A, W_B)
    return diff / base if base > 0 else 1.0


def ema(previous: float | None, value: float, decay: float) -> float:
    """decay · previous + (1 − decay) · value; the first value starts the average."""
    return value if previous is None else decay * previous + (1 - decay) * value


def dwa_pressure(counts: Sequence[float], moving: Sequence[float]) -> list[float]:
    """STAgg's ρ_j = u_j + ū · (m_j − m̄)/m̄, with u_j = (c̄ − c_j)/c̄ (under-updated entries) and
    ū = mean |u| (how unevenly entries are updated). The "still moving" term is weighted by ū: when
    every entry is updated equally often there is nothing to correct and every ρ is 0 (η = 1: FedAvg)."""
    c_bar = sum(counts) / len(counts)
    under = [(c_bar - c) / c_bar if c_bar > 0 else 0.0 for c in counts]
    spread = sum(abs(u) for u in under) / len(under)
    m_bar = sum(moving) / len(moving)
    return [u + (spread * (m - m_bar) / (m_bar + 1e-12) if m_bar > 0 else 0.0) for u, m in zip(under, moving)]


def dwa_steps(rho: Sequence[float], temperature: float, eta_max: float) -> list[float]:
    """η = n · softmax(ρ / T) (mean 1), each capped at ``eta_max``."""
    top = max(rho)
    ex = [math.exp((r - top) / temperature) for r in rho]
    total = sum(ex)
    return [min(len(ex) * e / total, eta_max) for e in ex]


def server_step(W_A, W_B, A, B, eta: float):
    """W ← W + η (agg − W) on both factors, W padded to the aggregate's rank first."""
    import torch

    if eta == 1.0:  # W + (agg − W) rounds differently from agg: take agg itself (then STAgg is FedAvg to the bit)
        return A, B
    if W_A.shape[0] < A.shape[0]:
        W_A, W_B = pad(W_A, W_B, A.shape[0])
    return torch.lerp(W_A, A, eta), torch.lerp(W_B, B, eta)


def weighted_mean(tensors: Sequence, p: Sequence[float]):
    """Σ p_k t_k (the example-weighted mean of trainable non-LoRA parameters, e.g. a classifier head)."""
    out = tensors[0].float() * p[0]
    for t, w in zip(tensors[1:], p[1:]):
        out.add_(t.float(), alpha=w)
    return out.to(tensors[0].dtype)
