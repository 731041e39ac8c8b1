"""Test set-up: 8 simulated CPU devices, float32 matmuls, quick compiles, and the shared data folder."""

import os

# No test may reach the network: hub look-ups fail at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite's programs are tiny, and LLVM's optimization of them was most of its time:
# compile without it (here and in the runs tests start as subprocesses).
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import jax  # noqa: E402
import pytest  # noqa: E402

# Before any backend starts: sharding tests need several devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = os.environ.get(
    "NEFT_JAX_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def shared_data(*parts: str) -> str:
  """A path under the shared data folder; skips the test where it is absent."""
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f"{path} not found: set NEFT_JAX_SHARED_DATA to the shared data folder "
                "(real tokenizers and Alpaca data) to run this test")
  return path


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> str:
  """A folder for the shrunk demo's data, tokenizer and model, written by the first run
  that needs them (tests.test_train.shrunk_config points there)."""
  return str(tmp_path_factory.mktemp("demo_assets"))


@pytest.fixture(scope="session")
def shrunk_run(demo_assets, tmp_path_factory):
  """The shrunk demo trained once for the whole session: 6 steps, checkpoints at 3 and 6.

  Returns (workdir, train's result). Tests only read the workdir; one that changes it
  works on a copy.
  """
  from neft_jax import train
  from tests.test_train import shrunk_config
  workdir = tmp_path_factory.mktemp("shrunk_run")
  result = train.train(shrunk_config(demo_assets), str(workdir))
  return workdir, result
