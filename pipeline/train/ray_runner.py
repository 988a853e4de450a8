"""Training on Ray: one task per model, a GPU each only when the cluster has GPUs."""

from __future__ import annotations

import dataclasses
import logging
import time

import ray

from pipeline.progress import progress_bar
from pipeline.ray_cluster import connect, task_resources

log = logging.getLogger(__name__)


def _train_task(train_one, config):  # noqa: ANN001, ANN202 - (TrainConfig -> TrainResult), TrainConfig
    """The body of one training task (module-level so Ray pickles it by reference)."""
    logging.basicConfig(level=logging.WARNING)
    return train_one(config)


def train_on_ray(configs: list, address: str | None, progress: bool, on_done, train_one) -> str:  # noqa: ANN001
    """Run ``train_one`` (the unit: pipeline.train.run_one.train_one) on ``configs`` (pipeline.train.config.TrainConfig) as Ray tasks, calling ``on_done(config, result or
    exception)`` as each finishes; num_gpus=1 per task only when the cluster has GPUs. Returns "ray"."""
    connect(address, log_to_driver=False)
    num_gpus, device = task_resources(ray.cluster_resources())
    remote = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=1)(_train_task)
    by_ref = {}
    for config in configs:
        task_config = dataclasses.replace(config, device=device, threads=config.threads or (None if num_gpus else 1))
        by_ref[remote.remote(train_one, task_config)] = config
    log.info("training %d models as Ray tasks (%s per task)", len(configs), "1 GPU" if num_gpus else "1 CPU")
    pending = list(by_ref)
    last_progress = time.monotonic()
    with progress_bar(len(configs), "training", "models", progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=60)
            if not done:
                if time.monotonic() - last_progress > 600:
                    log.warning("no model finished in %.0f min; still training: %s",
                                (time.monotonic() - last_progress) / 60,
                                ", ".join(by_ref[r].model_id for r in pending[:5]))
                continue
            last_progress = time.monotonic()
            for ref in done:
                config = by_ref[ref]
                try:
                    on_done(config, ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - a RayTaskError wraps the task's exception
                    on_done(config, getattr(exc, "cause", None) or exc)
                bar.update(1)
                bar.set_postfix_str(config.model_id.rsplit("/", 1)[-1])
    return "ray"
