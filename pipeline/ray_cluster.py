"""Joining or starting a Ray cluster, and what a task may ask of it: shared by the build and training runners."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray


def connect(address: str | None, log_to_driver: bool = True) -> None:
    """Join (``auto``, ``ray://...``, or RAY_ADDRESS inside a job) or start (None, ``local``) a Ray cluster."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address == "local" or (address is None and not os.environ.get("RAY_ADDRESS")):
        # our own single-machine instance on 127.0.0.1: no token authentication (and no warning about it);
        # a cluster that is joined keeps whatever mode it runs with
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs["include_dashboard"] = False
        # workers import this package from the driver's source tree, installed or not
        project_root = str(Path(__file__).resolve().parents[1])
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (project_root, os.environ.get("PYTHONPATH", "")) if p)}}
    ray.init(address=address, **kwargs)


def task_resources(cluster_resources: dict) -> tuple[int, str]:
    """(GPUs per task, device) for a cluster: a GPU each only when the cluster has one.

    A task asking for a GPU on a CPU-only cluster would wait forever, so this is
    decided from the cluster's resources at run time, never assumed.
    """
    return (1, "cuda") if cluster_resources.get("GPU", 0) >= 1 else (0, "cpu")
