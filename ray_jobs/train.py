"""Entry point for `ray job submit`: run one pareto experiment on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/train.py --config configs/quickstart.yaml [--set key=value ...]

Inside a job Ray sets RAY_ADDRESS, so the pipeline joins the cluster; `pareto run` runs the same code locally.
"""

from __future__ import annotations

import sys

from pareto.cli import job_config, summary
from pareto.distributed.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(argv, __doc__, "experiment YAML")
    if cfg is None:
        return 2
    print(summary(run_pipeline(cfg), cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
