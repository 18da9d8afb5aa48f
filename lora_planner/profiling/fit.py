"""Derive the separable memory terms from designed traces, then validate them on full traces.

Design (on a 3-block slice of the model at full width; blocks are identical, so terms carry over):
for each module m, with t the top block, t1 the one below and t2 the bottom one, m0 the last
module in forward order,
  A_m {(t,m): r0}   C_m {(t1,m): r0}   D_m {(t1,m0): r0, (t,m): r0}   D'_m the same at r1
  M_m {(t2,m0): r0, (t1,m): r0}   M'_m the same at r1   (m in a middle block: ``module``, ``rank``)
and for each group G of modules sharing an input: E_G {(t2,m0): r0} ∪ {(t1,m): r0 for m in G};
for each subset S of a group, {(t,S)} and {(t1,S)} (the lowest block's set function);
plus {(t2,m0)} and {(t2,m0),(t,m0)}, which separate ``path`` from ``fixed``.
Each phase's peak is linear in: 1, blocks above the lowest, which subset is lowest, active groups,
adapted modules, the sum of ranks per module, which single module is adapted in the top block
above the lowest (``top``) and the ranks in the top block (``top_rank``); least squares recovers the terms exactly. (path_low[m0] is folded into
``fixed``: every step has exactly one lowest module; when the lowest block is the top block,
top_low[S] replaces path_low[S], identified by the A_m traces.) This is repeated at four shapes to
fit each term over BASIS; the frozen weights of the blocks cut away are added back exactly.
"""
from __future__ import annotations

import math
import random
import statistics
from typing import Mapping, Sequence

import numpy as np

from ..memory import Assignment, predict_phases
from ..profile import (BASIS, PHASES, ModelProfile, ModuleInfo, PhaseTerms, basis, fit_shapes, group_subsets,  # noqa: F401
                       holdout_shape, subset_key)

R0, R1 = 8, 32


# Terms that scale with the tokens only (c0 + c1*T): what an adapted module keeps is [tokens,
# features] or [tokens, rank] shaped, never [tokens, seq]. They are fitted on the first two shapes
# (same sequence, twice the batch) and predicted at the other two, which then need only the traces
# of the attention-dependent terms (fixed, path, path_low, top_low, top). ``top`` is not among them:
# it is measured against the peak without it, which may sit in the attention (all-MiniLM-L6-v2).
TOKEN_KINDS = ("group", "module", "rank", "top_rank")


def design(modules: Sequence[ModuleInfo], top: int, full: bool = True) -> list[Assignment]:
    """The designed assignments; ``full=False``: only those that identify the attention-dependent
    terms once the TOKEN_KINDS terms are known."""
    t, t1, t2 = top, top - 1, top - 2
    m0 = max(modules, key=lambda m: m.order).name
    out: list[Assignment] = []
    for m in modules:
        out += [{(t, m.name): R0}, {(t1, m.name): R0}, {(t1, m0): R0, (t, m.name): R0}]
        if full:
            out += [{(t1, m0): R0, (t, m.name): R1}, {(t2, m0): R0, (t1, m.name): R0}, {(t2, m0): R0, (t1, m.name): R1}]
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(m.group, []).append(m.name)
    for members in groups.values():
        if len(members) > 1 and full:
            out.append({(t2, m0): R0, **{(t1, n): R0 for n in members}})
    # Several modules of one group in the lowest block: their traversal is a set function.
    for subsets in group_subsets(modules).values():
        for subset in subsets:
            if len(subset) > 1:
                out += [{(t, n): R0 for n in subset}, {(t1, n): R0 for n in subset}]
    # Two blocks above the lowest: separates the per-block path from the fixed part.
    out += [{(t2, m0): R0}, {(t2, m0): R0, (t, m0): R0}]
    return out


