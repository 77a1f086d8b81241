"""Entry point for `ray job submit`: run (or resume) a preference sweep on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/sweep.py --config configs/sweep_quickstart.yaml \
        --set sweep.storage=postgresql://user:pass@db/optuna --set tracking.uri=http://mlflow:5000

Inside a job Ray sets RAY_ADDRESS, so trials run as tasks on the cluster; the driver owns the Optuna study. On a
cluster give the study an RDB storage the driver can reach (the default SQLite file lives in the driver's state
folder). Submitting the same job again resumes the study; `pareto sweep` runs the same code locally.
"""

from __future__ import annotations

import sys

from pareto.cli import job_config


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(argv, __doc__, "experiment YAML with a sweep section")
    if cfg is None:
        return 2
    if cfg.sweep is None:
        print("error: sweep: the config has no sweep section; add one (see configs/sweep_quickstart.yaml)",
              file=sys.stderr)
        return 2
    from pareto.distributed.sweep import run_sweep, summary

    print(summary(run_sweep(cfg), cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
