"""The ServerApp: plans (or loads a plan), runs the executor's rounds on the Grid, writes the run folder.

``app`` (for ``flwr run``) reads its settings from the app's run config (``[tool.flwr.app.config]``:
the ``RunSettings`` fields, dashes for underscores, plus ``run-dir`` and ``resume``).
``simulate`` runs the same on the Simulation Engine (Ray) inside this process, for
``lora-planner train --backend flower``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..errors import LoraPlannerError
from ..federated import RunSettings, resume, start

TUPLES = {"budgets", "target_modules", "ranks"}


def settings_from_run_config(config: dict) -> tuple[RunSettings, Path, bool]:
    """RunSettings from a Flower run config (strings, numbers, booleans; lists as comma-separated strings)."""
    names = {f.name: f for f in fields(RunSettings)}
    kwargs = {}
    for key, value in config.items():
        name = key.replace("-", "_")
        if name not in names or value == "":
            continue
        if name in TUPLES:
            items = [v.strip() for v in str(value).split(",") if v.strip()]
            value = tuple(int(v) for v in items) if name == "ranks" else tuple(items)
        kwargs[name] = value
    if "run-dir" not in config:
        raise LoraPlannerError("run-dir", "set in the app's run config", "missing", 'Add run-dir = "/abs/path/run" to [tool.flwr.app.config].')
    kwargs["backend"] = "flower"
    return RunSettings(**kwargs), Path(str(config["run-dir"])), bool(config.get("resume", False))


def run_on_grid(grid: Grid, settings: RunSettings | None, run_dir: Path, resume_run: bool = False, force: bool = False,
                overrides: dict | None = None, faults: dict | None = None) -> Path:
    options = {"grid": grid}
    if resume_run:
        return resume(run_dir, overrides, faults=faults, backend_options=options)
    return start(settings, run_dir, force=force, faults=faults, backend_options=options)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings, run_dir, resume_run = settings_from_run_config(dict(context.run_config))
    run_on_grid(grid, settings, run_dir, resume_run, force=bool(context.run_config.get("force", False)))


def flower_environment(root: str | None = None) -> dict[str, str]:
    """Flower's home, Ray's temp dir and logs under one temp folder; telemetry, update checks and runtime
    installs off; Ray on loopback. Set in this process's environment (Ray's workers inherit it)."""
    root = root or tempfile.mkdtemp(prefix="lora-planner-flwr-")
    env = {"FLWR_HOME": os.path.join(root, "flwr"), "RAY_TMPDIR": os.path.join(root, "ray"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    for k, v in env.items():
        os.environ.setdefault(k, v)
        if k in ("FLWR_HOME", "RAY_TMPDIR"):
            Path(os.environ[k]).mkdir(parents=True, exist_ok=True)
    return env


def simulate(settings: RunSettings | None, run_dir, num_supernodes: int, resume_run: bool = False, force: bool = False,
             overrides: dict | None = None, faults: dict | None = None, cpus_per_client: float = 1.0) -> Path:
    """The run on Flower's Simulation Engine (Ray) in this process; raises what the ServerApp raised."""
    flower_environment()
    from flwr.simulation import run_simulation

    from .client_app import app as client_app

    outcome: dict = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            outcome["run_dir"] = run_on_grid(grid, settings, Path(run_dir), resume_run, force, overrides, faults)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            outcome["error"] = exc

    run_simulation(server_app=server, client_app=client_app, num_supernodes=num_supernodes,
                   backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "num_cpus": os.cpu_count() or 2}})
    if "error" in outcome:
        raise outcome["error"]
    if "run_dir" not in outcome:
        raise LoraPlannerError("flower simulation", "a run that reached the ServerApp", "none", "See Flower's log above.")
    return outcome["run_dir"]
