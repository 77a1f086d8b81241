"""Ray-side orchestration: pipeline stages as Ray tasks, sweeps, and PPO actor groups."""
