"""The planning path must not import torch, transformers, peft or flwr."""
import subprocess
import sys


def test_planning_path_imports_no_heavy_library():
    code = (
        "import sys, lora_planner, lora_planner.memory, lora_planner.adapter_config\n"
        "from lora_planner.cli.main import main\n"
        "rc = main(['solve', '--model', 'llama-2-7b', '--memory-budget', '16GiB', '--format', 'json'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'flwr') if m in sys.modules]\n"
        "assert rc == 0, rc\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
