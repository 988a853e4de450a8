"""Ray job entrypoint: build the filter dataset from a zoo on the cluster this job runs on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/build_dataset.py zoo.yaml --out s3://bucket/filters

Takes exactly the arguments of ``filterlens build`` (see ``filterlens build --help``);
inside a job Ray's address comes from the environment, so the build joins this cluster.
"""

import sys

from pipeline.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
