"""Several processes with jax.distributed on localhost (CPU, gloo collectives):
the same losses as one process, and preemption by SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import demo as demo_config
from neft_jax import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30  # SIGTERM comes after step 3: the rest is the margin before the run would end


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost_assets")
  config = demo_config.get_config()
  config.demo.train_examples, config.demo.eval_examples = 300, 8
  demo.prepare(config.demo, str(root / "model"), str(root / "data"), seed=0)
  return root


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(assets, workdir, processes: int, devices: int, steps: int = STEPS) -> list[subprocess.Popen]:
  """The train command on `processes` local processes of `devices` CPU devices each."""
  port = free_port()
  children = []
  for index in range(processes):
    command = [
        sys.executable, "-m", "neft_jax.train", "--config=configs/demo.py", f"--workdir={workdir}",
        f"--config.model.path={assets / 'model'}",
        f"--config.data.path={assets / 'data' / 'train.json'}",
        f"--config.data.eval_path={assets / 'data' / 'eval.json'}",
        f"--config.train.steps={steps}", "--config.train.batch_size=8",
        "--config.train.log_every=1", "--config.checkpoint.every_steps=100",
        "--config.eval.exact_match=False"]
    if processes > 1:
      command += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                  f"--process_id={index}"]
    env = os.environ | {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
    children.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True))
  return children


def wait(children, timeout=600) -> list[str]:
  outputs = [child.communicate(timeout=timeout)[0] for child in children]
  for child, output in zip(children, outputs):
    assert child.returncode == 0, output[-3000:]
  return outputs


def losses(workdir) -> dict[int, float]:
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return {l["step"]: l["loss"] for l in lines if "loss" in l}


@pytest.fixture(scope="module")
def one_process(assets, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_process_four_devices")
  wait(launch(assets, workdir, processes=1, devices=4))
  return losses(workdir)


def test_sigterm_saves_agreed_step_and_two_processes_resume_to_the_losses_of_one(
    assets, one_process, tmp_path):
  """Two processes are stopped by SIGTERM, then resume: every step's loss (from before the
  stop and after it) equals the one process's on the same 4 devices."""
  children = launch(assets, tmp_path, processes=2, devices=2)
  deadline = time.time() + 300
  while time.time() < deadline:  # wait until training is under way
    if (tmp_path / "metrics.jsonl").exists() and len(losses(tmp_path)) >= 3:
      break
    if any(child.poll() is not None for child in children):
      pytest.fail("a process ended early: " + children[0].communicate()[0][-2000:])
    time.sleep(0.1)
  for child in children:
    child.send_signal(signal.SIGTERM)
  time.sleep(0.3)
  for child in children:  # a second SIGTERM during the save must do no harm
    if child.poll() is None:
      child.send_signal(signal.SIGTERM)
  outputs = wait(children)  # both exit 0
  assert any("preempted: saving a checkpoint at step" in output for output in outputs)
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert len(saved) == 1 and 3 <= saved[0] < STEPS
  assert max(losses(tmp_path)) == saved[0]  # stopped at the step all processes agreed on

  outputs = wait(launch(assets, tmp_path, processes=2, devices=2))  # resumes from that checkpoint
  assert "process 1 of 2" in outputs[1]
  resumed = losses(tmp_path)  # written by process 0 only
  assert sorted(resumed) == sorted(one_process) == list(range(1, STEPS + 1))
  np.testing.assert_allclose(resumed[STEPS], one_process[STEPS], rtol=1e-5)
  np.testing.assert_allclose([resumed[s] for s in range(1, STEPS + 1)],
                             [one_process[s] for s in range(1, STEPS + 1)], rtol=1e-5)
