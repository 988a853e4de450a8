"""The ``filterlens`` command line: one subcommand per module of ``pipeline.cli`` (``COMMANDS``).

Command modules import only argparse and light configuration at the top, so
``--help``, ``sql``, ``info`` and ``zoo list`` start without torch, Ray or robustbench;
the heavy modules are imported inside each ``run``.

Exit codes: 0 success; 1 internal error; 2 bad usage or configuration;
3 a model failed (bad checkpoint, download, architecture); 4 dataset or storage
error; 5 query error; 6 statistics error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import FilterlensError

EXIT_OK, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 130

COMMANDS = ("build", "demo", "extract", "import_cmd", "info", "probe", "publish", "sql", "stats", "train", "vacuum", "zoo")
"""Subcommand modules, in the order ``--help`` lists them."""
MODULE_OF_COMMAND = {"import": "import_cmd"}
"""Commands whose module is named otherwise (``import`` is a Python keyword)."""

EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "timm", "onnx", "safetensors", "robustbench", "autoattack",
                     "requests"), "build"),
    **dict.fromkeys(("scipy", "matplotlib", "numba"), "stats"),
    "ray": "build", "s3fs": "s3", "datasets": "hub", "h5py": "import", "tables": "import",
}
"""Optional modules and the pyproject extra that installs each (README, "Install")."""
EXIT_MISSING_EXTRA = 2

EPILOG = """\
examples:
  filterlens extract model.pt --out dataset/ --arch robustbench:cifar10:Linf:Carmon2019Unlabeled \\
      --dataset cifar10 --threat-model Linf --robust
  filterlens info dataset/
  filterlens sql dataset/ "SELECT model_id, avg(sparsity) FROM layers GROUP BY 1"

exit codes: 0 ok, 1 internal error, 2 usage/config, 3 a model failed, 4 dataset/storage, 5 query,
            6 statistics, 130 interrupted
"""


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    """The parser with ``commands`` (all by default; one when the command line names it: faster start-up)."""
    parser = argparse.ArgumentParser(
        prog="filterlens",
        description="Turn CNN checkpoints into a queryable dataset of 3x3 convolution filters "
                    "and the robustness statistics of Gavrikov & Keuper (CVPR-W 2022).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"filterlens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log output on stderr (default: info)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        importlib.import_module(f"pipeline.cli.{name}").register(subparsers)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # third-party deprecation notices are not the user's business (-v shows them)
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    logging.basicConfig(level=level, stream=sys.stderr, format="filterlens %(levelname)s: %(message)s", force=True)
    for noisy in ("urllib3", "filelock", "fsspec", "matplotlib", "PIL", "httpx", "httpx2", "huggingface_hub", "numexpr"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in argv if not a.startswith("-")), None)
    named = MODULE_OF_COMMAND.get(named, named)
    parser = build_parser([named] if named in COMMANDS else COMMANDS)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for commands that forward it (build --address http://...)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or EXIT_OK)
    except FilterlensError as exc:
        print(f"filterlens: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"filterlens: error: `filterlens {args.command}` needs {exc.name}, which is not installed: "
              f"pip install 'filterlens[{extra}]'", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except KeyboardInterrupt:
        print("filterlens: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
