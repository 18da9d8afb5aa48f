"""The memory model under gradient checkpointing, fitted from designed traces (docs/memory-model.md).

With non-reentrant checkpointing of every block and the input embeddings requiring grad (as PEFT and
``transformers.Trainer`` turn it on), a block keeps only its input through the step; its activations
exist only while it runs forward and while it is recomputed and backpropagated. Traced with a phase per
block ("fwd@l", "bwd@l"), each block's peak is, exactly on the architectures checked,

    peak(q@l) = F_q − (top − l)·β_q                       # β: one block input fewer live per block below
              + Σ_{active groups g of S_l} G_q[g] + Σ_{(m, r) ∈ S_l} (b_q[m] + r·c_q[m])   # the block's own
              + Σ_{blocks j > l} Σ (above_q[m] + r·above_rank_q[m])                       # adapters above
              + Σ_{blocks j < l} Σ (below_q[m] + r·below_rank_q[m])                       # ... and below

(the adapters of blocks already backpropagated hold gradients, those below do not yet), and the other
phases (the embedding and head's forward, the loss, the head's backward, the optimizer step) are
``F_p + Σ (module_p[m] + r·rank_p[m])`` over every adapted module. The step's peak is the largest of
them all. Blocks are identical, so a 3-block slice at full width identifies every term; the frozen
weights and block inputs of the blocks cut away are measured by one 4-block trace per shape.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..memory import Assignment
from ..profile import BLOCK_KINDS, PHASES, ModuleInfo, PhaseTerms, subset_key
from .fit import R0, R1, _or_zero, fit_basis

BLOCK_LAYERS = 3  # the slice the terms are fitted on


def design(modules: Sequence[ModuleInfo]) -> list[Assignment]:
    top = BLOCK_LAYERS - 1
    out: list[Assignment] = []
    for m in modules:
        out += [{(top, m.name): R0}, {(top, m.name): R1}, {(top - 1, m.name): R0}, {(0, m.name): R1}]
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(m.group, []).append(m.name)
    for members in groups.values():
        if len(members) > 1:
            out.append({(top, n): R0 for n in members})
    # Two modules in two blocks: with only single-module traces, a block of single-module groups (GPT-NeoX,
    # GPT-2) has its module counts sum to one in every observation, and the fixed term could not be told
    # from them. Across blocks the terms add up (within a block they need not: see the docs).
    first, last = min(modules, key=lambda m: m.order).name, max(modules, key=lambda m: m.order).name
    out += [{(0, first): R0, (top, last): R0}, {(0, last): R0, (top, first): R0}]
    return out


def all_at_top(modules: Sequence[ModuleInfo]) -> Assignment:
    """Every module of the top block: traced beside the design and left out of a first fit, it tells whether
    the running block's modules add up (``pairs_needed``); where pairs are fitted, the final fit includes it."""
    return {(BLOCK_LAYERS - 1, m.name): R0 for m in modules}


