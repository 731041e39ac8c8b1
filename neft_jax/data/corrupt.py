"""python -m neft_jax.data.corrupt: a noisy copy of a record file, and its manifest.

    python -m neft_jax.data.corrupt --data=IN --out=OUT --kind=label|typo|grammar --rate=R
        [--seed=S] [--fields=output] [--labels=negative,positive] [--label_noise=pair]
        [--typo_ops=swap,delete] [--grammar_ops=article,confusion]
    python -m neft_jax.data.corrupt --data=IN --out=OUT --apply_manifest=OUT.manifest.jsonl

IN is a record file the project reads (a .json list, .jsonl, .csv, .parquet). OUT
gets every record, with all its columns, in IN's format, and
`OUT.manifest.jsonl` one line per changed field (`neft_jax.data.noise`).
`--apply_manifest` writes OUT again from the clean IN and a manifest, exactly.
Bad input is one `error:` line and exit code 1, and nothing is written.
"""

from __future__ import annotations

import json
import os

from absl import flags

from neft_jax import cli
from neft_jax.data import noise, sources
from neft_jax.errors import UserError


def define_flags() -> None:
  flags.DEFINE_string("data", "", "the clean record file: .json (a list), .jsonl, .csv or .parquet")
  flags.DEFINE_string("out", "", "the noisy copy, in the input's format; the manifest goes to "
                      "OUT.manifest.jsonl")
  flags.DEFINE_string("kind", "", "label, typo or grammar")
  flags.DEFINE_float("rate", None, "records (label) or words (typo, grammar) to corrupt, in "
                     "[0, 1]")
  flags.DEFINE_integer("seed", 0, "the noise's seed")
  flags.DEFINE_list("fields", [], "the fields to corrupt (default: the label field, `label` or "
                    "`output`, for label noise; `input` or `text` for the others)")
  flags.DEFINE_list("labels", [], "the label set, for label noise: negative,positive")
  flags.DEFINE_string("label_noise", "symmetric", "symmetric or pair")
  flags.DEFINE_list("typo_ops", list(noise.TYPO_OPS), "typo operations to choose among")
  flags.DEFINE_list("grammar_ops", list(noise.GRAMMAR_OPS), "grammar operations to choose among")
  flags.DEFINE_string("apply_manifest", "", "a manifest to apply to --data instead of drawing "
                      "new noise")


def manifest_path(out: str) -> str:
  return out + ".manifest.jsonl"


def read_rows(path: str) -> tuple[list[dict], str, object]:
  """The file's records as dicts with all their columns, its format, and parquet's features."""
  if not path:
    raise UserError("--data is not set; give a .json, .jsonl, .csv or .parquet record file")
  if not os.path.isfile(path):
    what = "is a folder" if os.path.isdir(path) else "does not exist"
    raise UserError(f"--data={path} {what}; give one .json, .jsonl, .csv or .parquet record file")
  if os.path.splitext(path)[1] not in sources.LOCAL_FORMATS:
    raise UserError(f"--data={path}: unknown data format; use a .json, .jsonl, .csv or .parquet file")
  rows = sources.load_file(path)  # the project's reader of one file, columns all kept
  file_format = sources.LOCAL_FORMATS[os.path.splitext(path)[1]]
  if file_format == "parquet":
    return rows.to_list(), "parquet", rows.features
  if file_format == "csv":
    return rows, "csv", list(rows[0]) if rows else []
  with open(path, encoding="utf-8") as f:
    head = f.read(4096).lstrip()
  return list(rows), "json" if head.startswith("[") else "jsonl", None


def _write_rows(path: str, rows: list[dict], file_format: str, features) -> None:
  if file_format == "parquet":
    import datasets
    datasets.Dataset.from_list(rows, features=features).to_parquet(path)
  elif file_format == "csv":  # features: the header's columns, in order
    import csv
    with open(path, "w", encoding="utf-8", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=features)
      writer.writeheader()
      writer.writerows(rows)
  elif file_format == "json":
    with open(path, "w", encoding="utf-8") as f:
      json.dump(rows, f, ensure_ascii=False, indent=2)
      f.write("\n")
  else:
    with open(path, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _check_out(data: str, out: str) -> None:
  if not out:
    raise UserError("--out is not set; name the noisy copy's file")
  if os.path.abspath(out) == os.path.abspath(data):
    raise UserError(f"--out={out} is the input file; name another file for the noisy copy")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise UserError(f"--out={out}: the folder {folder} does not exist; create it first")


def corrupt_file(data: str, out: str, *, apply_manifest: str = "",
                 **noise_args) -> noise.Realized | None:
  """Writes OUT (and its manifest, unless a manifest is applied); every check comes first."""
  _check_out(data, out)
  rows, file_format, features = read_rows(data)
  if apply_manifest:
    noisy = noise.apply_manifest(rows, noise.read_manifest(apply_manifest))
    manifest, realized = None, None
  else:
    noisy, manifest, realized = noise.corrupt(rows, **noise_args)
  written = []
  try:  # each file whole or not at all
    _write_rows(out + ".tmp", noisy, file_format, features)
    written.append(out + ".tmp")
    if manifest is not None:
      noise.write_manifest(manifest_path(out) + ".tmp", manifest)
      written.append(manifest_path(out) + ".tmp")
    for temporary in written:
      os.replace(temporary, temporary[:-len(".tmp")])
  finally:
    for temporary in written:
      if os.path.exists(temporary):
        os.remove(temporary)
  return realized


def main(FLAGS) -> None:
  if FLAGS.apply_manifest:
    corrupt_file(FLAGS.data, FLAGS.out, apply_manifest=FLAGS.apply_manifest)
    print(f"wrote {FLAGS.out}: {FLAGS.data} with {FLAGS.apply_manifest} applied")
    return
  if not FLAGS.kind:
    raise UserError("--kind is not set; choose label, typo or grammar (or --apply_manifest)")
  if FLAGS.rate is None:
    raise UserError("--rate is not set; give the fraction to corrupt, e.g. --rate=0.1")
  realized = corrupt_file(
      FLAGS.data, FLAGS.out, kind=FLAGS.kind, rate=FLAGS.rate, seed=FLAGS.seed,
      fields=tuple(FLAGS.fields), labels=tuple(FLAGS.labels), label_noise=FLAGS.label_noise,
      typo_ops=tuple(FLAGS.typo_ops), grammar_ops=tuple(FLAGS.grammar_ops))
  print(f"wrote {FLAGS.out} ({FLAGS.kind} noise, rate {FLAGS.rate}, seed {FLAGS.seed}): "
        f"{realized.summary()}; manifest {manifest_path(FLAGS.out)}")


if __name__ == "__main__":
  cli.run(main, define_flags)
