"""The ``--probe*`` options that ``probe`` and ``build`` share, and the ProbeConfig they make."""

from __future__ import annotations

import argparse

from pipeline.cli.defaults import defaults_of
from pipeline.probe.config import ProbeConfig, parse_kinds

PROBE = defaults_of(ProbeConfig)


def add_probe_options(p: argparse.ArgumentParser, flag: bool) -> None:
    """The --probe* options (``flag``: ``--probe [KINDS]`` switches the probe on, as in ``build``)."""
    if flag:
        p.add_argument("--probe", nargs="?", const="all", metavar="KINDS",
                       help="also probe every model's first stage: pgd,random,transfer (default all)")
    else:
        p.add_argument("--probe", default="all", metavar="KINDS",
                       help="perturbations: pgd,random,transfer or all (default all)")
    p.add_argument("--probe-data", default=PROBE.data, metavar="SPEC",
                   help="synthetic, cifar10:DIR, cifar100:DIR (torchvision layout) or imagenet:DIR (ImageFolder of "
                        f"validation images); never downloaded (default {PROBE.data})")
    p.add_argument("--probe-images", type=int, default=PROBE.n_images, metavar="N",
                   help=f"probe images (default {PROBE.n_images})")
    p.add_argument("--probe-eps", type=_fraction, default=PROBE.eps, metavar="EPS",
                   help="L-infinity radius on [0, 1] images, e.g. 8/255 (default 8/255)")
    p.add_argument("--probe-steps", type=int, default=PROBE.pgd_steps, metavar="N",
                   help=f"PGD steps (default {PROBE.pgd_steps})")
    p.add_argument("--probe-step-size", type=_fraction, metavar="S", help="PGD step size (default 2.5 eps / steps)")
    p.add_argument("--probe-seed", type=int, default=PROBE.seed, help=f"seed (default {PROBE.seed})")
    p.add_argument("--probe-batch", type=int, default=PROBE.batch_size, metavar="N",
                   help=f"images per forward pass (default {PROBE.batch_size})")
    p.add_argument("--probe-reference", metavar="MODEL_ID",
                   help="model the transfer perturbations are computed on (default: the zoo's first entry with "
                        "an architecture)")


def _fraction(text: str) -> float:
    try:
        if "/" in text:
            num, _, den = text.partition("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or fraction such as 8/255") from None


def probe_config_of(args: argparse.Namespace) -> ProbeConfig | None:
    """The ProbeConfig the options ask for (None when ``--probe`` was not given)."""
    if args.probe is None:
        return None
    return ProbeConfig(data=args.probe_data, n_images=args.probe_images, eps=args.probe_eps,
                       kinds=parse_kinds(args.probe), pgd_steps=args.probe_steps, pgd_step_size=args.probe_step_size,
                       seed=args.probe_seed, batch_size=args.probe_batch, reference=args.probe_reference)


def check_probe_data(config: ProbeConfig) -> None:
    """Read the probe data once before anything runs: a missing folder is a usage error (exit 2), not N failures."""
    from pipeline.probe.data import load_probe_images

    load_probe_images(config)
