#!/usr/bin/env bash
# A single-host GPU smoke run: a few logged steps of a config on this host's GPUs.
#
#   launch/gpu_local.sh [CONFIG] [WORKDIR] [--config.key=value ...]
#
# Defaults: configs/llama2_alpaca.py and runs/gpu_smoke. Twenty steps with a
# log line each, cuDNN flash attention; all other settings from the config.
set -euo pipefail
config=${1:-configs/llama2_alpaca.py}
workdir=${2:-runs/gpu_smoke}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/.."
python -m neft_jax.train --config="$config" --workdir="$workdir" \
  --config.train.steps=20 --config.train.log_every=1 --config.model.attention=cudnn "$@"
