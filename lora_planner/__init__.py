"""lora-planner: which layers get LoRA, at which rank, for every client of a federation.

The planning path (this module, profiles, the memory model, solvers, plans) imports no torch.
"""
__version__ = "0.1.0"

from .errors import LoraPlannerError
from .memory import predict_phases, predict_tensor_bytes
from .profile import ModelProfile, load_profile, shipped_models, shipped_profile
from .units import format_size, parse_size

__all__ = [
    "LoraPlannerError", "ModelProfile", "format_size", "load_profile", "parse_size", "predict_phases",
    "predict_tensor_bytes", "shipped_models", "shipped_profile", "__version__",
]
