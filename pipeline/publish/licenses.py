"""What filterlens knows about where a model's weights came from and under which licence.

Only RobustBench's zoo states its licences in a form filterlens can read (its
LICENSE); for other sources the card says the publisher must state them.
"""

from __future__ import annotations

# RobustBench 1.1.1's LICENSE: the Model Zoo's weights are MIT except these (datasets, threat models,
# name prefix, Hub licence id, copyright). A prefix covers every model whose name starts with it.
ROBUSTBENCH_LICENSE_EXCEPTIONS = (
    ({"cifar10"}, {"Linf"}, "Hendrycks2019Using", "apache-2.0", "(c) 2019 Dan Hendrycks"),
    ({"cifar10"}, {"Linf"}, "Pang2020Boosting", "apache-2.0", "(c) 2020 Tianyu Pang, Xiao Yang"),
    ({"cifar10", "cifar100"}, {"Linf", "L2", "corruptions"}, "Gowal2020Uncovering", "apache-2.0", "(c) 2021 Google"),
    ({"cifar10"}, {"Linf", "L2"}, "Ding2020MMA", "cc-by-nc-sa-4.0", "(c) 2020 Borealis AI"),
    ({"cifar10"}, {"L2"}, "Rony2019Decoupling", "bsd-3-clause", "(c) 2018 Jerome Rony"),
    ({"cifar10", "cifar100"}, {"Linf", "L2", "corruptions"}, "Rebuffi2021Fixing", "apache-2.0", "(c) 2021 Google"),
    ({"cifar10", "cifar100"}, {"Linf", "L2"}, "Gowal2021Improving", "apache-2.0", "(c) 2021 Google"),
)

SOURCE_NOTES = {
    "robustbench": "RobustBench Model Zoo (https://github.com/RobustBench/robustbench). Per RobustBench's LICENSE, "
                   "the zoo's weights are MIT-licensed except the models listed with another licence below; "
                   "copyrights belong to the authors of each model.",
    "torchvision": "torchvision pretrained weights (torchvision's code is BSD-3-Clause). The weights' terms are "
                   "those torchvision states for each model (not recorded by filterlens); weights trained on "
                   "ImageNet may be subject to ImageNet's terms of access.",
    "timm": "timm pretrained weights; licences differ per model (see each model's card on the Hub). "
            "Not recorded by filterlens.",
    "other": "Checkpoints supplied by the publisher of this dataset; filterlens does not know their licence.",
}


def model_source(row: dict) -> str:
    """Where a model's checkpoint came from: robustbench, torchvision, timm or other."""
    model_id, arch = row.get("model_id") or "", row.get("arch_spec") or ""
    source = row.get("source_uri") or ""
    if model_id.startswith("robustbench/") or arch.startswith("robustbench:"):
        return "robustbench"
    if arch.startswith("torchvision:") or "download.pytorch.org" in source:
        return "torchvision"
    if arch.startswith("timm:") or "huggingface.co/timm/" in source or source.startswith("hf://timm/"):
        return "timm"
    return "other"


def model_license(row: dict) -> tuple[str, str]:
    """(Hub licence id, note) of one model's weights; ``unknown`` where filterlens cannot know it."""
    source = model_source(row)
    if source != "robustbench":
        return "unknown", source
    arch = row.get("arch_spec") or ""
    parts = arch.split(":") if arch.startswith("robustbench:") else row["model_id"].split("/")[1:]
    if len(parts) != 4 and len(parts) != 3:
        return "unknown", source
    dataset, threat_model, name = (parts[-3], parts[-2], parts[-1])
    for datasets, threat_models, prefix, license_id, copyright_note in ROBUSTBENCH_LICENSE_EXCEPTIONS:
        if dataset in datasets and threat_model in threat_models and name.startswith(prefix):
            return license_id, copyright_note
    return "mit", "RobustBench Model Zoo"
