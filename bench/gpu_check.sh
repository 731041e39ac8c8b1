#!/usr/bin/env bash
# Every check this project can only make on a GPU, in one run of at most 5
# minutes on one H100/H200, with its figures written as JSON.
#
#   bench/gpu_check.sh [--out DIR] [--budget SECONDS]   # on the GPU machine
#   bench/gpu_check.sh --cpu-smoke [--out DIR]          # the same checks, tiny, on a CPU
#   bench/gpu_check.sh --download-wheels                # where PyPI is reachable, beforehand
#
# The checks, in this order, each a script that prints a JSON last line:
#   attention  bench/attention.py: cuDNN against XLA attention (the kernel
#              with its gradients, and the model's forward on packed rows):
#              equal within bfloat16 tolerance, and the time of each;
#   mfu        bench/mfu.py --preset 1b: train-step MFU and tokens/s of the
#              1.1B Llama shape in bfloat16 (cuDNN attention), against
#              transformers on the same GPU;
#   smoke      bench/family_smoke.py: python -m neft_jax.train for 20 steps on
#              random checkpoints of GPT-2's, Llama-2-7B's and Qwen2-1.5B's
#              shapes cut to 2 layers, bfloat16, cuDNN attention.
# --cpu-smoke runs the same scripts on tiny shapes on the CPU (JAX_PLATFORMS=cpu,
# XLA attention against itself, a few steps), to check the plumbing, not the GPU.
#
# Output: DIR/gpu_check.json (default DIR: runs/gpu_check) holds
# {"checks": {"attention": ..., "mfu": ..., "smoke": ...}, "versions": ...,
# "ok": ...}, each check with its exit code and seconds (or an error), and it
# is also the last line printed; DIR/gpu_check.log is the whole console. Exit
# code 0 only if every check passed. Each check runs under a time limit, and a
# check that would start with less than 20 seconds of --budget (default 300,
# 2400 with --cpu-smoke) left is skipped and reported so.
#
# Python: $PYTHON (default python3) with jax (and its CUDA plugin), flax,
# optax, orbax-checkpoint, transformers and torch installed, as the GPU
# machine's image has them. neft_jax is imported from this checkout (nothing
# is installed). The other packages the checks import (grain, array_record,
# portpicker, ml_collections, tensorboardX) may be missing there: if they do
# not import, the script installs the wheels in bench/wheels/ (with pip
# --no-index --no-deps, into a temporary folder on PYTHONPATH). Fill that
# folder beforehand, where PyPI is reachable, with --download-wheels: it
# fetches requirements.txt's versions of those packages for Python 3.12 on
# x86-64 Linux (about 5 MB; the folder is git-ignored). On the GPU machine,
# with the checkout and bench/wheels/ copied there, the whole command is then
#
#   bash bench/gpu_check.sh --out DIR
#
# and it ends within --budget plus about a minute (start-up and the report);
# allow 7 minutes for the command.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-bench/wheels}
# What the checks import beyond the GPU image's packages, at requirements.txt's versions.
CARRIED=(grain array_record portpicker ml_collections tensorboardX)

cpu_smoke=0
out=runs/gpu_check
budget=
download=0
while (($#)); do
  case $1 in
    --cpu-smoke) cpu_smoke=1 ;;
    --out) out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    --budget) budget=$2; shift ;;
    --budget=*) budget=${1#--budget=} ;;
    --download-wheels) download=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1; see bench/gpu_check.sh --help" >&2; exit 2 ;;
  esac
  shift
done

pinned() {  # NAME -> NAME==VERSION from requirements.txt
  local line
  line=$(grep -i -E "^$1==" requirements.txt | head -n 1)
  [[ -n $line ]] || { echo "error: requirements.txt pins no $1" >&2; return 1; }
  echo "${line%%;*}"
}

if ((download)); then
  mkdir -p "$WHEELS"
  for name in "${CARRIED[@]}"; do
    requirement=$(pinned "$name") || exit 1
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
      "$requirement" || exit 1
  done
  ls -l "$WHEELS"
  exit 0
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Everything from here on runs in main, its output also written to gpu_check.log.
main() {
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ((cpu_smoke)); then  # a CPU shared with other work: the limits only stop a hang
  export JAX_PLATFORMS=cpu
fi
budget=${budget:-$((cpu_smoke ? 2400 : 300))}

# ------------------------------------------------------------ packages
imports="import jax, flax, optax, orbax.checkpoint, transformers"
imports+=", grain, ml_collections, tensorboardX"
if ! "$PYTHON" -c "$imports" 2>/dev/null; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "error: $PYTHON cannot import what the checks need ($imports), and $WHEELS holds no" \
         "wheels; fill it with bench/gpu_check.sh --download-wheels and carry it along" >&2
    exit 1
  fi
  echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels from $WHEELS"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$scratch/site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$scratch/site"
  "$PYTHON" -c "$imports" || { echo "error: the checks' packages still do not import" >&2; exit 1; }
fi
"$PYTHON" - >"$scratch/versions.json" <<'EOF'
import importlib.metadata, json, platform
import jax
names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers",
         "torch", "grain", "ml_collections", "tensorboardX", "numpy"]
