"""``filterlens build --address http://...``: the build as a Ray job on a cluster's job server."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time

from ray.job_submission import JobStatus, JobSubmissionClient


def submit_build_job(address: str, argv: list[str], zoo: str, wait: bool = True) -> int:
    """Submit ``filterlens build`` to a cluster's job server (an http:// dashboard address).

    The zoo file travels in the job's working directory; the cluster must have
    filterlens installed (cluster.yaml's setup commands do that) and ``--out``
    must be a location the cluster can write (s3://, gs://, a shared path).
    Returns the exit code: 0 when the job succeeded.
    """
    client = JobSubmissionClient(address)
    workdir = tempfile.mkdtemp(prefix="filterlens-job-")
    args = list(argv)
    if zoo != "robustbench":
        shutil.copy(zoo, os.path.join(workdir, "zoo.yaml"))
        args[args.index(zoo)] = "zoo.yaml"
    entrypoint = "python -m pipeline build " + " ".join(shlex.quote(a) for a in args)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": workdir})
    print(f"submitted Ray job {job_id} to {address}; follow it with: ray job logs --follow {job_id} "
          f"--address {address}")
    if not wait:
        return 0
    status = client.get_job_status(job_id)
    printed = 0
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(2)
        logs = client.get_job_logs(job_id)
        print(logs[printed:], end="")
        printed = len(logs)
        status = client.get_job_status(job_id)
    print(client.get_job_logs(job_id)[printed:], end="")
    print(f"Ray job {job_id}: {status.value.lower()}")
    return 0 if status == JobStatus.SUCCEEDED else 3
