#!/usr/bin/env bash
# Runs the train job on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#
# Copies this checkout to every worker, installs it, then starts the same
# command on all workers at once; jax.distributed finds the other workers by
# itself on a TPU slice. WORKDIR must be a path every worker sees (a
# GCS bucket mounted with gcsfuse, or NFS): checkpoints are written by all.
# Settings live in the config file; extra arguments are passed through.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,11p' "$0"; exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
remote_dir=neft_jax

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1"
}

tar -C "$repo" --exclude=.venv --exclude=.git -czf /tmp/neft_jax_code.tgz .
gcloud compute tpus tpu-vm scp /tmp/neft_jax_code.tgz "$tpu":/tmp/ --zone="$zone" --worker=all
ssh_all "mkdir -p $remote_dir && tar -xzf /tmp/neft_jax_code.tgz -C $remote_dir && \
  cd $remote_dir && python3 -m pip install -q -e . 'jax[tpu]'"
ssh_all "cd $remote_dir && python3 -m neft_jax.train --config=$config --workdir=$workdir $*"
