"""A Flower Deployment Engine on loopback: one flower-superlink and N flower-supernode processes
(``--insecure``, each with ``--node-config "partition-id=K num-partitions=N"``), this app run on it
with ``flwr run . dep --stream``, then every process this script started stopped by its PID (each in
its own process group, so the flwr-serverapp / flwr-clientapp processes they spawn go too).

    python examples/flower/run_deployment.py                       # BANKING77, 3 nodes, 3 rounds
    python examples/flower/run_deployment.py --nodes 3 --kill-node 2 --kill-after-round 1 --round-timeout 60
                                                                   # kill -9 one SuperNode mid-run

Flower's home, Ray's temp dir, logs and the run folder live in one temp folder (printed); telemetry,
update checks and runtime dependency installs are off. Exits non-zero when the ServerApp failed
(``flwr run --stream`` itself exits 0 then): success = the run folder has every round and final/.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "banking77"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


def ours(flwr_home: str) -> list[int]:
    """PIDs of processes started with our FLWR_HOME (the SuperExec and app processes Flower spawns in sessions of
    their own), read from /proc: nothing else on the machine has that temp path in its environment."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"FLWR_HOME={flwr_home}".encode() in env.read_bytes().split(b"\0"):
                found.append(int(env.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def stop(procs: list[subprocess.Popen], flwr_home: str) -> None:
    """SIGTERM each process group we started, then SIGKILL what is left, then any process Flower spawned for us."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for pid in ours(flwr_home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", default="hetlora")
    ap.add_argument("--budgets", default="100MiB,115MiB,140MiB")
    ap.add_argument("--round-timeout", type=float, default=120.0)
    ap.add_argument("--kill-node", type=int, default=None, help="kill -9 this partition's SuperNode ...")
    ap.add_argument("--kill-after-round", type=int, default=1, help="... once this round's checkpoint exists")
    ap.add_argument("--root", default=None, help="the temp folder (default: a new one)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a SIGTERM still runs the clean-up below

    root = Path(args.root or tempfile.mkdtemp(prefix="lora-planner-deploy-"))
    env = {**os.environ, "FLWR_HOME": str(root / "flwr"), "RAY_TMPDIR": str(root / "ray"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore"}
    (root / "flwr").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    port = free_port()  # flwr 1.41: the SuperLink serves its Runtime, Control and Fleet APIs on one HTTP port
    (root / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "dep"\n\n[superlink.dep]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    run_dir = root / "run"
    procs: list[subprocess.Popen] = []

    def launch(argv: list[str], log: str) -> subprocess.Popen:
        f = open(root / "logs" / log, "w")
        p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        launch(["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                "--disable-runtime-dependency-installation"], "superlink.log")
        wait_port(port)
        nodes = {}
        for k in range(args.nodes):
            nodes[k] = launch(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                               "--node-config", f"partition-id={k} num-partitions={args.nodes}"], f"supernode-{k}.log")
        config = {"run-dir": str(run_dir), "data": str(DATA / "train.csv"), "eval-data": str(DATA / "test.csv"),
                  "rounds": args.rounds, "method": args.method, "budgets": args.budgets, "round-timeout": args.round_timeout}
        run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        t0 = time.time()
        run = launch(["flwr", "run", str(HERE), "dep", "--stream", "--run-config", run_config], "flwr-run.log")
        killed_at = None
        while run.poll() is None:
            if args.kill_node is not None and killed_at is None and \
                    (run_dir / "checkpoints" / f"round-{args.kill_after_round:04d}" / "manifest.json").exists():
                os.killpg(nodes[args.kill_node].pid, signal.SIGKILL)  # kill -9, mid-run
                killed_at = time.time() - t0
                print(f"killed SuperNode {args.kill_node} (pid {nodes[args.kill_node].pid}) at {killed_at:.1f} s", flush=True)
            time.sleep(0.2)
        wall = time.time() - t0
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if (run_dir / "metrics.jsonl").exists() else []
        ok = len(rows) == args.rounds and (run_dir / "final" / "adapter_model.safetensors").exists()
        print(json.dumps({"ok": ok, "wall_s": round(wall, 1), "killed_at_s": killed_at, "root": str(root),
                          "rounds": [{"round": r["round"], "eval": r["eval"], "seconds": r["seconds"],
                                      "dropped": {c["id"]: c["dropped"] for c in r["clients"] if c["dropped"]}} for r in rows]},
                         indent=1))
        if not ok:
            print(f"the ServerApp did not finish: see {root}/logs/", file=sys.stderr)
        return 0 if ok else 1
    finally:
        stop(procs, env["FLWR_HOME"])


if __name__ == "__main__":
    sys.exit(main())
