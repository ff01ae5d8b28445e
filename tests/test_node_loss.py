"""A lost node: a head and two worker nodes on this machine (each its own raylet and object
store), a toy ReLIFT run spread over them by its own placement, and the worker node holding
most of its actors killed mid-run with everything on it; the run goes on by itself and ends
with the uninterrupted run's state and weights (scripts/node_loss.py, in its own process:
its cluster is not the tests' one)."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def test_a_lost_node_is_survived_with_the_uninterrupted_end_state(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "node_loss.py"), "--steps", "8",
                        "--at", "5", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=1500)
    printed = p.stdout + p.stderr
    assert p.returncode == 0, printed[-4000:]
    assert "lost after the checkpoint of step 4, holding" in printed
    assert "[node-loss] PASS" in printed
