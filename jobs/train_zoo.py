"""Ray job entrypoint: train models into a zoo file on the cluster this job runs on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_zoo.py --arch pipeline.train.demo_models:small_resnet --kind both --seeds 2 --zoo zoo/zoo.yaml

Takes exactly the arguments of ``filterlens train`` (see ``filterlens train --help``).
Inside a job the models train as tasks of this cluster (``--address auto`` unless
given): one task per model, each with a GPU when the cluster has GPUs.
"""

import sys

from pipeline.cli.main import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--address" or a.startswith("--address=") for a in argv):
        argv = [*argv, "--address", "auto"]
    sys.exit(main(["train", *argv]))
