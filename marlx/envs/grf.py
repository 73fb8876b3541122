"""Google Research Football (gfootball) scenarios as teams: ``grf/<scenario>``.

The team controls ``n_agents`` left players (the ``number_of_left_players_agent_controls`` of
gfootball; which players those are is up to the engine, ``info`` names them). Per step:

* obs ``(n_agents, obs_dim)``: the chosen representation, ``simple115v2`` (115 floats per player) by
  default, ``simple115``, ``extracted`` (the 72 x 96 x 4 super-mini-map, flattened), or ``ego``: the
  ego-centric vector of the CDS/FoX GRF envs (:func:`ego_observation`; 26 floats for
  ``academy_3_vs_1_with_keeper``). gfootball's simple115 rows of the agents differ only in the
  "active player" one-hot, so per-agent differences carry no formation; ``ego`` rows do (FoX needs it);
* state ``(104,)``: simple115v2 of the raw observation without the "active player" one-hot: both
  teams' positions and directions (11 slots each, -1 where a team has fewer players), ball position,
  direction, owner one-hot and game-mode one-hot; named in ``state_names``;
* positions ``(n_agents, 2)``: the ``(x, y)`` of the player each agent controls now (x in [-1, 1],
  we attack +x); gfootball may move a controller to another player, even to our keeper (``info["active"]``
  names the players);
* avail: all ones (football has no illegal actions);
* ``info["success"]``: the team leads (for academy tasks: scored), ``info["score"]``, ``info["active"]``.

Rewards (``reward=``):

* ``"scoring"``: +1 for our goal, -1 for theirs (gfootball's ``scoring``);
* ``"scoring,checkpoints"``: plus gfootball's per-player checkpoint shaping; the team reward is the
  mean (default) or sum of the players' rewards (``team_reward=``);
* ``"sparse"``: the FoX/CDS academy task: +100 for our goal, -1 at any other end of the episode, 0
  otherwise; the episode also ends when the ball or one of our field players enters our half
  (x < 0; the players are CDS's ``left_team[-n_agents:]`` less the keeper), and after
  ``episode_limit`` = 150 steps.

Termination: gfootball's own end of episode (goal, ball out of play, possession change in academy
tasks) and the sparse task's half-line rule terminate; the time limit (gfootball's ``game_duration``,
or ``episode_limit``) truncates.

Seeding: each episode's engine seed (``game_engine_random_seed``) is drawn from the env's
``np_random``, so ``reset(seed=s)`` replays the same episodes for the same actions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marlx.envs.team import TeamEnv

#: Scenarios of gfootball 2.10 (``gfootball/scenarios``) with the team size the adapter controls by
#: default: the left team's field players, except the counterattacks, where FoX/CDS control 4.
GRF_SCENARIOS: dict[str, int] = {
    "academy_3_vs_1_with_keeper": 3,
    "academy_corner": 10,
    "academy_counterattack_easy": 4,
    "academy_counterattack_hard": 4,
    "academy_empty_goal": 1,
    "academy_empty_goal_close": 1,
    "academy_pass_and_shoot_with_keeper": 2,
    "academy_run_pass_and_shoot_with_keeper": 2,
    "academy_run_to_score": 1,
    "academy_run_to_score_with_keeper": 1,
    "academy_single_goal_versus_lazy": 10,
    "1_vs_1_easy": 1,
    "5_vs_5": 4,
    "11_vs_11_competition": 10,
    "11_vs_11_easy_stochastic": 10,
    "11_vs_11_hard_stochastic": 10,
    "11_vs_11_kaggle": 10,
    "11_vs_11_stochastic": 10,
}
REWARDS = ("scoring", "scoring,checkpoints", "sparse")
REPRESENTATIONS = ("simple115v2", "simple115", "extracted", "ego")
#: Opponents the ego view keeps where the CDS/FoX env keeps fewer than the whole right team
#: (FoX ``FOX_GRF/envs/grf/academy_counterattack_hard.py``: the first 3 right players, obs_dim 34).
EGO_OPPONENTS = {"academy_counterattack_hard": 3}
SPARSE_EPISODE_LIMIT = 150
SPARSE_GOAL_REWARD = 100.0
INSTALL = "bash scripts/install_grf.sh  (system packages + pip build of gfootball==2.10.2; ~8 min)"
STATE_DIM = 104
_TEAM_FIELDS = ("left_team", "left_team_direction", "right_team", "right_team_direction")
_GAME_MODES = ("normal", "kickoff", "goal_kick", "free_kick", "corner", "throw_in", "penalty")


def _state_names() -> list[str]:
    names = [f"{team}_{i}_{axis}" for team in _TEAM_FIELDS for i in range(11) for axis in "xy"]
    names += [f"ball_{a}" for a in "xyz"] + [f"ball_direction_{a}" for a in "xyz"]
    names += ["ball_owned_none", "ball_owned_left", "ball_owned_right"]
    names += [f"game_mode_{m}" for m in _GAME_MODES]
    return names


def _import_gfootball():
    try:
        import gfootball.env as football_env
        from gfootball.env.wrappers import Simple115StateWrapper
    except ImportError as e:
        from marlx.errors import MissingDependencyError

        raise MissingDependencyError("Google Research Football", e.name or "gfootball", INSTALL) from None
    return football_env, Simple115StateWrapper


def ego_dim(n_agents: int, n_opponents: int) -> int:
    """Length of the ego-centric observation: ``4 n + 4 m + 6`` (26 for 3 agents against 2 players)."""
    return 4 * n_agents + 4 * n_opponents + 6


def ego_observation(raw: dict, n_agents: int, n_opponents: int | None = None) -> np.ndarray:
    """The CDS/FoX ego-centric observations of all agents from one raw gfootball observation dict.

    The team is the last ``n_agents`` left players (CDS/FoX's ``left_team[-n_agents:]``; agent i is slot
    ``-n_agents + i``), the opponents the first ``n_opponents`` right players (all by default). Agent i's row,
    as ``get_simple_obs(i)`` of FoX's ``FOX_GRF/envs/grf/academy_3_vs_1_with_keeper.py`` builds it:

    * its own position (2), the other team members' positions relative to it (2 (n-1), team order);
    * its own direction (2), the other members' directions (2 (n-1));
    * the opponents' positions relative to it (2 m), their directions (2 m);
    * the ball's (x, y) relative to it (2), the ball's height z (1), the ball's direction (3).

    Returns ``(n_agents, 4 n + 4 m + 6)`` float32.
    """
    left = np.asarray(raw["left_team"], np.float64)[-n_agents:]
    left_dir = np.asarray(raw["left_team_direction"], np.float64)[-n_agents:]
    m = len(raw["right_team"]) if n_opponents is None else int(n_opponents)
    right = np.asarray(raw["right_team"], np.float64)[:m]
    right_dir = np.asarray(raw["right_team_direction"], np.float64)[:m]
    ball = np.asarray(raw["ball"], np.float64)
    ball_dir = np.asarray(raw["ball_direction"], np.float64)
    rows = []
    for i in range(n_agents):
        ego = left[i]
        others = np.delete(np.arange(n_agents), i)
        rows.append(np.concatenate([
            ego, (left[others] - ego).reshape(-1), left_dir[i], left_dir[others].reshape(-1),
            (right - ego).reshape(-1), right_dir.reshape(-1), ball[:2] - ego, ball[2:3], ball_dir,
        ]))
    return np.asarray(rows, np.float32).reshape(n_agents, ego_dim(n_agents, m))


def ego_state(raw: dict, n_agents: int, n_opponents: int | None = None) -> np.ndarray:
    """The CDS/FoX global state (``get_simple_obs(-1)`` of FoX's GRF envs): absolute positions and directions of
    the last ``n_agents`` left players and of the first ``n_opponents`` right players, the ball's position (3) and
    direction (3). Returns ``(4 n + 4 m + 6,)`` float32 (26 for academy_3_vs_1_with_keeper)."""
    m = len(raw["right_team"]) if n_opponents is None else int(n_opponents)
    parts = [np.asarray(raw["left_team"])[-n_agents:], np.asarray(raw["left_team_direction"])[-n_agents:],
             np.asarray(raw["right_team"])[:m], np.asarray(raw["right_team_direction"])[:m],
             np.asarray(raw["ball"]), np.asarray(raw["ball_direction"])]
    return np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in parts]).astype(np.float32)


def ego_state_names(n_agents: int, n_opponents: int) -> list[str]:
    names = [f"team_{i}_{a}" for i in range(n_agents) for a in "xy"]
    names += [f"team_{i}_direction_{a}" for i in range(n_agents) for a in "xy"]
    names += [f"opponent_{i}_{a}" for i in range(n_opponents) for a in "xy"]
    names += [f"opponent_{i}_direction_{a}" for i in range(n_opponents) for a in "xy"]
    return names + [f"ball_{a}" for a in "xyz"] + [f"ball_direction_{a}" for a in "xyz"]


class GRFTeamEnv(TeamEnv):
    """A gfootball scenario as a team (see the module docstring).

    Args:
        scenario: a gfootball scenario name (``GRF_SCENARIOS``).
        n_agents: left players the team controls (default: ``GRF_SCENARIOS[scenario]``).
        representation: ``"simple115v2"``, ``"simple115"``, ``"extracted"`` or ``"ego"`` (CDS/FoX's
            ego-centric vectors, :func:`ego_observation`; the engine runs with simple115v2 underneath).
        ego_opponents: right players in the ``ego`` view (default: ``EGO_OPPONENTS`` or the whole right team).
        state_representation: ``"simple115v2"`` (default: the 104-dim state above) or ``"ego"``: the CDS/FoX
            envs' global state (:func:`ego_state`, absolute positions; 26 dims on 3v1).
        time_limit_terminates: ``"sparse"`` only: the time limit (``episode_limit`` or gfootball's own) terminates
            (reward -1, no bootstrap) as in the released FoX/CDS env, whose info has no ``episode_limit`` so that
            PyMARL's runner records a termination; default False: it truncates (marlx's convention).
        reward: ``"scoring"``, ``"scoring,checkpoints"`` or ``"sparse"`` (FoX/CDS).
        episode_limit: steps before truncation; default 150 for ``"sparse"``, else the scenario's
            ``game_duration`` (400 for academy tasks, 3000 for full games).
        team_reward: ``"mean"`` or ``"sum"`` of the controlled players' rewards (scoring modes).
        other_config_options: passed to ``gfootball.env.create_environment``.
    """

    position_dim = 2

    def __init__(
        self,
        scenario: str = "academy_3_vs_1_with_keeper",
        n_agents: int | None = None,
        representation: str = "simple115v2",
        reward: str = "scoring",
        episode_limit: int | None = None,
        team_reward: str = "mean",
        other_config_options: dict | None = None,
        ego_opponents: int | None = None,
        time_limit_terminates: bool = False,
        state_representation: str = "simple115v2",
    ):
        if scenario not in GRF_SCENARIOS:
            from marlx.errors import UnknownNameError

            raise UnknownNameError("GRF scenario", scenario, GRF_SCENARIOS)
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        if state_representation not in ("simple115v2", "ego"):
            raise ValueError(f"state_representation must be 'simple115v2' or 'ego', got {state_representation!r}")
        if team_reward not in ("mean", "sum"):
            raise ValueError(f"team_reward must be 'mean' or 'sum', got {team_reward!r}")
        football_env, self._simple115 = _import_gfootball()
        from gfootball.env import config as gf_config

        self.scenario, self.reward_mode, self.team_reward = scenario, reward, team_reward
        self.time_limit_terminates = bool(time_limit_terminates)
        self.representation = representation
        self.n_agents = int(n_agents or GRF_SCENARIOS[scenario])
        self.env = football_env.create_environment(
            env_name=scenario,
            representation="simple115v2" if representation == "ego" else representation,
            rewards="scoring" if reward == "sparse" else reward,
            number_of_left_players_agent_controls=self.n_agents,
            render=False,
            write_goal_dumps=False,
            write_full_episode_dumps=False,
            other_config_options=dict(other_config_options or {}),
        )
        self._config = self.env.unwrapped._config  # gfootball's Config, read at every reset
        scenario_cfg = gf_config.Config({"level": scenario}).ScenarioConfig()
        game_duration = int(scenario_cfg.game_duration)
        if episode_limit is None:
            episode_limit = SPARSE_EPISODE_LIMIT if reward == "sparse" else game_duration
        self.episode_limit = int(episode_limit)
        self.n_actions = int(self.env.action_space.nvec[0]) if self.n_agents > 1 else int(self.env.action_space.n)
        self.obs_dim = int(np.prod(self.env.observation_space.shape[1:] if self.n_agents > 1 else self.env.observation_space.shape))
        self.ego_opponents = None
        if representation == "ego":
            n_right = len(scenario_cfg.right_team)
            m = ego_opponents if ego_opponents is not None else EGO_OPPONENTS.get(scenario, n_right)
            self.ego_opponents = int(min(m, n_right))
            self.obs_dim = ego_dim(self.n_agents, self.ego_opponents)
        self.state_representation = state_representation
        self.state_dim = STATE_DIM
        self.state_names = _state_names()
        if state_representation == "ego":
            n_right = len(scenario_cfg.right_team)
            m = int(min(ego_opponents if ego_opponents is not None else EGO_OPPONENTS.get(scenario, n_right), n_right))
            self._state_opponents = m
            self.state_dim = ego_dim(self.n_agents, m)
            self.state_names = ego_state_names(self.n_agents, m)
        self._obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        self._raw: list[dict] = []
        super().__init__()

    # -- raw observation helpers ----------------------------------------------------------------
    def _ingest(self, obs) -> None:
        self._raw = self.env.unwrapped.observation()
        if self.representation == "ego":
            self._obs = ego_observation(self._raw[0], self.n_agents, self.ego_opponents)
        else:
            self._obs = np.asarray(obs, np.float32).reshape(self.n_agents, self.obs_dim)

    def _active(self) -> list[int]:
        return [int(r["active"]) for r in self._raw]

    def _team_players(self) -> list[int]:
        """The field players of the sparse rule: CDS's ``left_team[-n_agents:]``, keeper excluded.

        Not the currently controlled players: gfootball may hand a controller to our keeper, who is
        always in our half.
        """
        raw = self._raw[0]
        n_left = len(raw["left_team"])
        roles = raw["left_team_roles"]
        return [i for i in range(max(0, n_left - self.n_agents), n_left) if int(roles[i]) != 0]

    def _in_our_half(self) -> bool:
        """The FoX/CDS end rule: the ball or one of our field players is in our half (x < 0)."""
        raw = self._raw[0]
        return bool(raw["ball"][0] < 0 or np.any(raw["left_team"][self._team_players(), 0] < 0))

    # -- TeamEnv --------------------------------------------------------------------------------
    def _reset(self, rng, options):
        seed = int(rng.integers(2**31 - 1))
        # gfootball reads these at every reset; set both so that the episode depends on the seed only.
        self._config["game_engine_random_seed"] = seed
        self._config["reverse_team_processing"] = bool(seed % 2)
        self._ingest(self.env.reset())
        return {"score": tuple(int(s) for s in self._raw[0]["score"]), "active": self._active()}

    def _step(self, actions):
        obs, rewards, done, info = self.env.step(actions.tolist() if self.n_agents > 1 else int(actions[0]))
        self._ingest(obs)
        raw = self._raw[0]
        score = tuple(int(s) for s in raw["score"])
        goal = float(info.get("score_reward", 0.0))  # +1 our goal, -1 theirs, this step
        out = {"score": score, "active": self._active(), "success": score[0] > score[1]}
        # gfootball ends an episode by itself on its time limit (steps_left == 0): that truncates.
        timed_out = bool(done and int(raw["steps_left"]) <= 0)
        if self.reward_mode == "sparse":
            at_limit = self._t + 1 >= self.episode_limit
            terminated = bool(done and not timed_out) or self._in_our_half()
            self._env_truncated = timed_out
            if self.time_limit_terminates and (timed_out or at_limit):
                terminated, self._env_truncated = True, False
            if goal > 0:
                reward = SPARSE_GOAL_REWARD
            else:
                reward = -1.0 if (terminated or timed_out or at_limit) else 0.0
            return reward, terminated, out
        rewards = np.asarray(rewards, np.float64).reshape(-1)
        reward = float(rewards.sum() if self.team_reward == "sum" else rewards.mean())
        self._env_truncated = timed_out
        return reward, bool(done and not timed_out), out

    def get_obs(self):
        return self._obs

    def get_state(self):
        if self.state_representation == "ego":
            return ego_state(self._raw[0], self.n_agents, self._state_opponents)
        full = np.asarray(self._simple115.convert_observation([self._raw[0]], True)[0], np.float32)
        return np.concatenate([full[:97], full[108:]])  # drop the 11 "active player" slots

    def get_positions(self):
        raw = self._raw[0]
        return np.asarray(raw["left_team"][self._active()], np.float32)

    def close(self):
        self.env.close()


def make_grf(scenario: str = "academy_3_vs_1_with_keeper", **kwargs: Any) -> GRFTeamEnv:
    """``grf/<scenario>``: see :class:`GRFTeamEnv` for the options."""
    return GRFTeamEnv(scenario, **kwargs)


def grf_specs() -> list:
    """One registry entry per gfootball scenario (no gfootball import: listing stays cheap)."""
    from marlx.envs.spec import family_specs

    return family_specs(
        "grf", "marlx.envs.grf:make_grf",
        {name: f"Google Research Football {name}, {n} controlled players (reward scoring|scoring,checkpoints|sparse)"
         for name, n in GRF_SCENARIOS.items()},
        key="scenario", requires=("gfootball",), install=INSTALL,
    )
