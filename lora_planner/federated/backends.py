"""Execution backends: where clients run. The round loop talks to a :class:`Backend` and never asks which.

``inprocess``: one process, one shared frozen base, clients one after another (deterministic for
a seed). A Flower backend registers here too (``lora_planner.flower``), with the same inputs and
outputs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..registry import Plugin, Registry


@dataclass(frozen=True)
class ScoreTask:
    """A client's local IG-Score on a sample of its own data (Fed-piLot)."""

    client_id: str
    indices: tuple[int, ...]
    targets: tuple[str, ...]
    probe_rank: int
    batch_size: int
    seq_len: int


class Backend(Protocol):
    def score(self, tasks: Sequence[ScoreTask]) -> list[Any]:
        """Each client's local score, a [layers, targets] array."""

    def train(self, tasks: Sequence[Any], tick: Callable[[], None] | None = None) -> list[Any]:
        """Run the round's ClientTasks; one ClientResult each (failures as results, never exceptions)."""

    def evaluate(self, adapter_config: dict, payload: Any) -> dict:
        """Loss (and accuracy) of the global adapter on the evaluation data."""

    def save_adapter(self, adapter_config: dict, payload: Any, folder) -> None:
        """The global adapter as a PEFT folder."""

    def state(self) -> dict:
        """What the server checkpoint records about the backend (JSON), e.g. Flower's node -> client map."""

    def close(self) -> None: ...


class InProcessBackend:
    """Every client in this process, sequentially, on one shared base (loaded once)."""

    def __init__(self, settings, data, eval_data, eval_indices: Sequence[int] | None = None, faults: dict | None = None,
                 fleet_ids: Sequence[str] = ()) -> None:
        from ..training.client import SharedBase

        self.settings, self.data, self.eval_data = settings, data, eval_data
        self.eval_indices = eval_indices
        self.faults = dict(faults or {})  # (client id, round) -> fault kind, for drills and tests
        self.base = SharedBase(settings.model, settings.task, settings.num_labels, settings.dtype, settings.seed, settings.device,
                               quantization=settings.quantization)

    def score(self, tasks: Sequence[ScoreTask]) -> list[Any]:
        from ..importance.measure import local_ig

        out = []
        for t in tasks:
            batches = [self.base.batch(self.data, t.indices[i:i + t.batch_size], t.seq_len)
                       for i in range(0, len(t.indices), t.batch_size)]
            mat, _ = local_ig(self.base.model, batches, t.targets, self.settings.task, probe_rank=t.probe_rank)
            out.append(mat)
        return out

    def train(self, tasks, tick=None):
        from dataclasses import replace

        from ..training.client import run_client

        results = []
        for t in tasks:
            fault = self.faults.get((t.client_id, t.round))
            results.append(run_client(self.base, self.data, replace(t, fault=fault) if fault else t))
            if tick:
                tick()
        return results

    def evaluate(self, adapter_config, payload):
        from ..training.client import evaluate

        s = self.settings
        return evaluate(self.base, self.eval_data, adapter_config, payload, s.eval_batch_size, s.seq_len, self.eval_indices)

    def save_adapter(self, adapter_config, payload, folder):
        from ..training.client import save_adapter

        save_adapter(self.base, adapter_config, payload, folder)

    def state(self) -> dict:
        return {"backend": "inprocess"}

    def close(self) -> None:
        pass


def _flower(*args, **kwargs) -> Backend:
    from ..flower.backend import FlowerBackend

    return FlowerBackend(*args, **kwargs)


def _flower_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("flwr") is not None


# A factory: (settings, data, eval_data, eval_indices, *, faults=None, fleet_ids=(), **backend options) -> Backend
BACKENDS: Registry[Callable[..., Backend]] = Registry("backend", "backend", [
    Plugin("inprocess", "one process, one shared base, clients in turn (deterministic for a seed)", InProcessBackend),
    Plugin("flower", "Flower nodes (Simulation Engine on Ray, or a Deployment Engine): one message per node", _flower,
           available=_flower_available, install="pip install -c constraints.txt 'flwr[simulation]==1.41.0'."),
])
