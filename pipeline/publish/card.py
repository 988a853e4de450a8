"""The dataset card (README.md of a Hub dataset repo), generated from schemas/ and the build manifest.

Everything on the card is a pure function of its inputs (the committed models,
row and file counts, the manifest, the repo id), so republishing an unchanged
dataset produces a byte-identical card and nothing is re-sent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import yaml

from pipeline.dataset.manifest import CARD, DATA_FILES, data_configs
from pipeline.dataset.schema import table_schema
from pipeline.publish.licenses import SOURCE_NOTES, model_license, model_source

__all__ = ["CARD", "DATA_FILES", "CardInputs", "card_metadata", "render_card", "size_category"]

PUBLISHED_TABLES = ("models", "layers", "filters", "probes")
"""What a published repo holds; ``probes`` only when some model was probed (``published_tables``)."""


def published_tables(inputs: CardInputs) -> tuple[str, ...]:
    """The tables of this repo: ``probes`` only when it holds probe files."""
    return tuple(t for t in PUBLISHED_TABLES if t != "probes" or inputs.files.get("probes"))
PRETTY_NAME = "filterlens: 3x3 convolution filters and layer metrics of robust and normal CNNs"
TAGS = ["adversarial-robustness", "robustness", "convolutional-neural-networks", "convolution-filters",
        "model-weights", "interpretability", "robustbench", "filterlens"]

PAPER_BIBTEX = """@InProceedings{Gavrikov_2022a_CVPR,
    author    = {Gavrikov, Paul and Keuper, Janis},
    title     = {Adversarial Robustness Through the Lens of Convolutional Filters},
    booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR) Workshops},
    month     = {June},
    year      = {2022},
    pages     = {139-147},
    note      = {arXiv:2204.02481}
}"""

ROBUSTBENCH_BIBTEX = """@inproceedings{croce2021robustbench,
    title     = {RobustBench: a standardized adversarial robustness benchmark},
    author    = {Croce, Francesco and Andriushchenko, Maksym and Sehwag, Vikash and Debenedetti, Edoardo and
                 Flammarion, Nicolas and Chiang, Mung and Mittal, Prateek and Hein, Matthias},
    booktitle = {Thirty-fifth Conference on Neural Information Processing Systems Datasets and Benchmarks Track},
    year      = {2021},
    url       = {https://openreview.net/forum?id=SSKZPJCt7B}
}"""

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"))


def size_category(n_rows: int) -> str:
    """The Hub's ``size_categories`` bucket for a row count."""
    for bound, label in SIZE_CATEGORIES:
        if n_rows < bound:
            return label
    return "n>1T"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass
class CardInputs:
    """What the card is generated from (all of it deterministic for a given dataset)."""

    repo_id: str
    models: list[dict]
    rows: dict[str, int]
    files: dict[str, int]
    bytes: dict[str, int]
    manifest: dict
    snapshot: str
    revision: str | None = None
    license: str | None = None
    updating: str | None = None
    """When set, the card says an update is being uploaded (the text says which version)."""
    pipeline_version: str = ""
    excluded: list[str] = field(default_factory=list)


def card_metadata(inputs: CardInputs) -> dict:
    """The YAML header: licence, pretty name, tags, size category, configs (models is the default)."""
    licenses = {model_license(m)[0] for m in inputs.models}
    if inputs.license:
        license_meta = {"license": inputs.license}
    elif len(licenses) == 1 and "unknown" not in licenses:
        license_meta = {"license": licenses.pop()}
    else:
        license_meta = {"license": "other", "license_name": "per-model-licenses"}
    configs = data_configs(published_tables(inputs))  # the same as a local root's card (pipeline/dataset/manifest.py)
    return {
        **license_meta,
        "pretty_name": PRETTY_NAME,
        "tags": TAGS,
        "size_categories": [size_category(max(inputs.rows.values(), default=0))],
        "configs": configs,
    }


def _hf_path(inputs: CardInputs, path: str) -> str:
    revision = f"@{inputs.revision}" if inputs.revision and inputs.revision != "main" else ""
    return f"hf://datasets/{inputs.repo_id}{revision}/{path}"


def _usage(inputs: CardInputs) -> list[str]:
    rev = f", revision=\"{inputs.revision}\"" if inputs.revision and inputs.revision != "main" else ""
    root = _hf_path(inputs, "").rstrip("/")
    n_filters = inputs.rows.get("filters", 0)
    return [
        "## Usage", "",
        "Every file carries `dataset` and `model` as real string columns with the exact values. The folders",
        "(`layers/<dataset>/<model>/`) are filesystem-safe slugs and not Hive-style, so default reads (pandas,",
        "pyarrow, Polars, DuckDB) see only the columns; `hive_partitioning=false` is needed only for models written",
        "by older filterlens versions (`dataset=…/model=…` folders, whose slugs may differ from the values).", "",
        "**🤗 datasets**", "",
        "```python",
        "from datasets import load_dataset",
        "",
        f"models = load_dataset(\"{inputs.repo_id}\", \"models\", split=\"train\"{rev})   # one row per model",
        f"layers = load_dataset(\"{inputs.repo_id}\", \"layers\", split=\"train\"{rev})   # one row per conv layer",
        f"filters = load_dataset(\"{inputs.repo_id}\", \"filters\", split=\"train\", streaming=True{rev})"
        f"  # {n_filters:,} rows",
        "```", "",
        "**DuckDB** (reads `hf://` paths through its httpfs extension)", "",
        "```sql",
        "SELECT m.dataset, m.robust, count(DISTINCT m.model_id) AS models,",
        "       sum(l.n_sparse) / sum(l.n_filters) AS sparsity,",
        "       sum(l.variance_entropy * l.n_nonsparse) / sum(l.n_nonsparse) AS variance_entropy,",
        "       sum(l.orthogonality * l.out_channels) / sum(l.out_channels) AS orthogonality",
        f"FROM read_parquet('{_hf_path(inputs, DATA_FILES['layers'])}', hive_partitioning = false) AS l",
        f"JOIN read_parquet('{_hf_path(inputs, DATA_FILES['models'])}') AS m USING (model_id)",
        "WHERE l.kernel_h = 3 AND l.kernel_w = 3",
        "  AND NOT (m.robust AND l.member_robust IS FALSE)  -- a robust ensemble's normally trained member",
        "GROUP BY ALL ORDER BY ALL;",
        "```", "",
        "**Polars**", "",
        "```python",
        "import polars as pl",
        "",
        f"models = pl.scan_parquet(\"{_hf_path(inputs, DATA_FILES['models'])}\")",
        f"layers = pl.scan_parquet(\"{_hf_path(inputs, DATA_FILES['layers'])}\", hive_partitioning=False)",
        "(layers.filter((pl.col(\"kernel_h\") == 3) & (pl.col(\"kernel_w\") == 3))",
        "       .join(models.select(\"model_id\", \"robust\"), on=\"model_id\")",
        "       .filter(~pl.col(\"robust\") | pl.col(\"member_robust\").fill_null(True))",
        "       .group_by(\"robust\").agg(pl.col(\"sparsity\").mean(), pl.col(\"orthogonality\").mean())",
        "       .collect())",
        "```", "",
        "**filterlens** (the tool that built it; reads the repo through `HfFileSystem`, pinned to one commit)", "",
        "```bash",
        f"filterlens info {root}",
        f"filterlens sql {root} \"SELECT model_id, count(*) FROM layers GROUP BY 1\"",
        f"filterlens stats {root} --out report/",
        "```", "",
    ]


def _schema_section(table: str) -> list[str]:
    schema = table_schema(table)
    lines = [f"### `{table}`", "", _cell(schema.description), "", f"Files: `{schema.layout}`", ""]
    lines += ["| column | type | nullable | description |", "|---|---|---|---|"]
    for column in schema.columns:
        lines.append(f"| `{column.name}` | {_cell(column.type)} | {'yes' if column.nullable else 'no'} | "
                     f"{_cell(column.description)} |")
    return [*lines, ""]


def _license_section(inputs: CardInputs) -> list[str]:
    by_license: dict[str, list[str]] = {}
    for row in inputs.models:
        by_license.setdefault(model_license(row)[0], []).append(row["model_id"])
    sources = Counter(model_source(row) for row in inputs.models)
    lines = ["## Licences", "",
             "The `filters` table holds the exact 3x3 weights of each model, so each model's rows are under that "
             "model's licence. filterlens knows the licences of RobustBench's zoo (from RobustBench's LICENSE); "
             "for other sources it does not, and the publisher must state them."]
    if inputs.license:
        lines.append(f"The publisher declared the licence `{inputs.license}` for this dataset.")
    lines += ["", "| source | models | what is known |", "|---|---:|---|"]
    for source in ("robustbench", "torchvision", "timm", "other"):
        if sources.get(source):
            lines.append(f"| {source} | {sources[source]} | {_cell(SOURCE_NOTES[source])} |")
    lines += ["", "| licence | models |", "|---|---|"]
    for license_id in sorted(by_license):
        ids = by_license[license_id]
        shown = ", ".join(f"`{m}`" for m in ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        lines.append(f"| {license_id} | {len(ids)}: {shown} |")
    return [*lines, ""]


def _front_matter(inputs: CardInputs) -> list[str]:
    """The YAML header, the title and, while an upload runs, the update-in-progress notice."""
    header = yaml.safe_dump(card_metadata(inputs), sort_keys=False, allow_unicode=True, width=1000)
    lines = ["---", header.rstrip("\n"), "---", "", f"# {PRETTY_NAME}", ""]
    if inputs.updating:
        lines += [f"> **Update in progress** — {inputs.updating}. Until it completes, the files may mix the "
                  "previous and the new version; this notice disappears when the upload has finished.", ""]
    return lines


def _summary(inputs: CardInputs) -> list[str]:
    """What the dataset is, its tables' sizes, and its models by training data, threat model and robustness."""
    models = inputs.models
    n_models = len(models)
    n_robust = sum(1 for m in models if m.get("robust"))
    lines = [
        f"Every 3x3 convolution filter, every convolution layer's filter-quality metrics and every model's "
        f"metadata of **{n_models} CNN checkpoints** ({n_robust} adversarially or otherwise robustly trained, "
        f"{n_models - n_robust} normally trained), extracted with filterlens "
        f"{inputs.pipeline_version}. It implements, at the scale of today's model zoos, the analysis of "
        "*Adversarial Robustness through the Lens of Convolutional Filters* (Gavrikov & Keuper, CVPR-W 2022, "
        "[arXiv:2204.02481](https://arxiv.org/abs/2204.02481)), which found that robust models form more diverse, "
        "less sparse and more orthogonal 3x3 filters, most of all in the deepest layers and the first conv layer.",
        "",
        "| config | rows | files | size |", "|---|---:|---:|---:|",
    ]
    for table in published_tables(inputs):
        lines.append(f"| `{table}` | {inputs.rows.get(table, 0):,} | {inputs.files.get(table, 0):,} | "
                     f"{_human_bytes(inputs.bytes.get(table, 0))} |")
    groups = Counter((m.get("dataset"), m.get("threat_model"), bool(m.get("robust"))) for m in models)
    filters_by = Counter()
    for m in models:
        filters_by[(m.get("dataset"), m.get("threat_model"), bool(m.get("robust")))] += int(m.get("n_filters") or 0)
    lines += ["", "| training data | threat model | robust | models | 3x3 filters |", "|---|---|---|---:|---:|"]
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        lines.append(f"| {_cell(key[0])} | {_cell(key[1])} | {'yes' if key[2] else 'no'} | {groups[key]} | "
                     f"{filters_by[key]:,} |")
    return lines


def _build_section(inputs: CardInputs) -> list[str]:
    """How the dataset was built (versions, layer order, builds, sources, snapshot), its layout, the tables' title."""
    models = inputs.models
    manifest = inputs.manifest
    depth = Counter(m.get("depth_source") for m in models)
    versions = sorted({str(m.get("pipeline_version")) for m in models})
    builds = manifest.get("builds") or []
    return [
        "", "## How it was built", "",
        "Each checkpoint is loaded safely (`torch.load(weights_only=True)`, safetensors or ONNX), bound to its "
        "architecture when known, and its 2D convolutions are ordered by a forward pass on a dummy input "
        "(`depth_source = forward`), by the ONNX graph, or by state-dict order. Metrics are computed per layer; "
        "one model's rows are committed atomically.", "",
        f"- dataset version {manifest.get('dataset_version')} (schema version {manifest.get('schema_version')}), "
        f"created {manifest.get('created_at')}, last updated {manifest.get('updated_at')}",
        f"- extracted with filterlens {', '.join(versions) or 'unknown'}; published with filterlens "
        f"{inputs.pipeline_version}",
        "- conv layer order: " + ", ".join(f"{k} ({v} models)" for k, v in sorted(depth.items(), key=str)),
        f"- builds recorded: {len(builds)}" + (f", the last finished {builds[-1].get('finished_at')}"
                                                 if builds and builds[-1].get("finished_at") else ""),
        "- sources: " + ", ".join(f"{k} ({v} models)" for k, v in
                                   sorted(Counter(model_source(m) for m in models).items())),
        f"- snapshot `{inputs.snapshot}` (sha256 over every data file's path and sha256; also in `_manifest.json`)",
        "",
        "## Layout", "",
        "```",
        "models/part-<model>.parquet                         one row per model",
        "layers/<d>/<model>/part-*.parquet                   one row per conv layer (all kernel sizes; metrics for 3x3)",
        "filters/<d>/<model>/part-*.parquet                  one row per 3x3 filter, w0..w8 exact float32",
        "_manifest.json                                      dataset version, schema version, builds, snapshot",
        "```", "",
        "Only committed model versions are published. Join models to layers on `model_id`, and layers to filters "
        "on `model_id`, `member`, `conv_index` (ensembles number their layers per member). The layout is filterlens' own, "
        "so the repo is itself a filter dataset: `filterlens sql|info|stats hf://datasets/...` read it, and a "
        "downloaded copy can be extended with `filterlens build` and published again.", "",
        "## Tables", "",
    ]


def _metrics_section() -> list[str]:
    """The definitions of the layer metrics."""
    return [
        "## Metrics", "",
        "For a conv layer with weight W (c_out, c_in/groups, 3, 3) and its n filters flattened to 9-vectors:", "",
        "- **sparsity**: a filter f is sparse iff max|f| ≤ 0.01·max|W|; `sparsity = n_sparse / n_filters`.",
        "- **variance entropy** (diversity): the non-sparse filters, each scaled by its own max|f|, centred; "
        "with singular values s, v = s²/(n'−1), p = v/Σv: H = −Σ p·log10 p, in [0, log10 9]. "
        "`variance_entropy_raw` uses all filters unscaled.",
        "- **orthogonality**: rows are the c_out output kernels (c_in·9 values) divided by their L2 norm; "
        "C = Σ|R·Rᵀ − I| / (c_out(c_out−1)); orthogonality = 1 − C. As in the reference code, a zero kernel "
        "counts |0−1| on the diagonal, so values compare with published ones.",
        "- **depth**: `conv_index` is the order the conv layers run in, counted per ensemble member (`member`); "
        "`conv_depth_norm = conv_index / (n − 1)` with n the member's conv layers (`n_conv_layers` for a single "
        "model). `member_robust` is false for members of robust ensembles that were not adversarially trained "
        "(e.g. MixedNUTS's accurate base model): leave them out of robust pools.",
        "- `n_nonsparse`, `pca_sum`, `pca_scatter` are additive PCA sufficient statistics, so PCA bases over "
        "any selection of layers can be computed without reading `filters`.", "",
    ]


def _limitations_section(inputs: CardInputs) -> list[str]:
    """What the data does not say, and what was left out of this upload."""
    lines = [
        "## Limitations", "",
        "- Metrics are defined for 3x3 kernels only; other layers appear in `layers` with null metric columns.",
        "- Metric values are defined by convention for degenerate layers (flagged in `entropy_degenerate`, "
        "`orthogonality_degenerate`); layers with NaN/Inf weights have null metrics (`n_nonfinite`).",
        "- Without a known architecture the layer order is the state-dict order (`depth_source = state_dict`), "
        "which may differ from the execution order; depth analyses should prefer `forward`.",
        "- Weights are stored as float32: exact for float32/float16/bfloat16 checkpoints, rounded for float64 "
        "ones (`weight_dtype`).",
        "- Accuracies and threat-model metadata are copied from the sources (e.g. RobustBench's leaderboard) "
        "and not re-evaluated. Models that failed to extract are not included.",
        "- Folder names are slugs of the values (`ImageNet 1k` → `ImageNet_1k-<hash>`); use the columns, not the "
        "folders.",
    ]
    if inputs.excluded:
        lines.append(f"- Not published: {', '.join(inputs.excluded)}.")
    return lines


def _citation_section() -> list[str]:
    """The papers to cite."""
    return [
        "", "## Citation", "",
        "If you use this dataset, please cite the paper whose analysis it implements:", "",
        "```bibtex", PAPER_BIBTEX, "```", "",
        "and, for models from the RobustBench Model Zoo, RobustBench:", "",
        "```bibtex", ROBUSTBENCH_BIBTEX, "```", "",
    ]


def render_card(inputs: CardInputs) -> str:
    """The full README.md: YAML header, then what it is, how it was built, schemas, usage, licences, citation."""
    lines = [*_front_matter(inputs), *_summary(inputs), *_build_section(inputs)]
    for table in published_tables(inputs):
        lines += _schema_section(table)
    lines += _usage(inputs)
    lines += _metrics_section()
    lines += _license_section(inputs)
    lines += _limitations_section(inputs)
    lines += _citation_section()
    return "\n".join(lines)
