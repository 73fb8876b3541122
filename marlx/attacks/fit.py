"""Fitting Wolfpack's attacker models against a frozen victim (the attacker-only mode; spec §10, §13).

The released code trains the planning and Q-difference transformers only while WALL trains the defender
(``run.py:221``); it has no way to attack a policy that was trained without WALL, which the paper's "vanilla QMIX
under Wolfpack" column needs. :func:`fit_attacker` is that mode [marlx]: the victim's weights stay frozen; it plays
greedy (ε = 0) episodes under the Wolfpack attack with the TRAINING budget, timed by the Q-difference transformer
being fitted (as in WALL, where both co-train from random), stores them in a replay of whole episodes, and after
every stored episode, once ``batch_size`` episodes are there, runs one attacker update exactly as WALL's learner
does (:class:`~marlx.attacks.training.WolfpackModelTraining`: one random 20-step window per episode, a planning
step, ΔQ^WP labels from planned attacked roll-outs of the frozen victim, a Q-difference step, Adam lr 5e-4 each).
Everything but the RL step of WALL's update; hyper-parameters are WALL's (``config/algs/wall_qmix.yaml``).

The fitted models are saved as one ``torch`` file (:func:`save_attacker` / :func:`load_attacker`); ``marlx attack``
keeps it beside its results and reuses it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from marlx.attacks.training import WALL_HIDDEN, WolfpackModelTraining
from marlx.attacks.transformers import PlanningTransformer, QDifferenceTransformer
from marlx.errors import MarlxError

#: default env steps of the fit [marlx: the paper has no attacker-only phase; 20k steps = 400 predator_prey
#: episodes, ~370 attacker updates, a few minutes on one CPU core]
FIT_STEPS = 20_000
#: episodes per attacker update (WALL/PyMARL ``batch_size`` 32, ``config/default.yaml:32``)
BATCH_EPISODES = 32
#: replay capacity in episodes (``buffer_size`` 5000, ``wall_qmix.yaml:11``)
BUFFER_EPISODES = 5000
#: attacked steps per fitting episode: WALL's training budget ``num_attack_train`` (QMIX 12; VDN preset 16)
TRAIN_BUDGETS = {"qmix": 12, "vdn": 16}
#: the file of a fitted attacker inside ``marlx attack``'s folder (the transformer sizes are WALL's,
#: ``wall_qmix.yaml:42-46``, :data:`marlx.algorithms.wall.module.WALL_MODEL_DEFAULTS`)
ATTACKER_FILE = "wolfpack_attacker.pt"
FORMAT_VERSION = 1


def wall_model_defaults() -> dict[str, Any]:
    from marlx.algorithms.wall.module import WALL_MODEL_DEFAULTS

    return dict(WALL_MODEL_DEFAULTS)


class AttackerModels(nn.Module):
    """The two attacker models plus a frozen victim, with what :class:`WolfpackModelTraining` reads.

    The victim (a QMIX-family RLModule with its mixer) is held outside the module tree: it is neither saved with
    the attacker nor trained.
    """

    def __init__(self, victim, dims: dict[str, int], wall_cfg: dict | None = None):
        super().__init__()
        self._victim = [victim]
        c = {**wall_model_defaults(), **(wall_cfg or {})}
        self.wall_cfg = c
        self.dims = dict(dims)
        self.n_agents, self.n_actions = int(dims["n_agents"]), int(dims["n_actions"])
        self.qdiff_transformer = QDifferenceTransformer(
            dims["state_dim"], self.n_agents, embed_dim=c["trans_embed_dim"], heads=c["num_trans_head"],
            layers=c["num_trans_layer"], attack_period=c["attack_period"], max_timestep=c["env_max_timestep"],
            dropout=c["qdiff_dropout"],
        )
        self.planning_transformer = PlanningTransformer(
            dims["state_dim"], dims["obs_dim"], self.n_agents, self.n_actions, dims["hidden_dim"],
            embed_dim=c["trans_embed_dim"], heads=c["num_trans_head"], layers=c["num_trans_layer"],
        )

    @property
    def victim(self):
        return self._victim[0]

    def set_victim(self, victim) -> None:
        self._victim = [victim]

    def mix(self, chosen_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.victim.mix(chosen_qs, states)

    def agent_q_values(self, obs: dict, prev_actions, hidden: torch.Tensor, target: bool = False):
        return self.victim.agent_q_values(obs, prev_actions, hidden)


def victim_dims(module) -> dict[str, int]:
    return {"n_agents": int(module.n_agents), "n_actions": int(module.n_actions), "obs_dim": int(module.obs_dim),
            "state_dim": int(module.state_dim), "hidden_dim": int(module.hidden_dim)}


@dataclass
class FitOptions:
    """Options of :func:`fit_attacker` (WALL's values unless marked [marlx])."""

    #: env steps to play under attack [marlx]
    steps: int = FIT_STEPS
    #: attacked steps per fitting episode (WALL's training budget ``num_attack_train``)
    budget: int = TRAIN_BUDGETS["qmix"]
    #: episodes per update (``batch_size``)
    batch_episodes: int = BATCH_EPISODES
    #: replay capacity (``buffer_size``)
    buffer_episodes: int = BUFFER_EPISODES
    #: Adam lr of the planning and the Q-difference transformer (``lr``, ``q_learner.py:43,46``)
    planning_lr: float = 5e-4
    qdiff_lr: float = 5e-4
    #: seed of the transformers' initialisation, dropout, windows, replay and attack draws
    seed: int = 0
    #: Wolfpack's options while fitting (``attack_duration`` 3, ``temperature`` 0.5, ``num_followup_agents`` 2, ...)
    attack_options: dict = field(default_factory=dict)
    #: progress lines: at most this many during the fit
    progress_lines: int = 10


class _Trainer(WolfpackModelTraining):
    def __init__(self, seed: int):
        self._window_rng = torch.Generator().manual_seed(int(seed))


def _batch_tensors(data: dict) -> dict:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in data.items()}


