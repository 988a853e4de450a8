"""``filterlens train``: train normal and/or PGD-Linf adversarial models as Ray tasks into a zoo file."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pipeline.errors import ConfigError
from pipeline.train.config import TrainConfig

HELP = """\
Train models (one Ray task per model; a GPU per task when the cluster has GPUs)
and write each as a checkpoint plus an entry of the zoo file --zoo, in the
format `filterlens build` reads. Clean accuracy and PGD-Linf robust accuracy
are measured on the held-out split and recorded. Models whose entry and
training configuration are unchanged are reused, not retrained.

Training data: `synthetic` (generated, no download) or cifar10/cifar100 from
--data-root (torchvision's layout, e.g. DIR/cifar-10-batches-py/; never downloaded).
Architectures: any --arch spec: pipeline.train.demo_models:<factory>, timm:<name>,
torchvision:<name>, robustbench:<dataset>:<threat_model>:<name> (to train the
normal counterpart of a RobustBench architecture), or your module:factory.

examples:
  filterlens train --arch pipeline.train.demo_models:small_resnet --kind both --seeds 2 --zoo zoo/zoo.yaml
  filterlens train --arch robustbench:cifar10:Linf:Carmon2019Unlabeled --kind normal \\
      --dataset cifar10 --data-root ~/data --epochs 100 --zoo counterparts/zoo.yaml --address auto
"""


def add_training_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(arch="pipeline.train.demo_models:small_vgg")
    p.add_argument("--arch", action="append", required=True, help="architecture spec (repeatable)")
    p.add_argument("--zoo", required=True, help="zoo YAML to write (checkpoints go to checkpoints/ beside it)")
    p.add_argument("--name", default=None, help="zoo name (default: the existing one, else the id prefix)")
    p.add_argument("--kind", choices=("normal", "adversarial", "both"), default="both",
                   help="normal training, PGD-Linf adversarial training, or both (default)")
    p.add_argument("--dataset", default=d.dataset, help="synthetic (default), cifar10 or cifar100")
    p.add_argument("--data-root", help="folder with CIFAR in torchvision's layout")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per architecture and kind (default 1)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate of the one-cycle schedule (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay}")
    p.add_argument("--eps", type=float, default=d.eps, help="Linf budget, training and evaluation (default 8/255)")
    p.add_argument("--attack-steps", type=int, default=d.attack_steps,
                   help=f"PGD steps in adversarial training (default {d.attack_steps})")
    p.add_argument("--step-size", type=float, default=d.step_size, help="PGD step size in training (default 2/255)")
    p.add_argument("--eval-steps", type=int, default=d.eval_steps,
                   help=f"PGD steps of the evaluation attack (default {d.eval_steps}; step 2.5*eps/steps)")
    p.add_argument("--n-eval-robust", type=int, default=d.n_eval_robust,
                   help=f"held-out images attacked for robust accuracy (default {d.n_eval_robust})")
    p.add_argument("--n-train", type=int, help="training images (synthetic default 5000; CIFAR: all)")
    p.add_argument("--n-test", type=int, help="held-out images (synthetic default 1000; CIFAR: all)")
    p.add_argument("--id-prefix", default=d.id_prefix, help=f"first part of every model id (default {d.id_prefix})")
    p.add_argument("--backend", choices=("ray", "local"), default="ray", help="ray (default) or local (in-process)")
    p.add_argument("--address", default="local",
                   help="Ray address: local (a private instance, default), auto (the cluster of a Ray job), ray://...")
    p.add_argument("--force", action="store_true", help="retrain even when an unchanged entry exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train normal/adversarial models into a zoo file (Ray)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    p.set_defaults(func=run)


def plan_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    base = TrainConfig(arch=args.arch[0], dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, eps=args.eps,
                       attack_steps=args.attack_steps, step_size=args.step_size, eval_steps=args.eval_steps,
                       n_eval_robust=args.n_eval_robust, n_train=args.n_train, n_test=args.n_test,
                       id_prefix=args.id_prefix)
    kinds = {"normal": (False,), "adversarial": (True,), "both": (False, True)}[args.kind]
    from pipeline.train.config import zoo_plan

    plan = zoo_plan(args.arch, list(range(args.seeds)), base, kinds)
    return [dataclasses.replace(c) for c in plan]  # re-validates every arch spec


def run(args: argparse.Namespace) -> int:
    from pipeline.train.train_zoo import train_zoo
    from pipeline.train.zoo_writer import read_zoo

    plan = plan_from_args(args)
    name = args.name or read_zoo(args.zoo).get("name") or args.id_prefix
    summary = train_zoo(plan, args.zoo, name=name, backend=args.backend, ray_address=args.address,
                        force=args.force, progress=not args.no_progress)
    out = sys.stdout
    out.write(f"{summary.zoo_path}: {len(summary.trained)} trained, {len(summary.reused)} reused "
              f"in {summary.seconds:.1f}s ({summary.backend})\n")
    for entry in summary.entries:
        out.write(f"  {entry['id']:<56} clean {entry['clean_acc']:5.1f}%  PGD {entry['robust_acc']:5.1f}%\n")
    out.write(f"build its dataset: filterlens build {summary.zoo_path} --out DATASET\n")
    return 0
