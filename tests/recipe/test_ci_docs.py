"""docs/ci.md and .pre-commit-hooks.yaml: the snippets parse, and the hook does what it says."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_yaml_snippet_in_ci_md_parses():
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs/ci.md").read_text(), re.S)
    assert len(blocks) == 2
    workflow, config = (yaml.safe_load(b) for b in blocks)
    steps = workflow["jobs"]["validate"]["steps"]
    assert any("capidsl validate recipes/ --format github" in s.get("run", "") for s in steps)
    assert config["repos"][0]["hooks"][0]["id"] == "capidsl-validate"


def test_the_pre_commit_hook_checks_the_files_it_is_given(tmp_path):
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "capidsl-validate" and re.search(hook["files"], "recipes/base.yaml")
    argv = shlex.split(hook["entry"])
    assert argv[0] == "capidsl"
    cmd = [sys.executable, "-m", "capidsl", *argv[1:]]
    good = subprocess.run(cmd + [str(ROOT / "recipes/base.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: gpt}\ntraining: {bach_size: 3}\n")
    refused = subprocess.run(cmd + [str(ROOT / "recipes/base.yaml"), str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 1 and "did you mean 'batch_size'" in refused.stdout + refused.stderr
