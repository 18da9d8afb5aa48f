"""A federated client on a shared frozen base: build its PEFT model from its LoraConfig, load its
payload, run local steps with THE training step, measure its peak on a steady-state step, and
hand back its update. The base is loaded once per process; adapters are added and removed.
"""
from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..aggregation.rules import ClientPayload
from ..aggregation.updates import ClientUpdate
from ..data.load import Instructions, Records
from ..errors import LoraPlannerError
from .levers import apply_levers
from .step import train_step


@dataclass(frozen=True)
class ClientTask:
    """One client's work in one round (plain data: a backend may send it to another process).

    ``seed`` fixes the fresh LoRA's initialisation, dropout and the order of the client's examples.
    ``measure_step``: index of the local step measured with the live-bytes tracker (1 = the second,
    the first with optimiser state: steady state), or -1 for none.
    """

    client_id: str
    round: int
    seed: int
    adapter_config: dict
    payload: ClientPayload
    indices: tuple[int, ...]
    local_steps: int
    batch_size: int
    seq_len: int
    lr: float
    budget_bytes: int
    predicted_bytes: int
    max_grad_norm: float | None = None
    measure_step: int = 1
    fault: str | None = None  # fault injection for tests and drills: "raise", "nan", "extra-key"
    gradient_checkpointing: bool = False  # the plan's lever (training.levers), as its profile was traced


@dataclass
class ClientResult:
    client_id: str
    update: ClientUpdate | None
    train_loss: float | None = None
    measured_peak_bytes: int | None = None
    error: str | None = None
    seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    extras: dict = field(default_factory=dict)


def tensor_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:300]


