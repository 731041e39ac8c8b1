"""The launch scripts build the train command and pass overrides through; the GPU
check fetches its wheels and says what is missing.

Each runs with stand-ins for python, srun and gcloud on PATH that record how
they were called.
"""

import os
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def recorder(tmp_path):
  log = tmp_path / "calls.log"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("python", "python3", "srun", "gcloud"):
    stub = bin_dir / name
    stub.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> {log}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
  env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
  return env, log


def test_gpu_local(recorder):
  env, log = recorder
  subprocess.run(["bash", "launch/gpu_local.sh", "configs/demo.py", "runs/x",
                  "--config.train.batch_size=16"], cwd=REPO, env=env, check=True)
  call = log.read_text().strip()
  assert call.startswith("python -m neft_jax.train --config=configs/demo.py --workdir=runs/x")
  assert "--config.train.steps=20" in call and call.endswith("--config.train.batch_size=16")


def test_gpu_slurm(recorder):
  env, log = recorder
  subprocess.run(["bash", "launch/gpu_slurm.sbatch", "configs/llama2_alpaca.py", "/shared/run",
                  "--config.neftune.alpha=10"], cwd=REPO, env=env, check=True)
  call = log.read_text().strip()
  assert call == ("srun --kill-on-bad-exit=1 python -m neft_jax.train "
                  "--config=configs/llama2_alpaca.py --workdir=/shared/run --config.neftune.alpha=10")


def test_tpu_pod(recorder):
  env, log = recorder
  subprocess.run(["bash", "launch/tpu_pod.sh", "my-tpu", "us-central2-b", "configs/llama2_alpaca.py",
                  "/mnt/bucket/run", "--config.train.steps=5"], cwd=REPO, env=env, check=True)
  calls = log.read_text().strip().splitlines()
  assert all(c.startswith("gcloud compute tpus tpu-vm") for c in calls)
  assert all("--worker=all" in c for c in calls)
  assert "pip install" in calls[1]
  assert calls[-1].endswith("python3 -m neft_jax.train --config=configs/llama2_alpaca.py "
                            "--workdir=/mnt/bucket/run --config.train.steps=5")


def test_usage_without_arguments(recorder):
  env, _ = recorder
  result = subprocess.run(["bash", "launch/tpu_pod.sh"], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 2 and "TPU_NAME ZONE CONFIG WORKDIR" in result.stdout


def test_gpu_check_downloads_the_pinned_wheels(recorder):
  env, log = recorder
  subprocess.run(["bash", "bench/gpu_check.sh", "--download-wheels"], cwd=REPO,
                 env=env | {"PYTHON": "python3", "GPU_CHECK_WHEELS": str(log.parent / "wheels")},
                 check=True, capture_output=True)
  calls = log.read_text().strip().splitlines()
  with open(os.path.join(REPO, "requirements.txt")) as f:
    pinned = {line.split("==")[0].lower(): line.split(";")[0].strip()
              for line in f if "==" in line and not line.startswith("#")}
  assert len(calls) == 5
  for call, name in zip(calls, ("grain", "array_record", "portpicker", "ml_collections",
                                "tensorboardx")):
    assert call.startswith("python3 -m pip download") and "--python-version 3.12" in call
    assert call.endswith(pinned[name])


def test_gpu_check_without_its_packages_or_wheels(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  stub = bin_dir / "python3"  # a Python that lacks what the checks import
  stub.write_text("#!/usr/bin/env bash\nexit 1\n")
  stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
  env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": "python3",
                      "GPU_CHECK_WHEELS": str(tmp_path / "no_wheels")}
  result = subprocess.run(["bash", "bench/gpu_check.sh", "--out", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True)
  assert result.returncode == 1
  assert result.stdout.startswith("error: python3 cannot import what the checks need")
  assert "bench/gpu_check.sh --download-wheels" in result.stdout
