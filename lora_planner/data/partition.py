"""Federated partitions of a labelled data set: iid, dirichlet(alpha), by-column, size skew.

A partition is indices per client, saved as JSON so that runs are reproducible.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import LoraPlannerError
from ..atomic import write_json_atomic

SCHEMA_VERSION = 1
METHODS = ("iid", "dirichlet", "by-column", "size-skew")


@dataclass(frozen=True)
class Partition:
    method: str
    params: dict
    seed: int
    source: str
    clients: dict[str, list[int]]

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, {"schema_version": SCHEMA_VERSION, **asdict(self)})

    def label_counts(self, labels, num_labels: int) -> np.ndarray:
        """(clients, labels) counts."""
        lab = np.asarray(labels)
        return np.stack([np.bincount(lab[idx], minlength=num_labels) for idx in self.clients.values()])


def partition(labels, clients: int, method: str = "dirichlet", alpha: float = 0.5, per_client: int = 2,
              skew: float = 1.0, seed: int = 0, source: str = "") -> Partition:
    """Split record indices among ``clients``.

    Args:
        labels: label (or category) index per record.
        method: "iid"; "dirichlet" (per label, client shares ~ Dir(alpha)); "by-column" (each
            client holds ``per_client`` of the categories, records of a category split among its
            holders); "size-skew" (iid labels, client sizes ∝ lognormal(0, skew)).

    Raises:
        LoraPlannerError: bad parameters, or a client left with no record.
    """
    lab = np.asarray(labels)
    n = len(lab)
    if method not in METHODS:
        raise LoraPlannerError("partition method", f"one of {', '.join(METHODS)}", method, "")
    if not isinstance(clients, int) or clients < 1:
        raise LoraPlannerError("--clients", "a positive whole number", clients, "E.g. --clients 10.")
    if clients > n:
        raise LoraPlannerError("--clients", f"at most the {n} records", clients, "Use fewer clients or more data.")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(clients)]
    if method == "iid":
        for c, chunk in enumerate(np.array_split(rng.permutation(n), clients)):
            parts[c] = chunk.tolist()
        params = {}
    elif method == "dirichlet":
        if not alpha > 0:
            raise LoraPlannerError("--dirichlet", "a positive concentration", alpha, "E.g. --dirichlet 0.5.")
        for y in np.unique(lab):
            idx = rng.permutation(np.flatnonzero(lab == y))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c] += chunk.tolist()
        params = {"alpha": alpha}
    elif method == "by-column":
        cats = np.unique(lab)
        if not 1 <= per_client <= len(cats):
            raise LoraPlannerError("--per-client", f"between 1 and the {len(cats)} categories", per_client, "")
        order = rng.permutation(cats)
        holders: dict[int, list[int]] = {int(c): [] for c in cats}
        for c in range(clients):
            for j in range(per_client):
                holders[int(order[(c * per_client + j) % len(cats)])].append(c)
        for cat, who in holders.items():
            if who:
                idx = rng.permutation(np.flatnonzero(lab == cat))
                for c, chunk in zip(who, np.array_split(idx, len(who))):
                    parts[c] += chunk.tolist()
        params = {"per_client": per_client}
    else:
        if not skew >= 0:
            raise LoraPlannerError("--size-skew", "a non-negative sigma", skew, "E.g. --size-skew 1.0.")
        sizes = rng.lognormal(0.0, skew, clients)
        cuts = (np.cumsum(sizes / sizes.sum())[:-1] * n).astype(int)
        for c, chunk in enumerate(np.split(rng.permutation(n), cuts)):
            parts[c] = chunk.tolist()
        params = {"skew": skew}
    empty = [c for c, p in enumerate(parts) if not p]
    if empty:
        raise LoraPlannerError("partition", "one with no empty client", f"client-{empty[0]} empty ({len(empty)} in all)",
                               "Use fewer clients, a larger --dirichlet alpha or a smaller --size-skew, or another --seed.")
    return Partition(method, params, seed, source, {f"client-{c}": sorted(p) for c, p in enumerate(parts)})


def load_partition(path: str | Path) -> Partition:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LoraPlannerError("partition file", "a readable partition JSON", str(path), f"({exc})") from None
    if not isinstance(body, dict) or body.get("schema_version") != SCHEMA_VERSION:
        raise LoraPlannerError("partition file: schema_version", str(SCHEMA_VERSION), str(path), "Regenerate it with `lora-planner partition`.")
    body.pop("schema_version")
    return Partition(**body)
