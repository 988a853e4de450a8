"""One flag convention everywhere: build, zoo list and stats accept --dataset/--datasets and --threat-model(s)."""

from __future__ import annotations

import pytest

from pipeline.cli.main import build_parser


@pytest.mark.parametrize("command", [["build", "zoo.yaml", "--out", "ds"], ["zoo", "list", "robustbench"],
                                     ["stats", "ds", "--out", "report"]])
def test_dataset_and_threat_model_flags_in_both_spellings(command: list[str]) -> None:
    parser = build_parser()
    repeated = parser.parse_args([*command, "--dataset", "cifar10", "--dataset", "cifar100", "--threat-model", "L2"])
    listed = parser.parse_args([*command, "--datasets", "cifar10", "cifar100", "--threat-models", "L2"])
    assert (repeated.datasets, repeated.threat_models) == (listed.datasets, listed.threat_models) == (
        ["cifar10", "cifar100"], ["L2"])


def test_exit_codes_in_the_top_level_help_are_complete() -> None:
    text = build_parser().format_help()
    for code in ("0 ok", "2 usage/config", "3 a model failed", "4 dataset/storage", "5 query", "6 statistics",
                 "130 interrupted"):
        assert code in text


def test_third_party_deprecation_notices_are_hidden_unless_verbose() -> None:
    import warnings

    from pipeline.cli.main import setup_logging

    for verbose, shown in ((0, 0), (1, 2)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setup_logging(verbose, quiet=False)
            warnings.warn("old API", FutureWarning, stacklevel=1)
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
        assert len(caught) == shown
