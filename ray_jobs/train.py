"""Entry point for `ray job submit`: run one pareto experiment on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/train.py --config configs/quickstart.yaml [--set key=value ...]

Inside a job Ray sets RAY_ADDRESS, so the pipeline joins the cluster; `pareto run` runs the same code locally.
"""

from __future__ import annotations

import argparse
import sys

from pareto.cli import summary
from pareto.config import ConfigError, load_config
from pareto.distributed.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(run_pipeline(cfg), cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