def _columns(modules: Sequence[ModuleInfo]) -> tuple[list[tuple[str, str]], str, set[str]]:
    m0 = max(modules, key=lambda m: m.order).name
    sizes: dict[str, int] = {}
    for m in modules:
        sizes[m.group] = sizes.get(m.group, 0) + 1
    multi = {g for g, n in sizes.items() if n > 1}
    cols = [("fixed", ""), ("path", "")]
    keys = [subset_key(t) for subs in group_subsets(modules).values() for t in subs]
    cols += [("path_low", k) for k in keys if k != m0]
    cols += [("top_low", k) for k in keys]
    cols += [("group", g) for g in sorted(multi)]
    cols += [("module", m.name) for m in modules] + [("rank", m.name) for m in modules]
    cols += [("top", m.name) for m in modules] + [("top_rank", m.name) for m in modules]
    return cols, m0, multi


def features(a: Assignment, modules: Sequence[ModuleInfo], num_layers: int) -> np.ndarray:
    cols, m0, multi = _columns(modules)
    index = {c: i for i, c in enumerate(cols)}
    group_of = {m.name: m.group for m in modules}
    x = np.zeros(len(cols))
    low, top = min(layer for layer, _ in a), num_layers - 1
    x[index[("fixed", "")]] = 1
    x[index[("path", "")]] = top - low
    order = {m.name: m.order for m in modules}
    low_mods = sorted((m for (layer, m) in a if layer == low), key=order.get)
    assert len({group_of[m] for m in low_mods}) == 1, "designed configurations adapt one group in the lowest block"
    key = subset_key(low_mods)
    if low == top:
        x[index[("top_low", key)]] = 1
    else:
        if key != m0:
            x[index[("path_low", key)]] = 1
        top_mods = [m for (layer, m) in a if layer == top]
        assert len(top_mods) <= 1, "designed configurations adapt at most one module in the top block above the lowest"
        for m in top_mods:
            x[index[("top", m)]] = 1
    for _, g in {(layer, group_of[m]) for (layer, m) in a}:
        if g in multi:
            x[index[("group", g)]] += 1
    for (layer, m), r in a.items():
        x[index[("module", m)]] += 1
        x[index[("rank", m)]] += r
        if layer == top and low < top:
            x[index[("top_rank", m)]] += r
    return x


def solve_terms(traces: Sequence[tuple[Assignment, Mapping[str, int]]], modules: Sequence[ModuleInfo],
                num_layers: int, known: Mapping[str, Mapping[tuple[str, str], float]] | None = None,
                ) -> tuple[dict[str, dict[tuple[str, str], float]], float]:
    """Least squares per phase; returns terms per phase and the worst absolute residual (bytes).

    ``known``: per phase, values of some columns (moved to the right-hand side, not fitted)."""
    cols, _, _ = _columns(modules)
    X = np.stack([features(a, modules, num_layers) for a, _ in traces])
    out, worst = {}, 0.0
    for phase in PHASES:
        fixed = (known or {}).get(phase, {})
        free = [i for i, c in enumerate(cols) if c not in fixed]
        y = np.array([float(p[phase]) for _, p in traces])
        y = y - X[:, [i for i, c in enumerate(cols) if c in fixed]] @ np.array([fixed[c] for c in cols if c in fixed])
        coef, *_ = np.linalg.lstsq(X[:, free], y, rcond=None)
        worst = max(worst, float(np.max(np.abs(X[:, free] @ coef - y))))
        out[phase] = {**{c: float(fixed[c]) for c in cols if c in fixed}, **{cols[i]: float(v) for i, v in zip(free, coef)}}
        _top_low_without_top_extra(out[phase], phase, modules)
    return out, worst


