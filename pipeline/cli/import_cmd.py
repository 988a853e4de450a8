"""``filterlens import onnxzoo2filterdb``: a published filter database (the paper's release, CNN-Filter-DB)."""

from __future__ import annotations

import argparse
import json
import sys

FORMATS = ("onnxzoo2filterdb",)
METADATA_SOURCES = ("auto", "h5", "csv")

HELP = """\
Import a filter database published in the onnxzoo2filterdb layout (Gavrikov & Keuper's
release of the paper's 117 models, CNN-Filter-DB's 647) into the dataset at --out.
PATH is the release folder (dataset.h5 beside filterinfo.csv, datastorage.meta.csv,
meta.csv) or its dataset.h5 alone (metadata from its 'meta' key).

Every model becomes a models row (model_id = the release's model name), every 3x3
layer a layers row with filterlens's own metrics (depth_source = onnxzoo2filterdb, the
release's conv_depth_norm kept), every filter a filters row; each model is committed
on its own, so an interrupted import resumes where it stopped. A rerun skips models
imported from the same source digest; --force imports them again. A model that fails
validation gets a row in failures/ and the others go on (exit code 3).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="import a published filter database (onnxzoo2filterdb layout)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=FORMATS, help="layout of the release: onnxzoo2filterdb")
    p.add_argument("path", help="release folder, or its dataset.h5")
    p.add_argument("--out", required=True, help="dataset root: a directory or URI (s3://bucket/path, ...)")
    p.add_argument("--models", nargs="+", metavar="NAME", help="only these models (release names or shell patterns)")
    p.add_argument("--where", help="SQL predicate on model_id, dataset, threat_model, robust, architecture, "
                                   "clean_acc, robust_acc, eps, extra_data, paper, venue, n_filters, n_conv3x3_layers")
    p.add_argument("--metadata", choices=METADATA_SOURCES, default="auto",
                   help="model and layer tables from dataset.h5's 'meta' key (h5), the CSVs (csv), or the key when "
                        "there is one (auto, default)")
    p.add_argument("--robust-threat-model", choices=("Linf", "L2"), default="Linf",
                   help="threat model of robust models whose name does not say (default Linf: the paper's release)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="import again models already imported from the same source")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.dataset.layout import utcnow
    from pipeline.dataset.store import DatasetStore
    from pipeline.filterdb.importer import import_release

    store = DatasetStore(args.out)
    summary = import_release(args.path, store, models=args.models, where=args.where, device=args.device,
                             force=args.force, progress=not args.quiet, metadata=args.metadata,
                             robust_threat_model=args.robust_threat_model)
    if summary.imported or summary.failed:
        store.update_manifest({"command": "import", "format": args.format, "release": args.path,
                               "imported": len(summary.imported), "skipped": len(summary.skipped),
                               "failed": len(summary.failed), "seconds": round(summary.seconds, 3),
                               "finished_at": utcnow().isoformat()})
    if args.json:
        json.dump({"imported": summary.imported, "skipped": summary.skipped,
                   "failed": [{k: f[k] for k in ("model_id", "error_class", "message")} for f in summary.failed],
                   "n_filters": summary.n_filters, "seconds": round(summary.seconds, 3)}, sys.stdout)
        print()
    else:
        print(f"{args.path}: {len(summary.imported)} models imported ({summary.n_filters} filters, "
              f"{summary.filters_per_s:,.0f} filters/s), {len(summary.skipped)} already there, "
              f"{len(summary.failed)} failed -> {args.out} ({summary.seconds:.1f}s)")
        for failure in summary.failed:
            print(f"  failed {failure['model_id']}: {failure['error_class']}: {failure['message']}")
    return 3 if summary.failed else 0
