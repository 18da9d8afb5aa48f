"""The federated executor: rounds of (select → send → local train → screen → aggregate → evaluate → checkpoint).

    from lora_planner.federated import RunSettings, start, resume
    start(RunSettings(model="all-minilm-l6-v2", task="seq-cls", num_labels=77, data="train.csv", eval_data="test.csv",
                      label_column="category", budgets=("100MiB", "120MiB"), method="fed-pilot", rounds=5), "runs/b77")

Backends (``BACKENDS``) run the clients; the loop (``loop.federated_rounds``) never asks which.
Torch, transformers and peft load when a backend starts, not at import.
"""
from .backends import BACKENDS, Backend, InProcessBackend, ScoreTask
from .loop import federated_rounds, resume, start
from .settings import METHODS, Preset, RunSettings

__all__ = ["BACKENDS", "Backend", "InProcessBackend", "METHODS", "Preset", "RunSettings", "ScoreTask", "federated_rounds",
           "resume", "start"]