def _top_low_without_top_extra(terms: dict[tuple[str, str], float], phase: str, modules: Sequence[ModuleInfo]) -> None:
    """Each top_low[S] is fitted from one trace of S alone in the top block (at rank R0), where it
    holds everything beyond the module terms. The model adds the top block's moment term
    (memory.top_extra) to top_low in that case, so take that term out of top_low here."""
    from types import SimpleNamespace

    from ..memory import adapter_state_per_rank, top_extra

    kinds = ("module", "rank", "top", "top_rank")
    t = SimpleNamespace(static=adapter_state_per_rank(modules, phase),
                        **{k: {n: v for (kind, n), v in terms.items() if kind == k} for k in kinds})
    order_of = {m.name: m.order for m in modules}
    for subset in (s for subs in group_subsets(modules).values() for s in subs):
        terms[("top_low", subset_key(subset))] -= top_extra(t, {n: R0 for n in subset}, order_of)


def token_terms_at(per_shape: Mapping[tuple[int, int], Mapping[str, Mapping[tuple[str, str], float]]],
                   shape: tuple[int, int]) -> dict[str, dict[tuple[str, str], float]]:
    """TOKEN_KINDS terms at ``shape``, on the line c0 + c1*T through the two shapes fitted in full."""
    (s0, v0), (s1, v1) = list(per_shape.items())[:2]
    t0, t1, t = s0[0] * s0[1], s1[0] * s1[1], shape[0] * shape[1]
    return {phase: {c: v0[phase][c] + (v1[phase][c] - v0[phase][c]) * (t - t0) / (t1 - t0)
                    for c in v0[phase] if c[0] in TOKEN_KINDS} for phase in PHASES}


def fit_basis(values_by_shape: Sequence[tuple[tuple[int, int], float]]) -> tuple[float, ...]:
    """Coefficients over BASIS reproducing the term's value at each fitted shape."""
    A = np.array([basis(b, s) for (b, s), _ in values_by_shape])
    y = np.array([v for _, v in values_by_shape])
    scale = np.maximum(np.abs(A).max(axis=0), 1.0)
    coef, *_ = np.linalg.lstsq(A / scale, y, rcond=None)
    return tuple(float(c) for c in coef / scale)


def reference_excess(report: Sequence[Mapping]) -> float:
    """m0's own lowest-block traversal, where branch probes saw it (``assign_branches``), else 0."""
    seen = [r["reference_excess"] for r in report if r.get("reference_excess")]
    return float(min(seen)) if seen else 0.0


def shift_reference(phases: Mapping[str, PhaseTerms], excess: float, tokens: int) -> dict[str, PhaseTerms]:
    """Give the reference module its lowest-block traversal ``excess`` (bytes at ``tokens`` tokens, scaled
    with the token count: it is a saved activation): every lowest-block term gains it and the fixed term
    loses it, so a lowest block on one branch predicts as before and one on two branches pays it once more.
    The optimiser phase (activations gone) is left alone."""
    import dataclasses

    if not excess:
        return dict(phases)
    per_token = excess / tokens

    def up(c, sign):
        return (c[0], c[1] + sign * per_token, *c[2:])
    out = {}
    for phase, t in phases.items():
        if phase == "opt":
            out[phase] = t
            continue
        out[phase] = dataclasses.replace(t, fixed=up(t.fixed, -1), path_low={k: up(v, 1) for k, v in t.path_low.items()},
                                         top_low={k: up(v, 1) for k, v in t.top_low.items()})
    return out


