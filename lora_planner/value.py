"""Layer value (DESIGN §5): importance per (layer, module) times a concave rank utility."""
from __future__ import annotations

import math

import numpy as np

from .importance.scores import from_values, normalise
from .profile import ModelProfile


def rank_utility(rank: int, r_max: int) -> float:
    """u(r) = log2(1 + r) / log2(1 + r_max): rank is worth something, but not linearly."""
    return math.log2(1 + rank) / math.log2(1 + r_max)


def importance_matrix(profile: ModelProfile, targets: tuple[str, ...]) -> np.ndarray:
    """(layers, targets) importance, summing to 1: the profile's stored score, else uniform.

    Uniform is the documented prior when nothing was measured: every (layer, module) is worth
    the same, so plans differ only by what memory allows (lower layers cost more to train).
    """
    mat = stored_importance(profile, targets)
    return normalise(np.ones((profile.num_layers, len(targets))) if mat is None else mat)


def stored_importance(profile: ModelProfile, targets: tuple[str, ...]) -> np.ndarray | None:
    """The profile's stored (layers, targets) score, or None if it has none covering these targets."""
    imp = profile.importance or {}
    values = imp.get("values") if isinstance(imp, dict) else None
    if not values or not all(t in values for t in targets):
        return None
    return from_values(values, targets)
