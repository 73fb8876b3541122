"""marlx.runtime: the team runtime every team algorithm shares.

* :mod:`marlx.runtime.runner` — :class:`TeamEnvRunner`, RLlib's env runner for team envs (whole episodes or
  fragments, each sub-env seeded once, batched inference, the action-time attack seam);
* :mod:`marlx.runtime.episode` — :class:`TeamEpisode`, what the runner returns (numpy arrays);
* :mod:`marlx.runtime.replay` — :class:`TeamEpisodeReplay`, whole-episode replay for off-policy learners;
* :mod:`marlx.runtime.config` — :class:`TeamRuntimeConfig`, the runner's options on an algorithm config;
* :mod:`marlx.runtime.columns` — the column names used across all of them.
"""
