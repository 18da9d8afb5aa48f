"""profile_model: config in, validated ModelProfile out."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import sys
import time
from typing import Callable, Sequence

from .. import __version__
from ..errors import LoraPlannerError
from ..memory import check_shape
from ..profile import ModelProfile
from ..training.step import STEP_DESCRIPTION
from . import fit
from .config import DTYPE_NAMES, TASKS, config_path, default_task, load_config, modeling_module, num_layers, truncated

METHODS = ("traced", "measured", "cuda")
FIT_LAYERS = 3


@functools.lru_cache(maxsize=8)
def _config(model: str, task: str | None, num_labels: int, layers: int | None = None):
    """The model's config as a trace job needs it (read once per worker): the task's labels set,
    cut to ``layers`` blocks."""
    config = load_config(model)
    if (task or default_task(config)) == "seq-cls":
        config.num_labels = num_labels
    return truncated(config, layers) if layers else config


def _structure(model: str, task: str | None, num_labels: int, dtype: str, gradient_checkpointing: bool = False,
               quantization: str | None = None):
    """The config's facts, discovery, one block's frozen bytes and PEFT's default target names:
    run in a trace worker, so the calling process imports none of transformers, peft or torch."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP

    from .build import discover

    config = copy.deepcopy(_config(model, task, num_labels))
    task = task or default_task(config)
    if task == "seq-cls" and num_labels < 1:
        raise LoraPlannerError("num_labels", "a positive whole number", num_labels, "E.g. --num-labels 77.")
    n_layers = num_layers(config)
    if n_layers < FIT_LAYERS:
        raise LoraPlannerError("MODEL", f"a model with at least {FIT_LAYERS} blocks", n_layers, "")
    facts = {"task": task, "num_layers": n_layers, "architecture": (config.architectures or [type(config).__name__])[0]}
    try:
        disc = discover(config, task, dtype)
        frozen = _block_frozen_bytes(config, task, dtype, disc.prefix, quantization)
        if gradient_checkpointing:
            _check_checkpointing(config, task, dtype)
        if quantization is not None:  # one short step on a 1-block twin: what bitsandbytes + PEFT cannot train fails here
            from .trace import trace_assignment

            trace_assignment(truncated(config, 1), task, dtype, disc.prefix, {(0, disc.modules[0].name): 1}, 1, 8,
                             gradient_checkpointing=gradient_checkpointing, quantization=quantization)
    except LoraPlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a model we cannot build raises, the user gets one line
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        if quantization is not None:
            raise LoraPlannerError("--quantization", f"a lever bitsandbytes {_version('bitsandbytes')} and peft can train on "
                                   f"model_type '{config.model_type}'", f"{quantization} ({detail})",
                                   "Profile it without --quantization (tested on: Llama, Mistral, Qwen2, GPT-2, GPT-NeoX).") from None
        raise LoraPlannerError("MODEL", "an architecture lora-planner can trace (decoder-only causal LMs, encoder "
                               "classifiers)", f"model_type '{config.model_type}' ({detail})",
                               "See `lora-planner profile --list` for tested ones.") from None
    return facts, disc, frozen, list(MAP.get(config.model_type) or [])


def _block_frozen_bytes(config, task: str, dtype: str, prefix: str, quantization: str | None = None) -> int:
    """Bytes one more block adds between steps: its parameters and buffers, and on a quantised base its
    quant state too, after the lever's preparation (norms in fp32). Storages every block shares (bitsandbytes'
    one nested-quantisation code map) are not the block's."""
    from ..training.levers import apply_levers, quant_state_tensors
    from .build import build_base, build_quantized

    if quantization is None:
        one = build_base(truncated(config, 1), task, dtype, meta=True)
        block = one.get_submodule(prefix)[0]
        return sum(t.numel() * t.element_size() for t in list(block.parameters()) + list(block.buffers()))
    two = apply_levers(build_quantized(truncated(config, 2), task, dtype, quantization, meta=True), quantization=quantization)
    blocks = two.get_submodule(prefix)

    def storages(block) -> dict[int, int]:
        tensors = list(block.parameters()) + list(block.buffers()) + quant_state_tensors(block)
        return {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}
    first, second = storages(blocks[0]), storages(blocks[1])
    return sum(n for k, n in second.items() if k not in first)