def pair_design(modules: Sequence[ModuleInfo]) -> tuple[list[str], list[Assignment]]:
    """Where they do not add up: every two modules together in the top block (keys, assignments)."""
    ordered = sorted(modules, key=lambda m: m.order)
    pairs = [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
    return ([subset_key([a.name, b.name]) for a, b in pairs],
            [{(BLOCK_LAYERS - 1, a.name): R0, (BLOCK_LAYERS - 1, b.name): R0} for a, b in pairs])


UNDER, OVER = 1e-4, 0.01  # misses of the all-modules trace's peak that make the profiler fit pair terms


def pairs_needed(terms: Mapping[str, Mapping[tuple[str, str], float]], observed: Mapping[str, int],
                 modules: Sequence[ModuleInfo]) -> float:
    """How far the terms fitted without pairs miss the all-modules trace's peak (the largest phase or block
    phase, as the step's peak is judged), relative and signed (+ over); 0 unless it is under by more than
    ``UNDER`` or over by more than ``OVER``. A miss in a phase that is not the peak is left alone, and so is a
    small over-prediction (the sum of singles above the truth, as on Llama-2-7B with nf4: +0.6 %)."""
    a = all_at_top(modules)
    pred = [sum(terms[p][c] * v for c, v in zip(_step_columns(modules), step_features(a, modules))) for p in PHASES]
    real = [float(observed[p]) for p in PHASES]
    for kind in BLOCK_KINDS:
        for l in range(BLOCK_LAYERS):
            x = block_features(a, l, modules, BLOCK_LAYERS - 1)
            pred.append(sum(terms[kind][c] * v for c, v in zip(_block_columns(modules), x)))
            real.append(float(observed[f"{kind}{l}"]))
    miss = (max(pred) - max(real)) / max(real)
    return miss if miss < -UNDER or miss > OVER else 0.0


def gap_assignment(modules: Sequence[ModuleInfo]) -> Assignment:
    """Traced on a 3-block and a 4-block slice: the difference is what one more block costs."""
    return {(0, max(modules, key=lambda m: m.order).name): R0}


def _multi_groups(modules) -> list[str]:
    sizes: dict[str, int] = {}
    for m in modules:
        sizes[m.group] = sizes.get(m.group, 0) + 1
    return sorted(g for g, n in sizes.items() if n > 1)


def _block_columns(modules, pairs: Sequence[str] = ()) -> list[tuple[str, str]]:
    cols = [("fixed", ""), ("path", "")] + [("group", g) for g in _multi_groups(modules)]
    for kind in ("module", "rank", "above", "above_rank", "below", "below_rank"):
        cols += [(kind, m.name) for m in modules]
    return cols + [("pair", k) for k in pairs]


def _step_columns(modules) -> list[tuple[str, str]]:
    return [("fixed", "")] + [(k, m.name) for k in ("module", "rank") for m in modules]


def block_features(a: Assignment, l: int, modules, top: int, pairs: Sequence[str] = ()) -> np.ndarray:
    cols = _block_columns(modules, pairs)
    index = {c: i for i, c in enumerate(cols)}
    group_of = {m.name: m.group for m in modules}
    x = np.zeros(len(cols))
    x[index[("fixed", "")]] = 1
    x[index[("path", "")]] = -(top - l)
    for g in {group_of[m] for (j, m) in a if j == l}:
        if ("group", g) in index:
            x[index[("group", g)]] = 1
    for (j, m), r in a.items():
        count, per_rank = ("module", "rank") if j == l else (("above", "above_rank") if j > l else ("below", "below_rank"))
        x[index[(count, m)]] += 1
        x[index[(per_rank, m)]] += r
    own = {m for (j, m) in a if j == l}
    for k in pairs:
        x[index[("pair", k)]] = float(all(m in own for m in k.split("+")))
    return x


def step_features(a: Assignment, modules) -> np.ndarray:
    cols = _step_columns(modules)
    index = {c: i for i, c in enumerate(cols)}
    x = np.zeros(len(cols))
    x[index[("fixed", "")]] = 1
    for (_, m), r in a.items():
        x[index[("module", m)]] += 1
        x[index[("rank", m)]] += r
    return x


def solve_terms(traces: Sequence[tuple[Assignment, Mapping[str, int]]], modules: Sequence[ModuleInfo],
                pairs: Sequence[str] = ()) -> tuple[dict[str, dict[tuple[str, str], float]], float]:
    """Least squares per phase (each block of each trace is one observation of its block phase);
    returns the terms per phase and the worst absolute residual (bytes). ``pairs``: pair terms to fit
    (their traces among ``traces``)."""
    top = BLOCK_LAYERS - 1
    out, worst = {}, 0.0
    for phase in PHASES:
        cols = _step_columns(modules)
        X = np.stack([step_features(a, modules) for a, _ in traces])
        y = np.array([float(p[phase]) for _, p in traces])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        worst = max(worst, float(np.max(np.abs(X @ coef - y))))
        out[phase] = dict(zip(cols, map(float, coef)))
    for kind in BLOCK_KINDS:
        cols = _block_columns(modules, pairs)
        rows = [(block_features(a, l, modules, top, pairs), float(p[f"{kind}{l}"])) for a, p in traces for l in range(BLOCK_LAYERS)]
        X = np.stack([r for r, _ in rows])
        y = np.array([v for _, v in rows])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        worst = max(worst, float(np.max(np.abs(X @ coef - y))))
        out[kind] = dict(zip(cols, map(float, coef)))
    return out, worst


def block_gap(three: Mapping[str, int], four: Mapping[str, int]) -> dict[str, float]:
    """Per phase, what one more block adds (its frozen weights and, where they are live, its input)."""
    gap = {p: float(four[p] - three[p]) for p in PHASES}
    gap.update({k: float(four[f"{k}{BLOCK_LAYERS}"] - three[f"{k}{BLOCK_LAYERS - 1}"]) for k in BLOCK_KINDS})
    return gap


def assemble(per_shape: Mapping[tuple[int, int], Mapping[str, Mapping[tuple[str, str], float]]],
             gaps: Mapping[tuple[int, int], Mapping[str, float]], modules: Sequence[ModuleInfo],
             num_layers: int, pairs: Sequence[str] = ()) -> dict[str, PhaseTerms]:
    shapes = list(per_shape)
    names = [m.name for m in modules]
    phases = {}
    for phase in list(PHASES) + list(BLOCK_KINDS):
        cols = per_shape[shapes[0]][phase]
        c = {col: fit_basis([(s, per_shape[s][phase][col]) for s in shapes]) for col in cols}
        extra = fit_basis([(s, gaps[s][phase] * (num_layers - BLOCK_LAYERS)) for s in shapes])
        fixed = tuple(a + b for a, b in zip(c[("fixed", "")], extra))
        zero = (0.0,) * len(fixed)
        block = phase in BLOCK_KINDS

        def per_module(kind):
            return {n: _or_zero(c[(kind, n)], shapes) for n in names} if (kind, names[0]) in c else {}
        phases[phase] = PhaseTerms(
            fixed=fixed, path=c[("path", "")] if block else zero, path_low={}, top_low={},
            group={g: c[("group", g)] for g in _multi_groups(modules)} if block else {},
            module=per_module("module"), rank=per_module("rank"), top={}, top_rank={},
            above=per_module("above"), above_rank=per_module("above_rank"),
            below=per_module("below"), below_rank=per_module("below_rank"),
            pair={k: v for k in pairs if any((v := _or_zero(c[("pair", k)], shapes)))} if block else {},
        )
    return phases
