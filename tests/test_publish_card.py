"""The dataset card: YAML header (licence, size category, configs), schema tables, snippets, citations."""

from __future__ import annotations

import re

import pytest
import yaml

from pipeline.dataset.schema import table_schema
from pipeline.publish.card import CardInputs, card_metadata, render_card, size_category
from pipeline.publish.licenses import model_license, model_source


def model(model_id: str, **extra: object) -> dict:
    return {"model_id": model_id, "dataset": "cifar10", "threat_model": "Linf", "robust": True, "n_filters": 10,
            "depth_source": "forward", "pipeline_version": "0.1.0", **extra}


def inputs(models: list[dict], **overrides: object) -> CardInputs:
    values = {"repo_id": "lab/filters", "models": models,
              "rows": {"models": len(models), "layers": 40, "filters": 12_345},
              "files": {"models": 1, "layers": len(models), "filters": len(models)},
              "bytes": {"models": 2_000, "layers": 30_000, "filters": 1_500_000},
              "manifest": {"dataset_version": 4, "schema_version": 1, "created_at": "2026-01-01",
                           "updated_at": "2026-02-01", "builds": [{"finished_at": "2026-02-01T10:00"}]},
              "snapshot": "ab" * 32, "pipeline_version": "0.1.0"}
    return CardInputs(**{**values, **overrides})


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize(("rows", "label"), [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"),
                                             (12_345, "10K<n<100K"), (999_999_999, "100M<n<1B"),
                                             (10**9, "1B<n<10B"), (10**12, "n>1T")])
def test_size_category_follows_the_hubs_buckets(rows: int, label: str) -> None:
    assert size_category(rows) == label


@pytest.mark.parametrize(("row", "license_id"), [
    (model("robustbench/cifar10/Linf/Carmon2019Unlabeled"), "mit"),
    (model("robustbench/cifar10/Linf/Ding2020MMA"), "cc-by-nc-sa-4.0"),
    (model("robustbench/cifar10/L2/Rony2019Decoupling"), "bsd-3-clause"),
    (model("robustbench/cifar10/Linf/Rony2019Decoupling"), "mit"),  # the exception is for L2 only
    (model("robustbench/cifar100/Linf/Gowal2020Uncovering_extra"), "apache-2.0"),  # a prefix covers variants
    (model("robustbench/imagenet/Linf/Gowal2021Improving_x"), "mit"),  # exception is CIFAR only
    (model("my/model", arch_spec="robustbench:cifar10:Linf:Hendrycks2019Using"), "apache-2.0"),
    (model("tv/resnet50", arch_spec="torchvision:resnet50"), "unknown"),
    (model("own/net", source_uri="/data/net.pt"), "unknown"),
])
def test_model_licences_follow_robustbench_and_are_unknown_elsewhere(row: dict, license_id: str) -> None:
    assert model_license(row)[0] == license_id


def test_sources_are_recognised() -> None:
    assert model_source(model("robustbench/cifar10/Linf/X")) == "robustbench"
    assert model_source(model("a", source_uri="https://download.pytorch.org/models/resnet50.pth")) == "torchvision"
    assert model_source(model("a", arch_spec="timm:resnet18")) == "timm"
    assert model_source(model("a", source_uri="s3://lab/a.pt")) == "other"


def test_yaml_header_licence_size_and_configs() -> None:
    mit = [model("robustbench/cifar10/Linf/Carmon2019Unlabeled"), model("robustbench/cifar10/Linf/Wong2020Fast")]
    meta = card_metadata(inputs(mit))
    assert meta["license"] == "mit" and "license_name" not in meta
    assert meta["size_categories"] == ["10K<n<100K"]  # from the largest table (filters: 12,345 rows)
    assert meta["configs"] == [
        {"config_name": "models", "data_files": [{"split": "train", "path": "models/*.parquet"}], "default": True},
        {"config_name": "layers", "data_files": [{"split": "train", "path": "layers/**/*.parquet"}]},
        {"config_name": "filters", "data_files": [{"split": "train", "path": "filters/**/*.parquet"}]},
    ]
    mixed = card_metadata(inputs([*mit, model("robustbench/cifar10/Linf/Ding2020MMA")]))
    assert (mixed["license"], mixed["license_name"]) == ("other", "per-model-licenses")
    unknown = card_metadata(inputs([model("own/net")]))
    assert unknown["license"] == "other"
    declared = card_metadata(inputs([model("own/net")], license="cc-by-4.0"))
    assert declared["license"] == "cc-by-4.0" and "license_name" not in declared


def test_card_documents_every_column_usage_licences_and_citations() -> None:
    rows = [model("robustbench/cifar10/Linf/Ding2020MMA"), model("own/net", robust=False, threat_model="none")]
    card = render_card(inputs(rows))
    assert render_card(inputs(rows)) == card  # deterministic: republishing unchanged data re-sends nothing
    assert front_matter(card)["pretty_name"].startswith("filterlens")
    for table in ("models", "layers", "filters"):
        for column in table_schema(table).columns:
            assert re.search(rf"^\| `{column.name}` \| ", card, re.MULTILINE), (table, column.name)
    assert "max\\|f\\|" in card  # pipes in descriptions are escaped inside tables
    assert 'load_dataset("lab/filters", "layers", split="train")' in card
    assert "read_parquet('hf://datasets/lab/filters/layers/**/*.parquet', hive_partitioning = false)" in card
    assert 'pl.scan_parquet("hf://datasets/lab/filters/layers/**/*.parquet", hive_partitioning=False)' in card
    assert "filterlens sql hf://datasets/lab/filters" in card
    assert "| cc-by-nc-sa-4.0 | 1: `robustbench/cifar10/Linf/Ding2020MMA` |" in card
    assert "| unknown | 1: `own/net` |" in card
    assert "| cifar10 | Linf | yes | 1 | 10 |" in card and "| cifar10 | none | no | 1 | 10 |" in card
    assert "@InProceedings{Gavrikov_2022a_CVPR" in card and "pages     = {139-147}" in card
    assert "@inproceedings{croce2021robustbench" in card and "Datasets and Benchmarks Track" in card
    assert "arXiv:2204.02481" in card and "dataset version 4" in card and "ab" * 32 in card
    assert "Update in progress" not in card


def test_card_for_a_branch_and_while_updating() -> None:
    card = render_card(inputs([model("own/net")], revision="v2", updating="dataset version 5 is being uploaded",
                              excluded=["`failures` (2 models whose latest extraction failed)"]))
    assert 'load_dataset("lab/filters", "models", split="train", revision="v2")' in card
    assert "hf://datasets/lab/filters@v2/models/*.parquet" in card
    assert "> **Update in progress** — dataset version 5 is being uploaded." in card
    assert "Not published: `failures` (2 models whose latest extraction failed)." in card
    assert front_matter(card)["configs"][0]["config_name"] == "models"