def _check_checkpointing(config, task: str, dtype: str) -> None:
    from ..training.levers import apply_levers
    from .build import build_base

    # one line if unsupported (the check needs no quantised weights: it asks the model class)
    apply_levers(build_base(truncated(config, 1), task, dtype, meta=True), gradient_checkpointing=True)


def require_torch_extra() -> None:
    """Profiling runs the model: torch, transformers and peft must be importable (checked here, in the parent,
    so a missing one is one line and not a traceback from a worker process)."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise LoraPlannerError("profile", "run where torch, transformers and peft are installed", f"no {', '.join(missing)}",
                               "Install the torch extra: pip install -c constraints.txt -e '.[torch]'.")


def profile_model(model: str, batch_size: int = 1, seq_len: int = 512, dtype: str = "bf16", task: str | None = None,
                  num_labels: int = 2, target_modules: Sequence[str] | None = None, method: str = "traced",
                  validate: int = 10, seed: int = 0, name: str | None = None, workers: int | None = None,
                  progress: Callable[[str, int], Callable[[], None]] | None = None,
                  gradient_checkpointing: bool = False, quantization: str | None = None) -> ModelProfile:
    """Profile one model's training memory (DESIGN §4) and validate the separable model.

    Args:
        model: a shipped model name, a local Hugging Face folder, or a config.json path.
        batch_size, seq_len: the micro-batch shape the profile states (others are predicted).
        dtype: frozen-weight dtype ("bf16", "fp16", "fp32"); adapters use PEFT's default dtype.
        task: "causal-lm" or "seq-cls" (default from the config's architecture).
        target_modules: default LoRA targets recorded in the profile (PEFT's defaults if None).
        method: "traced" (meta tensors), "measured" (real CPU tensors) or "cuda".
        validate: number of full-depth assignments to validate on (at least 10 recommended).
        workers: trace processes (default: one per CPU core, at most 2 on CPU tracing).
        progress: ``progress(label, total)`` returns a callable ticked once per trace.
        gradient_checkpointing: profile the step with checkpointing on (``training.levers``, as the
            executor turns it on); the terms are then per block phase (``ckpt_fit``).
        quantization: "nf4" or "int8": a bitsandbytes base prepared the QLoRA way (``training.levers``);
            ``dtype`` is then the 4-bit compute dtype and the load dtype of what stays unquantised.

    Raises:
        LoraPlannerError: on any bad argument (one line each).
    """
    from ..training.levers import check_quantization

    quantization = check_quantization(quantization)
    sets = [(bool(gradient_checkpointing), quantization)]
    return _profile_sets(model, sets, batch_size, seq_len, dtype, task, num_labels, target_modules, method, validate,
                         seed, name, workers, progress)[0]


def profile_conditions(model: str, conditions: str | Sequence[str] = "all", batch_size: int = 1, seq_len: int = 512,
                       dtype: str = "bf16", task: str | None = None, num_labels: int = 2,
                       target_modules: Sequence[str] | None = None, method: str = "traced", validate: int = 10,
                       seed: int = 0, name: str | None = None, workers: int | None = None,
                       progress: Callable[[str, int], Callable[[], None]] | None = None) -> dict[str, ModelProfile]:
    """Several condition sets of one model in one run (``profile --conditions``): one pool of trace workers
    for all of them, so torch, transformers and peft are imported once. Each profile is what
    ``profile_model`` makes for its set, validated on its own traces.

    Args:
        conditions: "all" (the six sets: plain, gradient-checkpointing, nf4, nf4 + it, int8, int8 + it) or
            names such as ``["plain", "gc", "nf4+gc"]`` (``profile.parse_conditions``).
        The others: as ``profile_model``.

    Returns:
        condition name (``profile.condition_name``: "plain", "nf4+gradient-checkpointing", ...) -> profile.
    """
    from ..profile import condition_name, parse_conditions

    sets = parse_conditions(conditions, field="conditions")
    profiles = _profile_sets(model, sets, batch_size, seq_len, dtype, task, num_labels, target_modules, method, validate,
                             seed, name, workers, progress)
    return {condition_name(gc, q): p for (gc, q), p in zip(sets, profiles)}


def _profile_sets(model, sets, batch_size, seq_len, dtype, task, num_labels, target_modules, method, validate, seed,
                  name, workers, progress) -> list[ModelProfile]:
    from ..profile import condition_name

    if dtype not in DTYPE_NAMES:
        raise LoraPlannerError("dtype", f"one of {', '.join(DTYPE_NAMES)}", dtype, "E.g. --dtype bf16.")
    if method not in METHODS:
        raise LoraPlannerError("method", f"one of {', '.join(METHODS)}", method, "E.g. --method traced.")
    if task is not None and task not in TASKS:
        raise LoraPlannerError("task", f"one of {', '.join(TASKS)}", task, "E.g. --task causal-lm.")
    if task == "seq-cls" and num_labels < 1:
        raise LoraPlannerError("num_labels", "a positive whole number", num_labels, "E.g. --num-labels 77.")
    path = config_path(model)
    if path is None or not path.is_file():
        load_config(model)  # not a model we can read: its one-line error, before any worker starts
    require_torch_extra()
    if any(q is not None for _, q in sets):
        from ..training.levers import require_bitsandbytes

        require_bitsandbytes()
    # Workers start importing torch, transformers, peft and the modeling code at once, and read the
    # config themselves: this process imports none of them.
    # The sets run as a pipeline: each set's profiling is a generator of requests (its structure call, then its
    # traces, then pair traces if it needs them); every set's next request is queued before any set waits for a
    # result, so the workers never idle between sets (no serial structure call, no pool tail per set).
    gens = []
    for ckpt, quant in sets:
        tagged = progress
        if progress and len(sets) > 1:
            tag = condition_name(ckpt, quant)
            tagged = lambda label, total, tag=tag: progress(f"{tag}: {label}", total)  # noqa: E731
        gens.append(_profile(task, num_labels, dtype, batch_size, seq_len, target_modules, method, validate, seed, name,
                             model, tagged, ckpt, quant))
    out: list[ModelProfile | None] = [None] * len(gens)
    last = time.perf_counter()  # the first set's seconds include starting the workers
    with _TracePool(workers, method, modeling_module(model)) as pool:
        handles = [pool.submit(next(g)) for g in gens]
        while any(p is None for p in out):
            for i, g in enumerate(gens):
                if out[i] is not None:
                    continue
                try:
                    handles[i] = pool.submit(g.send(handles[i].result()))
                except StopIteration as done:
                    # a set's seconds: from the previous set's end to its own (sets overlap in the workers)
                    now = time.perf_counter()
                    out[i] = dataclasses.replace(done.value, validation={**done.value.validation,
                                                                         "seconds": round(now - last, 2)})
                    last = now
    return out


def _profile(task, num_labels, dtype, batch_size, seq_len, target_modules, method, validate, seed, name, model, progress,
             ckpt: bool = False, quant: str | None = None):
    """One condition set's profile, as a generator: it yields what it needs the workers for (a ``_Call`` or
    ``_Traces``), is sent the answer, and returns the profile (``_profile_sets`` drives it)."""
    facts, disc, block_bytes, peft_wanted = yield _Call(_structure, (model, task, num_labels, dtype, ckpt, quant))
    task, n_layers = facts["task"], facts["num_layers"]
    draft = ModelProfile(name=name or model, architecture=facts["architecture"], task=task,
                         num_layers=n_layers, layer_prefix=disc.prefix, modules=disc.modules, default_targets=(),
                         max_positions=disc.max_positions, param_count=disc.param_count, conditions={}, phases={})
    check_shape(draft, batch_size, seq_len)
    if target_modules:
        targets = draft.resolve_targets(list(target_modules))
    else:  # PEFT's defaults for the architecture
        targets = tuple(n for n in draft.module_names if n.split(".")[-1] in peft_wanted) or tuple(draft.module_names[:1])

    shapes = fit.fit_shapes(batch_size, seq_len)
    if ckpt:
        return (yield from _profile_checkpointed(draft, facts, disc, targets, shapes, model, task, num_labels, dtype,
                                                 batch_size, seq_len, method, validate, seed, progress, quant))
    # The full design at the first two shapes; at the other two only what the attention-dependent
    # terms need (the token-scaled ones are on a line in T through the first two: fit.TOKEN_KINDS).
    designs = [fit.design(disc.modules, FIT_LAYERS - 1, full=i < 2) for i in range(len(shapes))]
    small, full = (model, task, num_labels, FIT_LAYERS), (model, task, num_labels, None)  # configs, read by workers
    job = lambda cfg, a, b, s: (cfg, task, dtype, disc.prefix, a, b, s, method, seed, False, quant)  # noqa: E731
    fit_jobs = [job(small, a, b, s) for (b, s), d in zip(shapes, designs) for a in d]
    probes = fit.branch_probes(disc.modules, FIT_LAYERS - 1)  # parallel branches? (GPT-NeoX)
    fit_jobs += [job(small, a, batch_size, seq_len) for _, _, a in probes]
    checks, holdout, (hb, hs) = _validation_assignments(draft, targets, n_layers, validate, seed, batch_size, seq_len)
    check_jobs = [job(full, a, batch_size, seq_len) for a in checks] + [job(full, a, hb, hs) for a in holdout]
    # The long full-depth traces go first, one job at a time, so that the short fit traces fill the
    # gaps and no worker is left with a run of long ones at the end.
    ticks = _two_bars(progress, ("validation traces", len(check_jobs)), ("fit traces", len(fit_jobs)))
    results = yield _Traces(check_jobs + fit_jobs, ticks, long=len(check_jobs))
    measured, peaks = results[:len(check_jobs)], results[len(check_jobs):]
    per_shape, residual, start = {}, 0.0, 0
    for i, (shape, d) in enumerate(zip(shapes, designs)):
        traces = list(zip(d, peaks[start:start + len(d)]))
        start += len(d)
        known = fit.token_terms_at(per_shape, shape) if i >= 2 else None
        per_shape[shape], worst = fit.solve_terms(traces, disc.modules, FIT_LAYERS, known=known)
        residual = max(residual, worst)
    modules, branch_report = fit.assign_branches(disc.modules, probes, peaks[start:], per_shape[shapes[0]])
    disc = dataclasses.replace(disc, modules=modules)
    gap = (n_layers - FIT_LAYERS) * block_bytes
    phases = fit.shift_reference(fit.assemble(per_shape, disc.modules, gap), fit.reference_excess(branch_report),
                                 batch_size * seq_len)
    conditions = _conditions(batch_size, seq_len, dtype, disc, method, residual, quantization=quant, branches=branch_report)
    profile = ModelProfile(name=draft.name, architecture=draft.architecture, task=task, num_layers=n_layers,
                           layer_prefix=disc.prefix, modules=disc.modules, default_targets=targets,
                           max_positions=disc.max_positions, param_count=disc.param_count, conditions=conditions,
                           phases=phases)
    return _validated(profile, measured, checks, holdout, (hb, hs))


def _profile_checkpointed(draft, facts, disc, targets, shapes, model, task, num_labels, dtype, batch_size, seq_len, method,
                          validate, seed, progress, quant=None):
    """The profile of a step with gradient checkpointing on: designed traces on a 3-block slice at four
    shapes, one 3- vs 4-block pair per shape for the blocks cut away, validated on full-depth traces."""
    from . import ckpt_fit

    n_layers = facts["num_layers"]
    design = ckpt_fit.design(disc.modules) + [ckpt_fit.all_at_top(disc.modules)]  # the last: first a check
    small, four, full = ((model, task, num_labels, k) for k in (ckpt_fit.BLOCK_LAYERS, ckpt_fit.BLOCK_LAYERS + 1, None))
    gap_a = ckpt_fit.gap_assignment(disc.modules)
    job = lambda cfg, a, b, s: (cfg, task, dtype, disc.prefix, a, b, s, method, seed, True, quant)  # noqa: E731
    fit_jobs = [job(small, a, b, s) for b, s in shapes for a in design]
    fit_jobs += [job(cfg, gap_a, b, s) for b, s in shapes for cfg in (small, four)]
    checks, holdout, (hb, hs) = _validation_assignments(draft, targets, n_layers, validate, seed, batch_size, seq_len)
    check_jobs = [job(full, a, batch_size, seq_len) for a in checks] + [job(full, a, hb, hs) for a in holdout]
    ticks = _two_bars(progress, ("validation traces", len(check_jobs)), ("fit traces", len(fit_jobs)))
    results = yield _Traces(check_jobs + fit_jobs, ticks, long=len(check_jobs))
    measured, peaks = results[:len(check_jobs)], results[len(check_jobs):]
    per_shape, gaps, traces, residual = {}, {}, {}, 0.0
    for i, shape in enumerate(shapes):
        traces[shape] = list(zip(design, peaks[i * len(design):(i + 1) * len(design)]))
        per_shape[shape], worst = ckpt_fit.solve_terms(traces[shape][:-1], disc.modules)
        residual = max(residual, worst)
        three, fourth = peaks[len(shapes) * len(design) + 2 * i: len(shapes) * len(design) + 2 * i + 2]
        gaps[shape] = ckpt_fit.block_gap(three, fourth)
    # Do the running block's adapted modules add up? If the all-modules trace says no (two modules' peaks at
    # different moments: GPT-NeoX's two MLP layers on a 4-bit base), every pair is traced and fitted.
    miss = max((ckpt_fit.pairs_needed(per_shape[s], traces[s][-1][1], disc.modules) for s in shapes), key=abs)
    # Without pairs, the fit above is the profile's (the all-modules trace stays a check: fitted without pair
    # terms it would bend the single-module ones); with them, every trace is fitted again, pairs included.
    pairs: list[str] = []
    if miss:
        pairs, pair_as = ckpt_fit.pair_design(disc.modules)
        tick = progress("pair traces", len(pair_as) * len(shapes)) if progress else None
        pair_peaks = yield _Traces([job(small, a, b, s) for b, s in shapes for a in pair_as], tick)
        residual = 0.0
        for i, shape in enumerate(shapes):
            fitted = traces[shape] + list(zip(pair_as, pair_peaks[i * len(pair_as):(i + 1) * len(pair_as)]))
            per_shape[shape], worst = ckpt_fit.solve_terms(fitted, disc.modules, pairs)
            residual = max(residual, worst)
    phases = ckpt_fit.assemble(per_shape, gaps, disc.modules, n_layers, pairs)
    conditions = _conditions(batch_size, seq_len, dtype, disc, method, residual, gradient_checkpointing=True,
                             quantization=quant, pair_check=round(miss, 6))
    return _validated(dataclasses.replace(draft, default_targets=targets, conditions=conditions, phases=phases),
                      measured, checks, holdout, (hb, hs))


def _validation_assignments(draft, targets, n_layers, validate, seed, batch_size, seq_len):
    """One-layer plans at the bottom, middle and top plus random ones at the profile's shape, and two at a
    shape not fitted on."""
    checks = [{(layer, m): 8 for m in targets} for layer in sorted({0, n_layers // 2, n_layers - 1})]
    checks += fit.random_assignments(draft.module_names, n_layers, max(validate - len(checks), 0), seed)
    checks = checks[:max(validate, 0)]
    holdout = fit.random_assignments(draft.module_names, n_layers, 2 if validate else 0, seed + 1)
    hb, hs = fit.holdout_shape(batch_size, seq_len)
    if draft.max_positions and hs > draft.max_positions:
        hs = draft.max_positions
    return checks, holdout, (hb, hs)


def _conditions(batch_size, seq_len, dtype, disc, method, residual, gradient_checkpointing=False, quantization=None,
                **extra) -> dict:
    quant = {}
    if quantization is not None:
        from ..training.levers import QUANT_DESCRIPTION

        quant = {"quantization": quantization, "quantization_detail": QUANT_DESCRIPTION[quantization]}
    return {
        "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype,
        "adapter_dtype": "fp32",  # PEFT autocasts adapters to fp32 whatever the base dtype
        "optimizer": "adamw", "attn_implementation": disc.attn_implementation,
        "gradient_checkpointing": gradient_checkpointing, "method": method, "lora_dropout": 0.0,
        "step": f"steady state: 2nd of 2 identical steps of {STEP_DESCRIPTION}"
                + ("; gradient checkpointing on (training.levers)" if gradient_checkpointing else "")
                + (f"; {quantization} base prepared by peft.prepare_model_for_kbit_training (training.levers)"
                   if quantization else ""),
        **quant,
        "fit_residual_bytes": round(residual, 1),
        **extra,
        "versions": _versions(),
    }


def _validated(profile: ModelProfile, measured, checks, holdout, holdout_shape) -> ModelProfile:
    validation = fit.validate(profile, measured[:len(checks)], checks)
    validation["shape_holdout"] = fit.validate(profile, measured[len(checks):], holdout, shape=holdout_shape)
    return dataclasses.replace(profile, validation=validation)  # "seconds": stamped by _profile_sets


def _trace_job(job):
    from .trace import trace_assignment

    return trace_assignment(_config(*job[0]), *job[1:7], method=job[7], seed=job[8],  # builds from a copy
                            gradient_checkpointing=job[9] if len(job) > 9 else False,
                            quantization=job[10] if len(job) > 10 else None)


def _warm(modules: tuple[str, ...]) -> None:
    """Import what a trace needs, so the first real job does not pay for it."""
    import importlib

    for m in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(m)


class _TracePool:
    """Trace workers for one whole profile: started at once, warmed (torch, transformers, peft and
    the model's modeling module imported) while the caller works, reused for the fit and the
    validation traces. In-process when workers <= 1 or for CUDA."""

    def __init__(self, workers: int | None, method: str, modeling: str | None = None) -> None:
        import os

        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 2)
        self.parallel = self.workers > 1 and method != "cuda"
        self.preload = tuple(m for m in ("lora_planner.profiling.trace", "transformers", "peft", modeling) if m)
        self.pool = None

    def __enter__(self) -> "_TracePool":
        if self.parallel:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver, not fork: a child forked from a parent whose OpenMP pool has run can hang.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(self.preload))  # imported once, in the server every worker forks from
            self._hidden = _main_hidden()
            self._hidden.__enter__()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
            for _ in range(self.workers):
                self.pool.submit(_warm, self.preload)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            # on an error, do not make the user wait for warm-up imports to finish
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
            self._hidden.__exit__(*exc)

    def submit(self, request: "_Call | _Traces") -> "_Pending":
        """Queue a request on the workers (or, in-process, run it when its result is asked for)."""
        if isinstance(request, _Call):
            if self.pool is None:
                return _Pending(lambda: request.fn(*request.args))
            return _Pending(self.pool.submit(request.fn, *request.args).result)
        jobs = request.jobs
        if self.pool is None or len(jobs) < 4:
            results = map(_trace_job, jobs)
        else:  # the first ``long`` jobs one at a time (they go first, so short jobs fill the gaps), the rest in chunks
            first = self.pool.map(_trace_job, jobs[:request.long])  # submits at once, like the map below
            rest = self.pool.map(_trace_job, jobs[request.long:], chunksize=4)
            results = itertools.chain(first, rest)

        def collect() -> list[dict[str, int]]:
            out = []
            for result in results:
                out.append(result)
                if request.tick:
                    request.tick()
            return out
        return _Pending(collect)


@dataclasses.dataclass(frozen=True)
class _Call:
    """A request of a profiling generator: ``fn(*args)`` in a worker."""
    fn: Callable
    args: tuple


@dataclasses.dataclass(frozen=True)
class _Traces:
    """A request of a profiling generator: trace jobs, results in job order, ``tick`` once per result."""
    jobs: list
    tick: Callable[[], None] | None = None
    long: int = 0


class _Pending:
    """A queued request; ``result()`` waits for it (once)."""

    def __init__(self, wait: Callable[[], object]) -> None:
        self._wait = wait

    def result(self):
        return self._wait()


@contextlib.contextmanager
def _main_hidden():
    """Workers need only lora_planner: keep multiprocessing from re-running the caller's script
    (an unguarded `profile_model(...)` at the top of a script would otherwise run in every worker)."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__",) if main is not None and k in main.__dict__}
    spec = getattr(main, "__spec__", None)
    if main is not None:
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            main.__spec__ = spec


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    from importlib.util import find_spec

    names = ("torch", "transformers", "peft") + (("bitsandbytes",) if find_spec("bitsandbytes") else ())
    return {"lora_planner": __version__, **{k: version(k) for k in names}}


def _two_bars(progress, first: tuple[str, int], second: tuple[str, int]):
    """One tick function over two progress bars: the first ``first[1]`` ticks go to the first. Each bar is
    opened at its first tick (the sets of one run queue their traces long before they run)."""
    if not progress:
        return None
    bars: list = [None, None]
    count = [0]

    def tick():
        count[0] += 1
        i = 0 if count[0] <= first[1] else 1
        if bars[i] is None:
            bars[i] = progress(*(first, second)[i])
        bars[i]()
    return tick
