"""``filterlens stats``: the paper's robustness statistics over a dataset, as tables, figures and a report."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cli.defaults import defaults_of
from pipeline.stats.options import StatsOptions

log = logging.getLogger(__name__)

HELP = """\
Compute the robustness statistics of Gavrikov & Keuper (CVPR-W 2022) over a filter
dataset (or a selection of it) and write REPORT_DIR/report.md, report.html (figures
embedded), figures/*.png and every table as tables/*.parquet and tables/*.csv.

  headline          per dataset and metric: direction, Cliff's delta and mean difference with
                    bootstrap intervals, significant buckets, verdict (the report's first table)
  depth profile     sparsity, variance entropy, orthogonality per model and depth bucket
                    (first conv alone, deciles of conv_depth_norm); robust vs normal per dataset
  pairing           robust models with normal models of the same architecture and dataset, and
                    of the same seed where the models record one, as the demo pairs (or --pairs
                    CSV with columns Robust, Normal[, Arch, Dataset], or --pairs paper: the
                    paper's pairings, shipped with filterlens); unpaired listed
  PCA basis         from the per-layer sufficient statistics; all / robust / normal
  distribution shift  symmetric KL of 70-bin coefficient histograms, weighted by explained variance,
                    per dataset, overall and per bucket (two parallel scans of the filters)
  correlations      each metric vs clean / robust accuracy across robust models
  galleries         first-layer filters of paired models (or --gallery MODEL_ID ...)

Pools: robust = adversarially trained (threat models Linf, L2); normal = the rest.
Corruption-robust models (threat_model corruptions) are in neither pool unless
--include-corruptions or --threat-models corruptions brings them into the robust one.

Examples:
  filterlens stats ds/ --out report/
  filterlens stats ds/ --out report/ --datasets cifar10 cifar100 --threat-models Linf
  filterlens stats ds/ --out report/ --where "extra_data IS NOT TRUE" --pairs pairings.csv
  filterlens stats ds/ --out report/ --datasets cifar10 --pairs paper
"""


STATS = defaults_of(StatsOptions)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stats", help="robustness statistics and report (the paper's analyses)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset root (directory or URI)")
    p.add_argument("--out", "-o", required=True, metavar="REPORT_DIR", help="where the report and tables go")
    p.add_argument("--where", help="SQL predicate on the models table, e.g. \"architecture LIKE 'WideResNet%%'\"")
    p.add_argument("--datasets", "--dataset", nargs="+", action="extend", default=[], metavar="D",
                   help="training datasets to keep (repeatable; same flags as build)")
    p.add_argument("--threat-models", "--threat-model", nargs="+", action="extend", default=[], metavar="T",
                   help="threat models of the robust models to keep: Linf, L2, corruptions (normal models are "
                        "kept; drop them with --where)")
    p.add_argument("--include-corruptions", action="store_true", default=STATS.include_corruptions,
                   help="pool corruption-robust models (threat_model corruptions) with the robust ones "
                        "(default: left out of both pools)")
    p.add_argument("--pairs", metavar="CSV|paper",
                   help="robust/normal pairs (columns Robust, Normal[, Arch, Dataset]) instead of pairing by "
                        "architecture, dataset and seed; 'paper': the paper's 71 pairings, shipped with filterlens")
    p.add_argument("--kl-groups", choices=("pairs", "all"), default=STATS.kl_groups,
                   help="distribution shift between the paired models, each counted once per pair (the paper, "
                        "default), or between all robust and all normal models")
    p.add_argument("--coef-range", nargs=2, type=float, metavar=("LO", "HI"),
                   help="histogram range of the coefficients (skips the range pass; default: min/max of the data)")
    p.add_argument("--gallery", nargs="+", default=[], metavar="MODEL_ID",
                   help="models whose first-layer filters to show (default: the first pairs of each dataset)")
    p.add_argument("--gallery-pairs", type=int, default=STATS.gallery_pairs,
                   help=f"pairs per dataset in the default gallery (default {STATS.gallery_pairs})")
    p.add_argument("--alpha", type=float, default=STATS.alpha, help=f"significance level (default {STATS.alpha:g})")
    p.add_argument("--min-models", type=int, default=STATS.min_models,
                   help=f"models needed on each side to test a difference (default {STATS.min_models})")
    p.add_argument("--permutations", type=int, default=STATS.permutations,
                   help=f"label permutations for the divergence test (0: none; default {STATS.permutations})")
    p.add_argument("--threads", type=int, help="threads for DuckDB and the filter scans (default: all cores)")
    p.add_argument("--engine", choices=("auto", "numba", "duckdb"), default=STATS.engine,
                   help="filter scans as a compiled kernel (numba, the default when installed) or as DuckDB SQL "
                        "(sql/coefficient_*.sql; same numbers, several times slower)")
    p.add_argument("--no-figures", action="store_true", help="tables and report text only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.stats.run import run_stats, summary_text

    options = StatsOptions(where=args.where, datasets=args.datasets, threat_models=args.threat_models,
                           include_corruptions=args.include_corruptions, pairs_csv=args.pairs, kl_groups=args.kl_groups,
                           coef_range=tuple(args.coef_range) if args.coef_range else None, gallery=args.gallery,
                           gallery_pairs=args.gallery_pairs, alpha=args.alpha, min_models=args.min_models,
                           permutations=args.permutations, threads=args.threads, figures=not args.no_figures,
                           engine=args.engine)
    result = run_stats(args.dataset, args.out, options)
    for note in result.notes:
        log.warning("%s", note)
    sys.stdout.write(summary_text(result, args.out))
    return 0
