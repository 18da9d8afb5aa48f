"""The depth-rank time model (DESIGN §7), one place for the planner and the executor's simulated round time.

A client's round = compute + transfer:
  compute  = tokens x (forward FLOPs of the whole model + backward FLOPs through the blocks from the
             lowest trained one to the output, and the head) / throughput; with gradient checkpointing,
             backward through every block plus one more forward of the blocks (their recompute)
  transfer = bytes down / bandwidth + bytes up / bandwidth
The straggler sets the round: round time = the largest client time.
"""
from __future__ import annotations

from collections.abc import Iterable

from .profile import ModelProfile


def block_params(profile: ModelProfile) -> int:
    return sum(m.in_features * m.out_features for m in profile.modules)


def backward_flops_per_token(profile: ModelProfile, depth: int) -> float:
    """Input gradients through the top ``depth`` blocks and the head (LoRA's own gradients are negligible).

    Under gradient checkpointing (``profile.checkpointed``) the input embeddings require grad, so the
    backward goes through every block whatever the depth, and each block's forward runs once more
    (recomputed): one extra forward of the blocks, charged here."""
    other = max(profile.param_count - profile.num_layers * block_params(profile), 0)
    if profile.checkpointed:
        return 2.0 * (profile.num_layers * block_params(profile) + other / 2) + 2.0 * profile.num_layers * block_params(profile)
    return 2.0 * (depth * block_params(profile) + other / 2)


def forward_flops_per_token(profile: ModelProfile) -> float:
    return 2.0 * profile.param_count


def depth_of(profile: ModelProfile, layers: Iterable[int]) -> int:
    """Blocks backward passes through: from the lowest trained block to the output."""
    layers = list(layers)
    return profile.num_layers - min(layers) if layers else 0


def client_seconds(profile: ModelProfile, depth: int, tokens: int, throughput_flops: float, bandwidth_bytes: float,
                   bytes_down: int, bytes_up: int) -> float:
    compute = tokens * (forward_flops_per_token(profile) + backward_flops_per_token(profile, depth)) / throughput_flops
    return compute + (bytes_down + bytes_up) / bandwidth_bytes