def assemble(per_shape: Mapping[tuple[int, int], Mapping[str, Mapping[tuple[str, str], float]]],
             modules: Sequence[ModuleInfo], frozen_gap_bytes: float) -> dict[str, PhaseTerms]:
    """Per-shape, per-phase term values -> PhaseTerms with BASIS coefficients."""
    cols, m0, multi = _columns(modules)
    keys = [subset_key(t) for subs in group_subsets(modules).values() for t in subs]
    shapes = list(per_shape)
    phases = {}
    for phase in PHASES:
        coeffs = {c: fit_basis([(s, per_shape[s][phase][c]) for s in shapes]) for c in cols}
        fixed = list(coeffs[("fixed", "")])
        fixed[0] += frozen_gap_bytes
        phases[phase] = PhaseTerms(
            fixed=tuple(fixed), path=coeffs[("path", "")],
            path_low={k: (coeffs[("path_low", k)] if k != m0 else (0.0,) * len(BASIS)) for k in keys},
            top_low={k: coeffs[("top_low", k)] for k in keys},
            group={g: coeffs[("group", g)] for g in sorted(multi)},
            module={m.name: coeffs[("module", m.name)] for m in modules},
            rank={m.name: coeffs[("rank", m.name)] for m in modules},
            top={m.name: _or_zero(coeffs[("top", m.name)], shapes) for m in modules},
            top_rank={m.name: _or_zero(coeffs[("top_rank", m.name)], shapes) for m in modules},
        )
    return phases


def _or_zero(c: tuple[float, ...], shapes) -> tuple[float, ...]:
    """A term under a byte at every fitted shape is least-squares noise: store an exact zero."""
    if max(abs(sum(x * y for x, y in zip(c, basis(b, s)))) for b, s in shapes) < 1.0:
        return (0.0,) * len(c)
    return c


