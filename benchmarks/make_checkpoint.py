"""Write a randomly initialised checkpoint of any architecture spec, in a zoo-style wrapper.

Used by ``make demo`` and the benchmarks (real checkpoints need the internet).
Example: python benchmarks/make_checkpoint.py --arch robustbench:cifar10:Linf:Carmon2019Unlabeled \
             --wrap state_dict --prefix module. --out wrn28.pt
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.architectures import instantiate


def make_checkpoint(arch: str, out: str, wrap: str = "none", prefix: str = "", seed: int = 0) -> Path:
    """Instantiate ``arch`` with seeded random weights and save its state dict under ``wrap``."""
    torch.manual_seed(seed)
    model = instantiate(parse_arch_spec(arch))
    state = {prefix + k: v for k, v in model.state_dict().items()}
    obj = state if wrap == "none" else {wrap: state, "epoch": 1}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wrap", default="none", help="key to nest the state dict under (state_dict, last, ...)")
    parser.add_argument("--prefix", default="", help="prefix for every key, e.g. module.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if Path(args.out).exists():
        print(f"{args.out} exists; reusing it")
        return
    print(make_checkpoint(args.arch, args.out, args.wrap, args.prefix, args.seed))


if __name__ == "__main__":
    main()
