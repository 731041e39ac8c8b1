"""Benchmark: corrupting the 10,662 rt-polarity sentences, per kind of noise (goal: under 1 s).

Times `neft_jax.data.noise.corrupt` on the sentences (as {"text", "label"}
records) for label, typo and grammar noise at `--rate`, the best of
`--repeats` calls each, as wall time and as the process's CPU time (the one to
read on a machine shared with other work), and applying each manifest again.

    python bench/noise.py [--data ../shared/data/sentiment] [--rate 0.1] [--repeats 5]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from neft_jax.data import noise, rt_polarity  # noqa: E402


def best_time(function, repeats: int) -> tuple[float, float, object]:
  """(best wall seconds, best CPU seconds, the last result) of `repeats` calls."""
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return min(walls), min(cpus), result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  shared = os.environ.get("NEFT_JAX_SHARED_DATA", os.path.join("..", "shared", "data"))
  parser.add_argument("--data", default=os.path.join(shared, "sentiment"),
                      help="the rt-polarity folder (rt-polarity.pos and rt-polarity.neg)")
  parser.add_argument("--rate", type=float, default=0.1)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  records = rt_polarity.load_rt_polarity(args.data)
  result = {"records": len(records), "words": sum(len(r["text"].split()) for r in records),
            "rate": args.rate, "repeats": args.repeats}
  for kind in noise.KINDS:
    wall, cpu, (noisy, manifest, realized) = best_time(
        lambda: noise.corrupt(records, kind=kind, rate=args.rate, seed=0,
                              labels=rt_polarity.LABELS), args.repeats)
    apply_wall, _, again = best_time(lambda: noise.apply_manifest(records, manifest), args.repeats)
    assert again == noisy
    print(f"{kind:8s} {wall:6.3f} s wall, {cpu:6.3f} s CPU; manifest applied in "
          f"{apply_wall:.3f} s; {realized.summary()}")
    result[kind] = {"seconds": round(wall, 4), "cpu_seconds": round(cpu, 4),
                    "apply_manifest_seconds": round(apply_wall, 4),
                    "manifest_entries": len(manifest), **realized.as_dict()}
  result["goal_seconds"] = 1.0
  result["all_under_goal"] = all(result[kind]["seconds"] < 1.0 for kind in noise.KINDS)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
