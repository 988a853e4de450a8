"""``filterlens demo``: the whole pipeline offline - train a small zoo, build its dataset, run the statistics."""

from __future__ import annotations

import argparse
import sys

from pipeline.demo import ABOUT, DemoConfig, directions_text, run_demo
from pipeline.errors import ConfigError
from pipeline.train.config import DEMO_ARCHS

HELP = """\
Train a small zoo of CNNs on a procedurally generated image dataset (no
download), build its filter dataset through the same build path real zoos use,
run `filterlens stats`, and report whether the paper's directions (robust
models: less sparse, more diverse, more orthogonal filters) show up.

Small models and synthetic data: this shows the pipeline end to end in a few
minutes on a laptop; it does not reproduce the paper's numbers. Rerunning
reuses the trained checkpoints and the dataset (seconds); --force redoes all.

output (under --out): zoo/zoo.yaml, zoo/checkpoints/, dataset/, report/, directions.csv
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train a small zoo offline, build its dataset, run the stats",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoConfig()
    p.add_argument("--out", default=defaults.out, help=f"output folder (default {defaults.out}/)")
    p.add_argument("--archs", default=",".join(DEMO_ARCHS),
                   help=f"comma-separated demo architectures (default {','.join(DEMO_ARCHS)})")
    p.add_argument("--seeds", type=int, default=len(defaults.seeds),
                   help=f"seeds per architecture and training kind (default {len(defaults.seeds)})")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"training epochs (default {defaults.epochs})")
    p.add_argument("--n-train", type=int, default=defaults.n_train,
                   help=f"synthetic training images (default {defaults.n_train})")
    p.add_argument("--n-test", type=int, default=defaults.n_test,
                   help=f"held-out images for clean accuracy (default {defaults.n_test})")
    p.add_argument("--n-eval-robust", type=int, default=defaults.n_eval_robust,
                   help=f"held-out images attacked for robust accuracy (default {defaults.n_eval_robust})")
    p.add_argument("--eps", type=float, default=defaults.eps, help="Linf budget for training and evaluation "
                   "(default 8/255)")
    p.add_argument("--attack-steps", type=int, default=defaults.attack_steps,
                   help=f"PGD steps in adversarial training (default {defaults.attack_steps}, step 2.5*eps/steps)")
    p.add_argument("--eval-steps", type=int, default=defaults.eval_steps,
                   help=f"PGD steps of the evaluation attack (default {defaults.eval_steps})")
    p.add_argument("--backend", choices=("ray", "local"), default="ray",
                   help="ray (default: a private local Ray instance, one task per model) or local (in-process)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (extraction; training uses a GPU when Ray has one)")
    p.add_argument("--probe-images", type=int, default=defaults.probe_images,
                   help=f"synthetic images for the first-stage probe of every model (default {defaults.probe_images}; "
                        "0: no probe)")
    p.add_argument("--no-stats", action="store_true", help="skip filterlens stats (dataset and directions only)")
    p.add_argument("--force", action="store_true", help="retrain and re-extract everything")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    from pipeline.train.demo_models import ARCHITECTURES  # torch: only when the command runs

    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        raise ConfigError(f"unknown demo architecture(s) {', '.join(unknown)}; choose from {', '.join(DEMO_ARCHS)}")
    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if args.attack_steps < 1:
        raise ConfigError("--attack-steps must be >= 1")
    return DemoConfig(out=args.out, archs=archs, seeds=tuple(range(args.seeds)), epochs=args.epochs,
                      n_train=args.n_train, n_test=args.n_test, n_eval_robust=args.n_eval_robust, eps=args.eps,
                      attack_steps=args.attack_steps, eval_steps=args.eval_steps, backend=args.backend,
                      device=args.device, force=args.force, progress=not args.no_progress, stats=not args.no_stats,
                      probe_images=args.probe_images)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = sys.stdout
    out.write(ABOUT.format(n=len(config.plan()), archs=", ".join(config.archs), eps=config.eps,
                           seeds=len(config.seeds)) + "\n")
    out.flush()
    result = run_demo(config)
    zoo = result.zoo
    out.write(f"\nzoo: {zoo.zoo_path} ({len(zoo.trained)} trained, {len(zoo.reused)} reused, "
              f"{result.seconds['train']:.1f}s)\n")
    width = max([len(e["id"]) for e in zoo.entries] + [5])
    out.write(f"{'model':<{width}} {'clean %':>8} {'PGD %':>8}\n")
    for entry in zoo.entries:
        out.write(f"{entry['id']:<{width}} {entry['clean_acc']:>8.1f} {entry['robust_acc']:>8.1f}\n")
    out.write(f"\ndataset: {config.dataset_path} ({result.build_text.splitlines()[0]})\n")
    out.write("\nthe paper's directions, robust vs normal, paired by architecture and seed "
              "(sparsity lower, variance entropy higher, orthogonality higher):\n")
    out.write(directions_text(result.directions) + "\n")
    out.write(f"(also in {config.out}/directions.csv; 'pairs agreeing' counts pairs, it is not a significance "
              "test: the stats report below tests the differences)\n")
    if result.report:
        if result.stats_text.strip():
            out.write("\nfilterlens stats:\n" + result.stats_text.rstrip() + "\n")
        out.write(f"\nreport: {result.report}/report.md and {result.report}/report.html\n")
    else:
        out.write("\nno statistics report (filterlens stats skipped or not installed)\n")
    out.write(f"query it: filterlens sql {config.dataset_path} \"SELECT model_id, robust, clean_acc, robust_acc "
              f"FROM models\"\n")
    s = result.seconds
    out.write(f"done in {s['total']:.1f}s (training {s['train']:.1f}s, build {s['build']:.1f}s, "
              f"stats {s['stats']:.1f}s)\n")
    return 0