versions = {}
for name in names:
  try:
    versions[name] = importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    versions[name] = None
device = jax.devices()[0]
versions |= {"python": platform.python_version(), "jax_platform": device.platform,
             "device_kind": device.device_kind, "device_count": jax.device_count()}
print(json.dumps(versions))
EOF
echo "gpu_check: $(cat "$scratch/versions.json")"

# ------------------------------------------------------------ checks
start=$SECONDS
limit_for() {  # CAP_SECONDS -> the cap, or less if the budget has less left
  local left=$((budget - (SECONDS - start)))
  echo $(($1 < left ? $1 : left))
}
run_check() {  # NAME LIMIT_SECONDS COMMAND... : runs it with a time limit, keeps its JSON last line
  local name=$1 limit=$2 began code
  shift 2
  if ((limit < 20)); then
    echo "gpu_check: $name skipped: ${limit} s of the ${budget} s budget left"
    echo "{\"error\": \"skipped: ${limit} s of the ${budget} s budget left\"}" \
      >"$scratch/$name.json"
    return
  fi
  echo "gpu_check: $name (limit ${limit} s): $*"
  began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" | tee "$scratch/$name.out"
  code=${PIPESTATUS[0]}
  echo "{\"exit_code\": $code, \"seconds\": $((SECONDS - began)), \"limit_seconds\": $limit}" \
    >"$scratch/$name.status"
  tail -n 1 "$scratch/$name.out" >"$scratch/$name.json"
}

if ((cpu_smoke)); then
  run_check attention "$(limit_for 600)" "$PYTHON" bench/attention.py --cpu-smoke
  run_check mfu "$(limit_for 600)" "$PYTHON" bench/mfu.py --preset tiny --steps 2 --warmup 1
  limit=$(limit_for 1200)
  run_check smoke "$limit" "$PYTHON" bench/family_smoke.py --cpu-smoke \
    --budget_seconds $((limit - 10))
else
  run_check attention "$(limit_for 45)" "$PYTHON" bench/attention.py
  run_check mfu "$(limit_for 135)" "$PYTHON" bench/mfu.py --preset 1b --steps 10 --warmup 2
  limit=$(limit_for 200)
  run_check smoke "$limit" "$PYTHON" bench/family_smoke.py --budget_seconds $((limit - 10))
fi

# ------------------------------------------------------------ report
"$PYTHON" - "$scratch" "$out/gpu_check.json" "$cpu_smoke" "$budget" "$((SECONDS - start))" <<'EOF'
import json, os, sys
scratch, path, cpu_smoke, budget, seconds = sys.argv[1:]
checks = {}
for name in ("attention", "mfu", "smoke"):
  status_file = os.path.join(scratch, f"{name}.status")
  status = json.load(open(status_file)) if os.path.exists(status_file) else {}
  try:
    result = json.loads(open(os.path.join(scratch, f"{name}.json")).read())
    if not isinstance(result, dict):
      raise ValueError("not an object")
  except (OSError, ValueError):
    result = {"error": f"no JSON result (exit code {status.get('exit_code')}); see gpu_check.log"}
  result = status | result
  if status.get("exit_code") not in (0, None) and "error" not in result:
    result["error"] = f"exit code {status['exit_code']}" + (
        " (the time limit)" if status["exit_code"] in (124, 137) else "")
  if result.get("torch_error"):  # mfu ran, but without its transformers baseline
    result.setdefault("error", f"the transformers baseline failed: {result['torch_error']}")
  checks[name] = result
report = {"cpu_smoke": cpu_smoke == "1", "budget_seconds": int(budget),
          "seconds": int(seconds),
          "versions": json.load(open(os.path.join(scratch, "versions.json"))),
          "checks": checks, "ok": all("error" not in c for c in checks.values())}
with open(path, "w") as f:
  json.dump(report, f, indent=1)
print(json.dumps(report))
sys.exit(0 if report["ok"] else 1)
EOF
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