class SharedBase:
    """The frozen base model and tokenizer, loaded once per process from a local folder."""

    def __init__(self, model: str, task: str, num_labels: int, dtype: str = "fp32", seed: int = 0, device: str = "cpu",
                 quantization: str | None = None):
        import torch

        from ..importance.measure import load_model

        self.task, self.num_labels, self.dtype, self.quantization = task, num_labels, dtype, quantization
        if not (device == "cpu" or device.startswith("cuda")):
            raise LoraPlannerError("device", "cpu, cuda or cuda:N", device, "E.g. --device cuda.")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LoraPlannerError("device", "a device this machine has", device, "No CUDA GPU is visible: use --device cpu.")
        if quantization is not None:
            from .levers import require_bitsandbytes

            require_bitsandbytes()
        self.model, self.tokenizer, self.folder = load_model(model, task, num_labels, seed, dtype, quantization=quantization,
                                                             device_map=device)
        self.device = torch.device(device)
        if quantization is None:
            self.model.to(self.device)
        apply_levers(self.model, False, quantization)  # a quantised base: frozen, non-4-bit weights in fp32 (QLoRA)
        for p in self.model.parameters():
            p.requires_grad_(False)
        if getattr(self.model.config, "pad_token_id", None) is None and self.tokenizer.pad_token_id is not None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.pristine: dict[str, Any] = {}
        self.saved_modules: dict[str, dict] = {}  # PEFT's modules_to_save (the head): their weights before any client

    def set_base_delta(self, delta: dict[str, Any]) -> None:
        """Every module's base weight = its pristine value + ``delta[module]`` (ΔW is out x in; GPT-2's
        Conv1D stores in x out). Absolute, so the same payload applied twice changes nothing."""
        import torch

        if delta and self.quantization is not None:
            raise LoraPlannerError("aggregation", "one that keeps a quantised base frozen", "a base update (FLoRA)",
                                   "Use hetlora, stagg, flexlora or fedit with --quantization.")

        from transformers.pytorch_utils import Conv1D

        with torch.no_grad():
            for name in sorted(set(self.pristine) | set(delta)):
                layer = self.model.get_submodule(name)
                w = layer.weight
                if name not in self.pristine:
                    self.pristine[name] = w.detach().clone()
                value = self.pristine[name]
                if name in delta:
                    d = delta[name].to(device=w.device, dtype=torch.float32)
                    value = (self.pristine[name].float() + (d.T if isinstance(layer, Conv1D) else d)).to(w.dtype)
                w.copy_(value)

    def batch(self, data: Records | Instructions, idx: Sequence[int], seq_len: int) -> dict:
        from ..data.tokenize import fixed_batch

        return {k: v.to(self.device) for k, v in fixed_batch(self.tokenizer, data, idx, seq_len).items()}

    def attach(self, adapter_config: dict, payload: ClientPayload):
        """The PEFT model of this config on the shared base, with the payload loaded (call ``detach`` after)."""
        from peft import get_peft_model, set_peft_model_state_dict

        from ..adapter_config import to_lora_config

        self.set_base_delta(payload.base_delta)
        model = get_peft_model(self.model, to_lora_config(adapter_config))
        for name, module in self._wrapped(model):
            self.saved_modules.setdefault(name, {k: v.detach().clone() for k, v in module.original_module.state_dict().items()})
        if payload.adapter:
            out = set_peft_model_state_dict(model, {k: v.to(self.device) for k, v in payload.adapter.items()})
            if out.unexpected_keys:
                model.unload()
                raise LoraPlannerError("payload", "keys of the client's planned adapter", out.unexpected_keys[0],
                                       "The plan and the global adapter disagree.")
        return model

    @staticmethod
    def _wrapped(model):
        """(name in the base model, wrapper) of every module PEFT trains a copy of (modules_to_save)."""
        from peft.utils import ModulesToSaveWrapper

        base = model.get_base_model()
        return [(n, m) for n, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    def detach(self, model) -> None:
        """Remove the adapter and PEFT's head copy: the base is as before ``attach``. (``unload()`` leaves the
        *trained* copy of a modules_to_save module in the base; its saved weights are put back.)"""
        import torch

        names = [n for n, _ in self._wrapped(model)]
        model.unload()
        with torch.no_grad():
            for name in names:
                self.model.get_submodule(name).load_state_dict(self.saved_modules[name])


def example_order(indices: Sequence[int], steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """``steps`` mini-batches drawn from the shard without replacement, reshuffled each pass."""
    rng = random.Random(seed)
    pool: list[int] = []
    out = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not pool:
                pool = list(indices)
                rng.shuffle(pool)
            batch.append(pool.pop())
        out.append(batch)
    return out


def measured_train_step(model, batch: dict, opt, max_grad_norm: float | None):
    """THE training step with its peak measured: live-bytes tracker on CPU, the allocator's peak on CUDA."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loss = train_step(model, batch, opt, max_grad_norm=max_grad_norm)
        torch.cuda.synchronize()
        return loss, int(torch.cuda.max_memory_allocated())
    import gc

    from ..profiling.tracker import LiveBytes
    from ..profiling.trace import tracked_step

    gc.collect()  # tensors held by reference cycles would shift the peak (ENVIRONMENT.md)
    loss, peaks = tracked_step(model, batch, opt, LiveBytes(), max_grad_norm=max_grad_norm)
    return loss, max(peaks.values())


def run_client(base: SharedBase, data: Records | Instructions, task: ClientTask) -> ClientResult:
    """Train one client; a client that fails is a result with ``error`` set, never an exception."""
    import torch
    from peft import get_peft_model_state_dict

    t0 = time.perf_counter()
    result = ClientResult(task.client_id, None, bytes_down=task.payload.wire_bytes)
    model = None
    try:
        torch.manual_seed(task.seed)
        apply_levers(base.model, task.gradient_checkpointing, base.quantization)  # as the profiler does: before PEFT wraps
        model = base.attach(task.adapter_config, task.payload)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=task.lr)
        losses = []
        for i, idx in enumerate(example_order(task.indices, task.local_steps, task.batch_size, task.seed)):
            batch = base.batch(data, idx, task.seq_len)
            if i == min(task.measure_step, task.local_steps - 1) and task.measure_step >= 0:
                loss, result.measured_peak_bytes = measured_train_step(model, batch, opt, task.max_grad_norm)
            else:
                loss = train_step(model, batch, opt, max_grad_norm=task.max_grad_norm)
            losses.append(float(loss))
            if task.fault == "raise" and i == 0:
                raise RuntimeError("injected fault: the client raised")
        state = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        if task.fault == "nan":
            key = next(k for k in state if k.endswith("lora_B.weight"))
            state[key][0, 0] = float("nan")
        elif task.fault == "extra-key":
            key = next(k for k in state if k.endswith("lora_A.weight"))
            state[key.replace(".lora_A.", ".lora_X.")] = state[key].clone()
            state["base_model.model.unplanned.lora_A.weight"] = state[key].clone()
            state["base_model.model.unplanned.lora_B.weight"] = torch.zeros(4, state[key].shape[0])
        result.update = ClientUpdate(state, task.adapter_config, len(task.indices), {"train_loss": sum(losses) / len(losses)},
                                     task.client_id)
        result.train_loss = sum(losses) / len(losses)
        result.bytes_up = tensor_bytes(state)
    except Exception as exc:  # noqa: BLE001 - a failing client is dropped with its reason, the round goes on
        result.error = one_line(exc)
        result.extras["traceback"] = traceback.format_exc(limit=3)
    finally:
        if model is not None:
            base.detach(model)
        if task.gradient_checkpointing:
            apply_levers(base.model, False, base.quantization)
        result.seconds = time.perf_counter() - t0
    return result


def evaluate(base: SharedBase, data: Records | Instructions, adapter_config: dict, payload: ClientPayload, batch_size: int,
             seq_len: int, indices: Sequence[int] | None = None) -> dict:
    """Loss (and accuracy for seq-cls) of the global adapter on ``data`` (eval mode, no gradients)."""
    import torch

    idx = list(range(len(data))) if indices is None else list(indices)
    model = base.attach(adapter_config, payload)
    try:
        model.eval()
        total, correct, loss_sum, tokens = 0, 0, 0.0, 0
        with torch.no_grad():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                batch = base.batch(data, chunk, seq_len)
                out = model(**batch)
                if isinstance(data, Records):
                    loss_sum += float(out.loss) * len(chunk)
                    correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
                    total += len(chunk)
                else:
                    n = int((batch["labels"][:, 1:] != -100).sum())
                    loss_sum += float(out.loss) * n
                    tokens += n
        if isinstance(data, Records):
            return {"loss": loss_sum / total, "accuracy": correct / total, "examples": total}
        return {"loss": loss_sum / max(tokens, 1), "examples": len(idx), "tokens": tokens}
    finally:
        base.detach(model)


def save_adapter(base: SharedBase, adapter_config: dict, payload: ClientPayload, folder) -> None:
    """The global adapter as a PEFT folder (``PeftModel.from_pretrained(base, folder)`` loads it)."""
    import json
    from pathlib import Path

    model = base.attach(adapter_config, payload)
    try:
        model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        base.detach(model)
    path = Path(folder) / "adapter_config.json"  # PEFT writes target_modules from a set: order varies by process
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
