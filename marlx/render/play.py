"""Greedy episodes of a saved checkpoint, stepped here in a small loop and rendered frame by frame.

The player loads the RLModule(s) from the checkpoint's learner component and steps a fresh team env itself: no
env runner, no Ray. Two kinds of checkpoints:

* team algorithms (QMIX, VDN, FoX, ...; ``marlx_team_algorithm``): one module acting for the whole team,
  ``module.forward_inference({OBS: {leaf: [1, ...]}, STATE_IN: {k: [1, ...]}})`` -> ``ACTIONS`` (the joint action),
  the recurrent ``STATE_OUT`` fed back the next step; the batch convention of ``marlx.runtime`` (no time axis).
* per-agent RLlib algorithms (PPO, ...) on the env's ``multi_agent`` view: each agent's module, greedy over its
  action-distribution inputs.

Attacks plug in two ways: ``play(..., attack=spec)`` runs a :mod:`marlx.attacks` attack (the runtime's ``attack``
entry, e.g. ``{"name": "wolfpack", "budget": 8}``) on the team module exactly as the env runner's action-time seam
does (same :class:`~marlx.attacks.base.AttackContext`: module, observations, recurrent state, the module's outputs);
``play(..., action_hook=...)`` is a plain function hook. Either returns the executed joint action and the per-agent
``attacked`` mask, which the frames mark.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from marlx.errors import MarlxError

#: ``(t, team_obs, intended_actions) -> (executed_actions, attacked [n_agents] bool)``: the seam for attacks.
ActionHook = Callable[[int, dict, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class EpisodeRecord:
    """What one played episode did."""

    ret: float = 0.0
    length: int = 0
    success: bool = False
    #: steps at which at least one agent's action was replaced by an attack
    attacked_steps: int = 0
    frames: list = field(default_factory=list)
    #: how it ended: "success", "terminated", "time limit" or "max steps"
    outcome: str = ""
    #: with ``play(trace=True)``: one dict per step (``t``, executed ``actions``, ``attacked`` agents, ``reward``,
    #: ``return``)
    steps: list = field(default_factory=list)


def team_forward(module, obs: dict, state_in: dict | None, n_agents: int, with_outputs: bool = False):
    """One greedy step of a team module for one env: ``-> (joint action [n] int64, state_out)`` (and the batch and
    the module's outputs with ``with_outputs``); the batch has the team runtime's layout (``[1, ...]`` leaves, no
    time axis)."""
    import torch
    from ray.rllib.core.columns import Columns

    batch = {Columns.OBS: {k: torch.as_tensor(np.asarray(v, np.float32))[None] for k, v in obs.items()}}
    if state_in is not None:
        batch[Columns.STATE_IN] = state_in
    with torch.no_grad():
        out = module.forward_inference(batch)
    actions = np.asarray(out[Columns.ACTIONS].detach().cpu(), np.int64).reshape(-1)
    if actions.shape[0] != n_agents:
        raise MarlxError(f"{type(module).__name__} returned {actions.shape[0]} actions for {n_agents} agents: "
                         "the module and the env of this checkpoint do not match")
    if with_outputs:
        return actions, out.get(Columns.STATE_OUT, state_in), batch, out
    return actions, out.get(Columns.STATE_OUT, state_in)


def _batched_state(module) -> dict | None:
    if not module.is_stateful():
        return None
    import torch

    return {k: torch.as_tensor(v)[None] for k, v in module.get_initial_state().items()}


class CheckpointPlayer:
    """Plays greedy episodes of a checkpoint on a fresh copy of its training env.

    Args:
        checkpoint: a checkpoint folder (or a run folder: its newest checkpoint).
        algo: the algorithm the user expects (checked against the checkpoint).
        render: make the env so that it can render (e.g. MPE's ``render_mode="rgb_array"``).
        env_config: overrides of the checkpoint's env config.
    """

    def __init__(self, checkpoint: str, algo: str | None = None, render: bool = True, env_config: dict | None = None):
        from marlx.cli.evaluate import checkpoint_config, find_checkpoint
        from marlx.cli.experiment import is_team_algorithm
        from marlx.envs.registry import VIEW_KEY, is_registered, make_env
        from marlx.render.families import render_env_config

        self.path = find_checkpoint(checkpoint)
        self.algo_class, self.config = checkpoint_config(self.path, algo)
        env = self.config.env
        if not isinstance(env, str) or not is_registered(env):
            raise MarlxError(f"{self.path}: its env {env!r} is not a marlx env; videos are made of marlx envs only")
        self.env_name = env
        cfg = dict(self.config.env_config or {})
        view = cfg.pop(VIEW_KEY, "team")
        cfg.update(env_config or {})
        if render:
            cfg.update(render_env_config(env))
        self.team = make_env(env, **cfg)
        self.team_algorithm = is_team_algorithm(self.algo_class) or view == "team"
        self.modules = self._load_modules()
        if self.team_algorithm:
            self.module = next(iter(self.modules.values())) if len(self.modules) == 1 else self.modules["default_policy"]
            self.agent_view = None
        else:
            from marlx.envs.convert import TeamToMultiAgentEnv

            self.agent_view = TeamToMultiAgentEnv(self.team)
            self.agent_modules = [self._module_of(a) for a in self.agent_view.agents]

    def _load_modules(self) -> dict:
        from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
        from ray.rllib.core.rl_module.rl_module import RLModule

        path = os.path.join(self.path, "learner_group", "learner", "rl_module")
        if not os.path.isdir(path):
            raise MarlxError(f"{self.path} holds no learner module (no learner_group/learner/rl_module); "
                             "pass a checkpoint written by Algorithm.save_to_path or by marlx train")
        loaded = RLModule.from_checkpoint(path)
        modules = dict(loaded.items()) if isinstance(loaded, MultiRLModule) else {"default_policy": loaded}
        for m in modules.values():
            m.eval()
        return modules

    def _module_of(self, agent_id: str):
        fn = getattr(self.config, "policy_mapping_fn", None)
        if len(self.modules) == 1 or fn is None:
            return next(iter(self.modules.values()))
        try:
            return self.modules[fn(agent_id, None)]
        except Exception:  # a mapping fn that needs the episode: fall back to the shared module, if any
            if "shared" in self.modules:
                return self.modules["shared"]
            raise MarlxError(f"cannot tell which module of {sorted(self.modules)} acts for {agent_id}") from None

    def _agent_actions(self, agent_obs: dict) -> np.ndarray:
        import torch
        from ray.rllib.core.columns import Columns

        actions = np.zeros(self.team.n_agents, np.int64)
        for i, a in enumerate(self.agent_view.agents):
            m = self.agent_modules[i]
            if m.is_stateful():
                raise MarlxError("--video plays recurrent per-agent RLlib modules not yet; team algorithms only")
            o = agent_obs[a]
            leaf = ({k: torch.as_tensor(np.asarray(v, np.float32))[None] for k, v in o.items()} if isinstance(o, dict)
                    else torch.as_tensor(np.asarray(o, np.float32))[None])
            with torch.no_grad():
                out = m.forward_inference({Columns.OBS: leaf})
            if Columns.ACTIONS in out:
                actions[i] = int(np.asarray(out[Columns.ACTIONS]).reshape(-1)[0])
            else:
                actions[i] = int(out[Columns.ACTION_DIST_INPUTS].reshape(-1).argmax())
        return actions

    def attack_spec(self, attack: str | None, budget: int | None) -> dict | None:
        """The attack entry ``marlx evaluate --attack ATTACK --budget K`` builds for this checkpoint (None: none)."""
        if attack in (None, "none"):
            return None
        from marlx.cli.evaluate import attack_spec

        return attack_spec(attack, budget, self.algo_class)

    def make_attack(self, spec: dict | None, seed: int = 0):
        """The :mod:`marlx.attacks` attack of ``spec`` for this player's team module (one env), or None."""
        if spec is None:
            return None
        if not self.team_algorithm:
            raise MarlxError(f"{self.algo_class.__name__} does not run on marlx's team runner, so it cannot be attacked")
        from marlx.attacks.base import make_attack

        n_actions = int(self.team.action_space.nvec[0])
        return make_attack(spec, 1, self.team.n_agents, n_actions, seed=seed)

    def _attack_hook(self, attack, t: int, batch: dict, out: dict, actions: np.ndarray):
        """One step of ``attack`` on this env, as the env runner's seam calls it (rows = this one env)."""
        from ray.rllib.core.columns import Columns

        from marlx.attacks.base import AttackContext
        from marlx.runtime.columns import ATTACKED

        obs = batch[Columns.OBS]
        avail = obs.get("avail")
        ctx = AttackContext(module=self.module, obs=obs, state_in=batch.get(Columns.STATE_IN, {}), outputs=out,
                            actions=actions[None], avail=None if avail is None else avail.numpy(),
                            t=np.array([t]), env_indices=np.array([0]), explore=False)
        executed, extras = attack(ctx)
        executed = np.asarray(executed, np.int64).reshape(actions.shape)
        attacked = np.asarray(extras.get(ATTACKED, executed != actions), bool).reshape(-1)
        return executed, attacked

    def play(self, episodes: int = 1, seed: int = 0, render: bool = True, action_hook: ActionHook | None = None,
             max_steps: int | None = None, attack: dict | None = None, trace: bool = False) -> list[EpisodeRecord]:
        """Play ``episodes`` greedy episodes (episode ``k`` reset with ``seed + k``); frames when ``render``, every
        step's actions and reward in ``EpisodeRecord.steps`` when ``trace``.

        ``attack``: an attack spec (``{"name": ..., **options}``) run at the action-time seam of every step;
        attacked steps and agents are marked in the frames and counted in ``EpisodeRecord.attacked_steps``."""
        from marlx.render.draw import add_caption
        from marlx.render.families import frame

        attacker = self.make_attack(attack, seed=seed)
        records = []
        for k in range(episodes):
            rec = EpisodeRecord()
            if attacker is not None:
                attacker.begin_episode(0)
            team_obs, _ = self.team.reset(seed=seed + k)
            agent_obs = self.agent_view._split(team_obs) if self.agent_view is not None else None
            state_in = _batched_state(self.module) if self.team_algorithm else None
            head = f"episode {k + 1}/{episodes}"
            if render:
                rec.frames.append(add_caption(frame(self.team), [f"{head} | step 0", "return 0.00"]))
            while True:
                attacked = None
                if self.team_algorithm:  # an attack needs a team module (make_attack checks it)
                    actions, next_state, batch, out = team_forward(self.module, team_obs, state_in,
                                                                   self.team.n_agents, with_outputs=True)
                    if attacker is not None:
                        actions, attacked = self._attack_hook(attacker, rec.length, batch, out, actions)
                    state_in = next_state
                else:
                    actions = self._agent_actions(agent_obs)
                if action_hook is not None:
                    actions, attacked = action_hook(rec.length, team_obs, actions)
                if attacked is not None and np.any(attacked):
                    rec.attacked_steps += 1
                team_obs, reward, terminated, truncated, info = self.team.step(actions)
                if self.agent_view is not None:
                    agent_obs = self.agent_view._split(team_obs)
                rec.ret += float(reward)
                rec.length += 1
                done = terminated or truncated or (max_steps is not None and rec.length >= max_steps)
                if trace:
                    hit = np.zeros(len(actions), bool) if attacked is None else np.asarray(attacked, bool).reshape(-1)
                    rec.steps.append({"t": rec.length, "actions": [int(a) for a in actions],
                                      "attacked": [int(i) for i in np.flatnonzero(hit)],
                                      "reward": float(reward), "return": rec.ret})
                if render:
                    lines = [f"{head} | step {rec.length}", f"reward {reward:+.2f} | return {rec.ret:.2f}"]
                    if done:
                        lines[1] += " | " + ("success" if info.get("success") else
                                             ("terminated" if terminated else "time limit"))
                    rec.frames.append(add_caption(frame(self.team, attacked, actions=actions), lines, attacked))
                if done:
                    rec.success = bool(info.get("success", False))
                    rec.outcome = ("success" if rec.success else "terminated" if terminated else
                                   "time limit" if truncated else "max steps")
                    break
            records.append(rec)
        return records

    def close(self) -> None:
        self.team.close()


def trace_episodes(checkpoint: str, episodes: int = 1, seed: int = 0, algo: str | None = None,
                   attack: str | None = None, budget: int | None = None) -> dict:
    """Play greedy episodes of ``checkpoint`` here (no Ray) and return every step: what the policy does.

    Returns ``{"checkpoint", "algorithm", "env", "action_names", "attack", "episodes": [{"return", "length",
    "success", "outcome", "steps": [{"t", "actions", "attacked", "reward", "return"}]}]}``; ``action_names`` is the
    env's names of its actions (``TeamEnv.action_names``) or None; ``attack`` the attack spec or None. The
    attack options are those of :func:`record_video`."""
    player = CheckpointPlayer(checkpoint, algo=algo, render=False)
    spec = player.attack_spec(attack, budget)
    try:
        records = player.play(episodes, seed=seed, render=False, attack=spec, trace=True)
        names = getattr(player.team, "action_names", None)
    finally:
        player.close()
    return {
        "checkpoint": player.path, "algorithm": player.algo_class.__name__, "env": player.env_name,
        "action_names": None if names is None else list(names), "attack": spec, "seed": seed,
        "episodes": [{"return": r.ret, "length": r.length, "success": r.success, "outcome": r.outcome,
                      "steps": r.steps} for r in records],
    }


def format_trace(res: dict) -> str:
    """``trace_episodes``'s result as a table per episode: step, each agent's action (by name; ``*`` marks an
    attacked agent), reward and return, and how the episode ended."""
    names = res.get("action_names")
    lines = []
    n = len(res["episodes"])
    for k, ep in enumerate(res["episodes"]):
        head = f"{res['algorithm']} on {res['env']}: greedy episode {k + 1}/{n} (reset seed {res['seed'] + k})"
        if res.get("attack"):
            head += f", attacked by {res['attack']['name']}"
        lines.append(head)
        lines.append(f"  {'step':>4}  {'actions (agent 0, 1, ...)':<44} {'reward':>8} {'return':>8}")
        for st in ep["steps"]:
            acts = ", ".join((names[a] if names is not None and a < len(names) else str(a))
                             + ("*" if i in st["attacked"] else "") for i, a in enumerate(st["actions"]))
            lines.append(f"  {st['t']:>4}  {acts:<44} {st['reward']:>+8.3f} {st['return']:>8.3f}")
        lines.append(f"  ended after {ep['length']} steps: {ep['outcome']}, return {ep['return']:.3f}")
    return "\n".join(lines)


def record_video(checkpoint: str, path: str, episodes: int = 1, fps: float = 4.0, seed: int = 0,
                 algo: str | None = None, attack: str | None = None, budget: int | None = None) -> dict:
    """Play greedy episodes of ``checkpoint`` and write them to ``path`` (.mp4 or .gif) as one video.

    With ``attack`` ("random" or "wolfpack", ``budget`` attacked steps per episode; the same attack entry as
    ``marlx evaluate --attack`` builds) the episodes are attacked and the frames mark the attacked agents.
    Returns the evaluation summary of :func:`marlx.cli.evaluate.evaluate_checkpoint` plus ``video`` and ``frames``
    (and ``attack`` and ``attacked_steps_mean`` when attacked).
    """
    from marlx.render.video import check_video_path, write_video

    check_video_path(path)
    player = CheckpointPlayer(checkpoint, algo=algo, render=True)
    spec = player.attack_spec(attack, budget)
    try:
        records = player.play(episodes, seed=seed, render=True, attack=spec)
    finally:
        player.close()
    frames = [f for r in records for f in r.frames]
    write_video(frames, path, fps=fps)
    return {
        "checkpoint": player.path,
        "algorithm": player.algo_class.__name__,
        "env": player.env_name,
        "episodes": len(records),
        "return_mean": float(np.mean([r.ret for r in records])),
        "success_rate": float(np.mean([r.success for r in records])),
        "length_mean": float(np.mean([r.length for r in records])),
        "video": os.path.abspath(path),
        "frames": len(frames),
        **({"attack": spec, "attacked_steps_mean": float(np.mean([r.attacked_steps for r in records]))}
           if spec is not None else {}),
    }