def fit_attacker(runner, options: FitOptions, log: Callable[[str], None] | None = None,
                 models: AttackerModels | None = None) -> tuple[AttackerModels, dict]:
    """Fit the attacker models on ``runner`` (a :class:`~marlx.runtime.runner.TeamEnvRunner` whose module is the
    victim, with its mixer on the runner). The runner's attack is replaced by the fitting attack, then restored.

    Returns the models and a summary ``{"env_steps", "episodes", "updates", "seconds", "losses"}``.
    """
    from marlx.attacks.wolfpack import ATTACKER_ACTIONS, FOLLOWUP_AGENTS, INITIAL_AGENT, WolfpackAttack
    from marlx.modules.qmix_module import Q_VALUES
    from marlx.runtime.columns import EXECUTED_ACTIONS
    from marlx.runtime.replay import TeamEpisodeReplay
    from ray.rllib.core.columns import Columns

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    victim = runner.module
    if getattr(victim, "mixer", None) is None or not hasattr(victim, "agent_q_values"):
        raise MarlxError("fitting the Wolfpack attacker needs a value-based module with its mixer on the env runner")
    torch.manual_seed(int(options.seed))
    if models is None:
        models = AttackerModels(victim, victim_dims(victim))
    else:
        models.set_victim(victim)
    attack = WolfpackAttack({**options.attack_options, "budget": int(options.budget), "schedule": "planner"},
                            runner.num_envs, models.n_agents, models.n_actions, seed=int(options.seed))
    attack.set_qdiff_transformer(models.qdiff_transformer)
    cfg = attack.opts
    learn_cfg = type("FitConfig", (), {"wall_faithful": bool(cfg["wall_faithful"]),
                                       "attack_duration": int(cfg["attack_duration"])})()
    replay = TeamEpisodeReplay(options.buffer_episodes, seed=int(options.seed),
                               extra_columns=[EXECUTED_ACTIONS, ATTACKER_ACTIONS, INITIAL_AGENT, FOLLOWUP_AGENTS])
    trainer = _Trainer(options.seed)
    opts = {"planning": torch.optim.Adam(models.planning_transformer.parameters(), lr=options.planning_lr),
            "qdiff": torch.optim.Adam(models.qdiff_transformer.parameters(), lr=options.qdiff_lr)}
    stashed = runner.attack
    runner.attack = attack
    steps = episodes = updates = 0
    recent: list[dict] = []
    every = max(1, int(options.steps) // max(1, options.progress_lines))
    next_line = every
    t0 = time.perf_counter()
    log(f"fitting the Wolfpack attacker against the frozen victim: {options.steps} env steps under attack "
        f"(budget {options.budget}), one update of both transformers per episode once {options.batch_episodes} "
        "are stored")
    try:
        while steps < options.steps:
            models.eval()  # dropout off while the Q-difference transformer times attacks (as on WALL's runners)
            eps = runner.sample(num_episodes=runner.num_envs, explore=False)
            runner.get_metrics()
            replay.add(eps)
            steps += sum(len(e) for e in eps)
            episodes += len(eps)
            models.train()
            for _ in eps:
                if len(replay) < options.batch_episodes:
                    break
                batch = _batch_tensors(replay.sample(options.batch_episodes))
                with torch.no_grad():
                    q, extras = victim.unroll(victim.team_obs(batch), batch[Columns.ACTIONS], with_extras=True)
                recent.append(trainer.attacker_update(opts, models, learn_cfg, batch,
                                                      {Q_VALUES: q, WALL_HIDDEN: extras["hidden"]}))
                updates += 1
            recent = recent[-50:]
            if steps >= next_line or steps >= options.steps:
                next_line = (steps // every + 1) * every
                log(f"  fit {min(steps, options.steps)}/{options.steps} env steps, {episodes} episodes, "
                    f"{updates} updates{_loss_text(recent)} ({time.perf_counter() - t0:.0f}s)")
    finally:
        runner.attack = stashed
        models.eval()
    summary = {"env_steps": int(steps), "episodes": int(episodes), "updates": int(updates),
               "seconds": round(time.perf_counter() - t0, 1), "losses": _mean_losses(recent)}
    return models, summary


def _mean_losses(recent: list[dict]) -> dict:
    if not recent:
        return {}
    return {k.replace("wall_", ""): round(float(np.mean([r[k] for r in recent])), 5) for k in recent[0]}


def _loss_text(recent: list[dict]) -> str:
    m = _mean_losses(recent[-20:])
    if not m:
        return ""
    return (f", planning loss {m['planning_loss']:.4f}, Q-diff loss {m['qdiff_loss']:.4f}, "
            f"ΔQ label mean {m['delta_q_mean']:.4f}")


def save_attacker(path: str, models: AttackerModels, meta: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"format": FORMAT_VERSION, "dims": models.dims, "wall_cfg": models.wall_cfg,
                "qdiff_transformer": models.qdiff_transformer.state_dict(),
                "planning_transformer": models.planning_transformer.state_dict(), "meta": dict(meta)}, tmp)
    os.replace(tmp, path)
    return path


def load_attacker(path: str, victim) -> tuple[AttackerModels, dict]:
    """The models saved at ``path`` for ``victim`` (its sizes must match); returns ``(models, meta)``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a broken file: say which and how to redo it
        raise MarlxError(f"cannot read the saved attacker {path} ({e}); pass --refit to fit a new one") from None
    dims = victim_dims(victim)
    if data.get("dims") != dims:
        raise MarlxError(f"the saved attacker {path} was fitted for a policy of other sizes ({data.get('dims')} vs "
                         f"{dims}); pass --refit to fit one for this checkpoint")
    models = AttackerModels(victim, dims, data.get("wall_cfg"))
    models.qdiff_transformer.load_state_dict(data["qdiff_transformer"])
    models.planning_transformer.load_state_dict(data["planning_transformer"])
    models.eval()
    return models, dict(data.get("meta", {}))
