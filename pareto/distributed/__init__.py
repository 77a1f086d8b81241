"""Ray-side orchestration: pipeline stages as Ray tasks, sweeps, and PPO actor groups.

Importing the package sets the environment Ray reads when it is imported, before any module here imports it (the one
place it is set): every Ray listener on loopback, the job CLI usable without tokens, no usage stats.
"""

import os

for _name, _value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "disabled"),
                      ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_name, _value)