def random_assignments(modules: Sequence[str], num_layers: int, n: int, seed: int,
                       ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)) -> list[Assignment]:
    """Random LoRA assignments: a random lowest layer, random modules above it, random ranks."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        low = rng.randrange(num_layers)
        density = rng.choice([0.1, 0.3, 0.6, 1.0])
        a = {}
        for layer in range(low, num_layers):
            for m in modules:
                if rng.random() < density:
                    a[(layer, m)] = rng.choice(list(ranks))
        a.setdefault((low, rng.choice(list(modules))), rng.choice(list(ranks)))
        out.append(a)
    return out


def validate(profile: ModelProfile, measured_peaks: Sequence[Mapping[str, int]], assignments: Sequence[Assignment],
             shape: tuple[int, int] | None = None) -> dict:
    """Predicted vs measured peak for each assignment; relative errors (+ = over-prediction)."""
    batch, seq = shape or (profile.batch_size, profile.seq_len)
    rows = []
    for a, peaks in zip(assignments, measured_peaks):
        measured = max(peaks.values())
        predicted = max(predict_phases(profile, a, batch, seq).values())
        rows.append({"entries": len(a), "lowest_layer": min(l for l, _ in a), "batch_size": batch, "seq_len": seq,
                     "predicted_bytes": predicted, "measured_bytes": measured,
                     "rel_error": (predicted - measured) / measured})
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    errs = [r["rel_error"] for r in rows]
    return {
        "n": len(rows),
        "median_abs_rel_error": statistics.median(abs(e) for e in errs) if errs else math.nan,
        "max_abs_rel_error": max(abs(e) for e in errs) if errs else math.nan,
        "worst_under_prediction": -min(min(errs), 0.0) if errs else math.nan,
        "rows": rows,
    }


# ---- parallel branches (GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)) --------------------------------

def branch_probes(modules: Sequence[ModuleInfo], top: int) -> list[tuple[str, str, Assignment]]:
    """For every pair of input groups, their deepest members (first in forward order) together in the
    block below the top, as the lowest block: does its traversal cost the larger of the two terms (one
    branch: the deeper traversal includes the other) or their sum (parallel branches)?"""
    first: dict[str, ModuleInfo] = {}
    for m in sorted(modules, key=lambda m: m.order):
        first.setdefault(m.group, m)
    groups = list(first)
    return [(g, h, {(top - 1, first[g].name): R0, (top - 1, first[h].name): R0})
            for i, g in enumerate(groups) for h in groups[i + 1:]]


def assign_branches(modules: Sequence[ModuleInfo], probes, peaks: Sequence[Mapping[str, int]],
                    terms: Mapping[str, Mapping[tuple[str, str], float]], min_bytes: float = 4096.0,
                    ) -> tuple[tuple[ModuleInfo, ...], list[dict]]:
    """Modules with ``branch`` set from the probe traces (``branch_probes``), given the terms fitted at the
    probes' shape. Two groups are on parallel branches when the probe's peak is nearer the sum of their
    traversal terms than the larger one (and the smaller term is at least ``min_bytes``: otherwise both
    rules agree and nothing is learnt). Groups found nested share a branch (union-find); a group nothing
    was learnt about (its traversal term ~0) joins the first group's branch, so a sequential block stays
    one branch and predicts exactly as before."""
    import dataclasses

    m0 = max(modules, key=lambda m: m.order).name
    m0_group = next(m.group for m in modules if m.name == m0)
    groups = sorted({m.group for m in modules}, key=lambda g: min(m.order for m in modules if m.group == g))
    parent = {g: g for g in groups}

    def find(g):
        while parent[g] != g:
            g = parent[g]
        return g

    sizes: dict[str, int] = {}
    for m in modules:
        sizes[m.group] = sizes.get(m.group, 0) + 1
    report = []
    for (g, h, a), peak in zip(probes, peaks):
        rules = {"max": 0.0, "sum": 0.0}
        smaller = math.inf
        for phase in PHASES:
            t = terms[phase]
            base = t[("fixed", "")] + t[("path", "")]
            base += sum(t[("group", grp)] for grp in {g, h} if sizes[grp] > 1)
            base += sum(t[("module", n)] + r * t[("rank", n)] for (_, n), r in a.items())
            pl = [t[("path_low", n)] if n != m0 else 0.0 for (_, n) in a]
            rules["max"] = max(rules["max"], base + max(pl))
            rules["sum"] = max(rules["sum"], base + sum(pl))
            if phase == "bwd":
                smaller = min(pl)
        measured = max(peak.values())
        known = smaller >= min_bytes
        parallel = known and abs(measured - rules["sum"]) < abs(measured - rules["max"])
        row = {"groups": [g, h], "measured": measured, "max_rule": round(rules["max"]), "sum_rule": round(rules["sum"]),
               "parallel": parallel if known else None}
        # The reference module m0 (last in forward order) has no lowest-block term of its own: its traversal is
        # inside the fixed term. Beside a module of a parallel branch it is paid on top of that branch's, so
        # the probe lands above both rules by m0's own traversal (int8 GPT-NeoX: the saved MLP activation that
        # the int8 layer keeps in every block but the lowest). Then the pair is parallel, and that excess is m0's.
        excess = measured - rules["sum"]
        if m0_group in (g, h) and excess >= min_bytes and not known:
            row.update(parallel=True, reference_excess=round(excess))
            parallel = known = True
        report.append(row)
        if known and not parallel:
            parent[find(h)] = find(g)
    # a reference row tells about m0's group only: its partner is as undecided as before
    decided = {g for r in report if r["parallel"] is not None for g in r["groups"]
               if not r.get("reference_excess") or g == m0_group}
    nested = {g for r in report if r["parallel"] is False for g in r["groups"]}
    apart = {g: {x for r in report if r["parallel"] and g in r["groups"] for x in r["groups"] if x != g} for g in groups}
    for g in groups:
        if g not in decided:  # nothing was learnt about it (its term ~0): with the first, as one branch would have it
            parent[find(g)] = find(groups[0])
        elif g == m0_group and g not in nested and any(r.get("reference_excess") for r in report):
            # the reference group, known only to be parallel to some groups: with the first of the rest
            away = {find(x) for x in apart[g]}
            join = next((x for x in groups if x != g and x not in apart[g] and find(x) not in away), None)
            if join is not None:
                parent[find(g)] = find(join)
    roots = []
    for g in groups:
        if find(g) not in roots:
            roots.append(find(g))
    branch = {g: roots.index(find(g)) for g in groups}
    return tuple(dataclasses.replace(m, branch=branch[m.group]) for m in modules), report
