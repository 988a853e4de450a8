"""``filterlens info``: what a dataset holds - models, layers, filters, bytes, failures."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="summarise a dataset: models, layers, filters, bytes, failures",
                              description="Summarise a filter dataset (local path or URI).")
    p.add_argument("dataset", help="dataset root (directory or URI)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def summarise(root: str) -> dict:
    """Counts, sizes and failures of a dataset, as a plain dict."""

    from pipeline.dataset.query import open_dataset
    from pipeline.dataset.schema import TABLES

    with open_dataset(root) as ds:
        count = ds.con.execute
        summary = {
            "root": root,
            "manifest": ds.store.read_manifest(),
            "models": count("SELECT count(*) FROM models").fetchone()[0],
            "robust_models": count("SELECT count(*) FROM models WHERE robust").fetchone()[0],
            "layers": count("SELECT count(*) FROM layers").fetchone()[0],
            "filters": count("SELECT coalesce(sum(n_filters), 0) FROM models").fetchone()[0],
            "probed_models": count("SELECT count(*) FROM models WHERE probe_write_id IS NOT NULL").fetchone()[0],
            "by_dataset": [dict(zip(("dataset", "threat_model", "robust", "models", "filters"), r, strict=True))
                           for r in count("SELECT dataset, threat_model, robust, count(*), sum(n_filters) FROM models "
                                          "GROUP BY ALL ORDER BY ALL").fetchall()],
            "failures": [dict(zip(("model_id", "stage", "error_class", "message"), r, strict=True))
                         for r in count("SELECT model_id, stage, error_class, message FROM failures "
                                        "ORDER BY model_id").fetchall()],
        }
        sizes = {}
        for table in TABLES:
            files = ds.files(table)
            infos = ds.store.fs.get_file_info(files) if files else []
            sizes[table] = sum(i.size or 0 for i in infos)
        summary["bytes"] = sizes
        summary["orphan_files"] = len(ds.store.orphan_files())
        summary["incomplete_models"] = ds.snapshot.missing
    return summary


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> int:
    summary = summarise(args.dataset)
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        print()
        return 0
    manifest = summary["manifest"]
    print(f"dataset   {summary['root']}")
    if manifest:
        print(f"version   {manifest.get('dataset_version')} (schema {manifest.get('schema_version')}, "
              f"written by filterlens {manifest.get('pipeline_version')}, updated {manifest.get('updated_at')})")
    print(f"models    {summary['models']} ({summary['robust_models']} robust)")
    print(f"layers    {summary['layers']}")
    print(f"filters   {summary['filters']}")
    if summary["probed_models"]:
        print(f"probes    {summary['probed_models']} models probed (filterlens probe; the probes table)")
    print("bytes     " + ", ".join(f"{t} {_human(b)}" for t, b in summary["bytes"].items()))
    if summary["by_dataset"]:
        print("\n  dataset        threat_model  robust  models     filters")
        for row in summary["by_dataset"]:
            print(f"  {row['dataset']:<14} {row['threat_model']:<13} {str(row['robust']):<7} {row['models']:>6} "
                  f"{row['filters']:>11}")
    if summary["orphan_files"]:
        print(f"\n{summary['orphan_files']} unreferenced files (replaced versions, interrupted writes; not visible "
              "in queries; `filterlens vacuum` removes them once older than its retention)")
    if summary["failures"]:
        print(f"\nfailures  {len(summary['failures'])}")
        for f in summary["failures"]:
            print(f"  {f['model_id']}: [{f['stage']}] {f['error_class']}: {f['message']}")
    return 0
