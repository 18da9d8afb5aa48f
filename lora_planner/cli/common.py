"""Helpers shared by commands: profile selection, tables, progress bars."""
from __future__ import annotations

import argparse
import sys

from ..errors import LoraPlannerError
from ..profile import ModelProfile, load_profile, shipped_profile


def add_profile_args(p, required: bool = True, auto: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=False)
    g.add_argument("--profile", metavar="FILE", help="a profile JSON made by `lora-planner profile`")
    g.add_argument("--model", metavar="NAME", help="a shipped model profile, e.g. llama-2-7b (see `lora-planner profile --list`)")
    p.add_argument("--gradient-checkpointing", choices=("on", "off", "auto") if auto else ("on", "off"), default=None,
                   help="with --model: the shipped profile made with checkpointing on or off (default off)"
                        + ("; auto: per client, on where that fits more value" if auto else "")
                        + "; with --profile: checked against the profile's own condition")
    p.add_argument("--quantization", choices=("nf4", "int8", "none"), default=None,
                   help="with --model: the shipped profile of a bitsandbytes base (QLoRA: nf4; LLM.int8(): int8; default "
                        "none); with --profile: checked against the profile's own condition")


def quantization_arg(args) -> str | None:
    q = getattr(args, "quantization", None)
    return None if q in (None, "none") else q


def get_profile(args, gradient_checkpointing: bool | None = None) -> ModelProfile:
    """The profile of --profile FILE, or the shipped one of --model NAME under the lever flags (checked against
    a FILE's own conditions). ``gradient_checkpointing`` overrides the flag (``auto`` loads both sets)."""
    lever = getattr(args, "gradient_checkpointing", None)
    quant_flag = getattr(args, "quantization", None)
    if lever == "auto" and not args.model:
        raise LoraPlannerError("--gradient-checkpointing auto", "used with --model (it plans under both shipped profiles)",
                               "--profile", "Pass --model NAME, or on/off with --profile.")
    if args.profile:
        profile = load_profile(args.profile)
        if lever is not None and (lever == "on") != profile.checkpointed:
            raise LoraPlannerError("--gradient-checkpointing", f"the condition {args.profile} was profiled under "
                                   f"({'on' if profile.checkpointed else 'off'})", lever,
                                   "Drop the flag, or profile again with(out) `lora-planner profile --gradient-checkpointing`.")
        if quant_flag is not None and quantization_arg(args) != profile.quantization:
            raise LoraPlannerError("--quantization", f"the condition {args.profile} was profiled under "
                                   f"({profile.quantization or 'none'})", quant_flag,
                                   "Drop the flag, or profile again with `lora-planner profile --quantization ...`.")
        return profile
    if args.model:
        ckpt = (lever == "on") if gradient_checkpointing is None else gradient_checkpointing
        return shipped_profile(args.model, gradient_checkpointing=ckpt, quantization=quantization_arg(args))
    raise LoraPlannerError("--profile/--model", "given", "neither", "Pass --model llama-2-7b or --profile FILE.")


def positive_int(field: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(str(LoraPlannerError(field, "a positive whole number", text, f"E.g. {field} 1.")))
        return value
    return parse


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def progress_factory(disable: bool = False):
    """progress(label, total) -> tick(), drawing a tqdm bar on stderr."""
    def progress(label: str, total: int):
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm ships with the torch extra
            return lambda: None
        bar = tqdm(total=total, desc=label, file=sys.stderr, disable=disable or not sys.stderr.isatty(), leave=False)

        def tick():
            bar.update(1)
            if bar.n >= total:
                bar.close()
        return tick
    return progress
