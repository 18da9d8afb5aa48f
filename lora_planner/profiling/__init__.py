"""Profiling (imports torch): traced or measured per-layer training memory."""
from .profiler import profile_conditions, profile_model

__all__ = ["profile_conditions", "profile_model"]
