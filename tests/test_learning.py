"""Learning is shown by learning: the transformer agent must adapt in context on the meta-bandit."""

import importlib.util
import json
import os

from amago_like import MetaBandit

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bandit_agent_learns_to_explore_then_exploit(tmp_path, two_threads):
    """configs/bandit.gin (about 30-60 s on 2 cores): random play earns 2.0 of a best 5.0."""
    bandit = load_example("toy")
    final = bandit.main(["--buffer_dir", str(tmp_path), "--run_name", "learn"])
    env = MetaBandit()
    rows = [json.loads(line) for line in open(tmp_path / "learn" / "metrics.jsonl")]
    first = rows[0]  # evaluated before any update: the untrained policy
    assert abs(first["val/return"] - env.random_return()) < 1.0

    # the return rises well above random, close to the best achievable ...
    assert final["val/return"] >= 4.3, final["val/return"]
    assert final["val/return"] > first["val/return"] + 1.5
    # ... because later pulls exploit what earlier pulls found
    assert final["val/Episode 6 Return"] >= 0.9
    assert final["val/Episode 6 Return"] > final["val/Episode 1 Return"] + 0.4
