"""Layer scores as [layers, modules] arrays, and the IG-Score algebra of DESIGN §5 (numpy only).

A score is stored in a profile as ``{"values": {module: [one float per layer]}, ...}`` (what
:func:`lora_planner.value.importance_matrix` reads). Every score is normalised to sum to 1 over
all (layer, module) entries, so scores from different sources can be mixed with β.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import LoraPlannerError


def normalise(mat) -> np.ndarray:
    """Non-negative, summing to 1 (uniform if everything is zero)."""
    mat = np.clip(np.asarray(mat, dtype=float), 0.0, None)
    total = mat.sum()
    return mat / total if total > 0 else np.full(mat.shape, 1.0 / mat.size)


def uniform(num_layers: int, num_modules: int) -> np.ndarray:
    """Every (layer, module) worth the same: plans then differ only by what memory allows."""
    return normalise(np.ones((num_layers, num_modules)))


def depth_prior(num_layers: int, num_modules: int) -> np.ndarray:
    """Linearly rising toward the output, (l + 1) / L: LEGEND's observation that top layers matter more."""
    return normalise(np.repeat(np.arange(1, num_layers + 1, dtype=float)[:, None], num_modules, axis=1))


def combine(local, global_, beta: float = 0.5) -> np.ndarray:
    """The IG-Score Γ = β · g_loc + (1 − β) · g_glob, both normalised first."""
    if not 0.0 <= beta <= 1.0:
        raise LoraPlannerError("beta", "between 0 and 1", beta, "E.g. 0.5 weighs local and global equally.")
    local, global_ = np.asarray(local, dtype=float), np.asarray(global_, dtype=float)
    if local.shape != global_.shape:
        raise LoraPlannerError("global score", f"the local score's shape {local.shape}", global_.shape, "Score the same layers and modules.")
    return normalise(beta * normalise(local) + (1.0 - beta) * normalise(global_))


def initial_global(locals_: Sequence) -> np.ndarray:
    """The global score before round 1: the mean of the clients' normalised local scores."""
    if not locals_:
        raise LoraPlannerError("local scores", "at least one client's", 0, "Compute local IG-Scores first.")
    return normalise(np.mean([normalise(s) for s in locals_], axis=0))


def global_update(norms, previous=None, decay: float = 0.5) -> np.ndarray:
    """g_glob after a round: an exponential moving average of the aggregated update's per-entry norm.

    ``norms`` is ‖ΔW‖_F of the aggregated update per (layer, module) (0 where nobody trained);
    ``previous`` the last global score (None in round 1); ``decay`` the weight of the past.
    Entries nobody trained this round keep their share of the past score.
    """
    if not 0.0 <= decay < 1.0:
        raise LoraPlannerError("decay", "in [0, 1)", decay, "E.g. 0.5.")
    new = normalise(norms)
    if previous is None:
        return new
    return normalise(decay * normalise(previous) + (1.0 - decay) * new)


def to_values(mat, modules: Sequence[str]) -> dict[str, list[float]]:
    """The profile's JSON form: {module: [score of layer 0, layer 1, ...]}."""
    mat = np.asarray(mat, dtype=float)
    return {m: [float(x) for x in mat[:, j]] for j, m in enumerate(modules)}


def from_values(values: Mapping[str, Sequence[float]], modules: Sequence[str]) -> np.ndarray:
    """The [layers, modules] array back from the profile's JSON form."""
    missing = [m for m in modules if m not in values]
    if missing:
        raise LoraPlannerError("importance", f"a score for every module ({', '.join(modules)})", ", ".join(missing),
                               "Recompute the importance with these target modules.")
    return np.array([[float(values[m][layer]) for m in modules] for layer in range(len(values[modules[0]]))])


def ranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's ρ needs)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation; NaN when either side is constant (e.g. the uniform score)."""
    ra, rb = ranks(np.ravel(a)), ranks(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
