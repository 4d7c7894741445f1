"""`capidsl launch`: the SLURM script passes `bash -n`, the Kubernetes manifest parses, both carry the plan's numbers.

And the `capidsl run` command each launcher starts is one capidsl's own parser accepts, with the
multi-host flags a process needs, so a multi-host run needs nothing but the launcher file.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import yaml

from capidsl.cli.main import build_parser, main

RECIPE = """
name: Launch Me
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64}
data: {source: synthetic, synthetic_examples: 512}
training: {batch_size: 16, duration: "40 steps"}
mesh: {data: -1, fsdp: 2, tensor: 4}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "launch.yaml"
    path.write_text(RECIPE)
    return path


def launch(capsys, *args) -> str:
    assert main(["launch", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_slurm_script_is_valid_bash_with_one_task_per_node(capsys, recipe, tmp_path):
    text = launch(capsys, recipe, "--cluster", "slurm", "--devices", 32, "--device-kind", "h100",
                  "--partition", "gpu", "--port", 7001, "--run-dir", "/shared/runs/launch", "--set", "training.seed=3")
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    sbatch = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert {"--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--job-name=launch-me"} <= set(sbatch)
    assert "export JAX_COORDINATOR_PORT=7001" in text.splitlines()
    assert "mesh data=4 × fsdp=2 × tensor=4" in text and "each host loads 4 of the 16 rows" in text
    [srun] = [line for line in text.splitlines() if line.startswith("srun ")]
    words = shlex.split(srun)
    assert words[:2] == ["srun", "--kill-on-bad-exit=1"] and words[2] == "capidsl"
    args = build_parser().parse_args(words[3:])  # SLURM's environment supplies the multi-host part
    assert (args.target, args.run_dir, args.overrides) == (str(recipe), "/shared/runs/launch", ["training.seed=3"])


def test_kubernetes_manifest_is_a_headless_service_and_an_indexed_job(capsys, recipe):
    text = launch(capsys, recipe, "--cluster", "kubernetes", "--devices", 16, "--device-kind", "a100-80g",
                  "--image", "registry.example/capidsl:1", "--namespace", "ml", "--volume", "team-share")
    service, job = list(yaml.safe_load_all(text))
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": "launch-me"} and service["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "launch-me" and pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["image"] == "registry.example/capidsl:1"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    command = container["command"]
    assert command[:2] == ["capidsl", "run"]
    # The process id is Kubernetes' completion index, expanded from a variable the container declares.
    assert command[command.index("--process-id") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert "JOB_COMPLETION_INDEX" in {e["name"] for e in container["env"]}
    pod_1 = [word.replace("$(JOB_COMPLETION_INDEX)", "1") for word in command]  # as Kubernetes expands it
    args = build_parser().parse_args(pod_1[1:])
    assert (args.coordinator, args.num_processes, args.process_id) == ("launch-me-0.launch-me:55527", 2, 1)
    assert args.run_dir == "/shared/runs/launch-me"  # on the claim every pod mounts
    assert container["volumeMounts"] == [{"name": "shared", "mountPath": "/shared"}]
    assert pod["volumes"] == [{"name": "shared", "persistentVolumeClaim": {"claimName": "team-share"}}]


def test_a_plan_json_keeps_its_own_topology(capsys, recipe, tmp_path):
    plan = tmp_path / "plan.json"
    assert main(["plan", str(recipe), "--devices", "8", "--device-kind", "tpu-v5e", "--out", str(plan), "--json"]) == 0
    capsys.readouterr()
    service, job = yaml.safe_load_all(launch(capsys, plan, "--cluster", "kubernetes", "--image", "img", "--volume", "v"))
    assert job["spec"]["completions"] == 2  # 8 TPU v5e chips, 4 per host
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"google.com/tpu": 4}
    assert job["metadata"]["name"] == "launch-me"


@pytest.mark.parametrize("args, message", [
    (["--cluster", "slurm"], "needs its size: --devices N"),
    (["--cluster", "kubernetes", "--devices", "16", "--device-kind", "h100"], "needs --image"),
    (["--cluster", "kubernetes", "--devices", "16", "--device-kind", "h100", "--image", "i"], "give --volume CLAIM"),
    (["--cluster", "slurm", "--devices", "16", "--device-kind", "h100", "--run-dir", "gs://b/r"],
     "a gs:// run directory serves a single-process run"),
])
def test_what_is_missing_is_said(capsys, recipe, args, message):
    assert main(["launch", str(recipe), *args]) == 2
    assert message in capsys.readouterr().err


def test_the_command_imports_nothing_heavy():
    code = ("import sys, capidsl.cli.launch; "
            "print(sorted(m for m in ('jax', 'flax', 'orbax', 'grain', 'optax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
