"""WALL (Lee, Hwang, Jo, Han, ICML 2025): QMIX trained against the Wolfpack adversarial attack.

``run: WALL`` in YAML; the config inherits QMIX's. Every training episode is attacked by Wolfpack with the
training budget (``num_attack_train`` 12 steps, QMIX preset); evaluation episodes by default with the test budget
(``num_attack_test`` 8). The victim acts greedily: the released code forces ε = 0 in attacked episodes
(``components/action_selectors.py:75``), so WALL's ε schedule defaults to 0 → 0. Intended and executed actions are
both stored; the TD loss uses the intended ones over the attack-induced transitions. The Q-difference and planning
transformers train every update (:class:`~marlx.algorithms.wall.learner.WALLLearner`).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import numpy as np
import torch
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID

from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from marlx.algorithms.qmix.qmix import QMIX, QMIXConfig
from marlx.attacks.evaluation import natural_and_attacked
from marlx.attacks.wolfpack import ATTACKER_ACTIONS, FOLLOWUP_AGENTS, HIDDEN_STATES, INITIAL_AGENT
from marlx.callbacks import SUCCESS_METRIC
from marlx.errors import NotACheckpointError
from marlx.runtime.columns import EXECUTED_ACTIONS
from marlx.runtime.replay import TeamEpisodeReplay
from marlx.algorithms.wall.learner import WALLLearner
from marlx.algorithms.wall.module import WALL_MODEL_DEFAULTS, WALLRLModule

logger = logging.getLogger(__name__)

#: budgets of the released presets: (train, test) attacked steps per episode (spec §12, §0 #2)
BUDGET_PRESETS = {"qmix": (12, 8), "vdn": (16, 12)}

_WALL_OPTIONS = (
    "num_attack_train", "num_attack_test", "attack_duration", "temperature", "num_followup_agents",
    "init_agent_random", "followup_l2", "init_attack_step_method", "wall_planning_lr", "wall_qdiff_lr",
    "wall_faithful", "restore_from", "restore_optimizer", "test_attack", "attack_train_episode_prob",
    *WALL_MODEL_DEFAULTS,
)


def _saved_optimizer_state(ckpt: str) -> dict | None:
    """The RL optimiser's ``state_dict`` (numpy leaves) saved in a checkpoint's learner state, or None."""
    path = os.path.join(ckpt, "learner_group", "learner", "state.pkl")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        state = pickle.load(f)
    entry = (state.get("optimizer") or {}).get(f"{DEFAULT_POLICY_ID}_default_optimizer")
    return None if entry is None else entry["state"]


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> str:
    """Load ``saved`` into ``optimizer`` when it fits (same kind of buffers, one per parameter, same shapes);
    return "" on success, else what did not fit."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_params = [i for group in saved["param_groups"] for i in group["params"]]
    if len(saved_params) != len(params):
        return f"{len(saved_params)} saved parameters, {len(params)} here"
    kind = "square_avg" if isinstance(optimizer, torch.optim.RMSprop) else "exp_avg"
    state = {}
    for index, param in zip(saved_params, params):
        buffers = saved["state"].get(index)
        if buffers is None:
            continue
        if kind not in buffers:
            return f"the checkpoint's optimiser is not {type(optimizer).__name__}"
        if tuple(np.shape(buffers[kind])) != tuple(param.shape):
            return f"parameter {index}: shape {tuple(np.shape(buffers[kind]))} saved, {tuple(param.shape)} here"
        state[index] = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in buffers.items()}
    own = optimizer.state_dict()
    order = [i for group in own["param_groups"] for i in group["params"]]
    optimizer.load_state_dict({"state": {order[n]: state[i] for n, i in enumerate(saved_params) if i in state},
                               "param_groups": own["param_groups"]})
    return ""


class WALLConfig(QMIXConfig):
    """QMIX's config plus WALL's (defaults: ``config/algs/wall_qmix.yaml`` of the released code)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or WALL)
        # the victim is greedy in every (attacked) training episode: ε forced to 0 as released
        #: ε at env step 0 (WALL: 0; the released yaml's ε keys have no effect)
        self.epsilon_start = 0.0
        #: ε after annealing (WALL: 0)
        self.epsilon_finish = 0.0
        #: attacked steps per training episode (``num_attack_train``; QMIX 12, VDN preset 16)
        self.num_attack_train: int = 12
        #: attacked steps per attacked evaluation episode (``num_attack_test``; QMIX 8, VDN preset 12)
        self.num_attack_test: int = 8
        #: follow-up steps t_WP after an initial attack (``attack_duration``)
        self.attack_duration: int = 3
        #: softmax temperature of the start draw (``temperature``)
        self.temperature: float = 0.5
        #: follow-up group size m (``num_followup_agents``)
        self.num_followup_agents: int = 2
        #: initial agent uniformly at random (``init_agent_random``)
        self.init_agent_random: bool = True
        #: follow-ups by nearest observations (``followup_l2``)
        self.followup_l2: bool = False
        #: "planner" or "random" (``init_attack_step_method``)
        self.init_attack_step_method: str = "planner"
        #: Adam lr of the planning transformer (``lr``, ``q_learner.py:43``)
        self.wall_planning_lr: float = 5e-4
        #: Adam lr of the Q-difference transformer (``lr``, ``q_learner.py:46``)
        self.wall_qdiff_lr: float = 5e-4
        #: reproduce the released quirks (spec §13): planner time steps t..t+19, follow-up Q from h_t, stored h_t
        #: in the learner, target mixer NOT restored from ``restore_from``
        self.wall_faithful: bool = False
        #: a natural (QMIX) checkpoint to start from: agent, mixer and their targets (the released code, and
        #: ``wall_faithful``, leave the target mixer random until the first hard update); None = from scratch
        self.restore_from: str | None = None
        #: with ``restore_from``: also load the natural run's RL optimiser state (the released code restores its
        #: RMSprop state, ``q_learner.py:420-425``); False starts a fresh optimiser
        self.restore_optimizer: bool = True
        #: evaluation attack: "wolfpack" (test budget), "random", "none"
        self.test_attack: str = "wolfpack"
        #: [marlx, not the paper's: the paper and the released code attack every training episode (1.0)] probability
        #: that a training episode is attacked; the others are played naturally (same greedy victim, same ε
        #: schedule) and stored alike. An option for tasks whose short episodes make the training budget most of an
        #: episode (BENCHMARKS.md, issue 13: WALL collapses there when every episode is attacked)
        self.attack_train_episode_prob: float = 1.0
        for key, value in WALL_MODEL_DEFAULTS.items():
            setattr(self, key, value)
        #: "auto": the ``attack`` entry follows the WALL options above (see :attr:`attack`); anything else
        #: (None, or an ``{name: ..., ...}`` dict) is used as given
        self._attack_setting = "auto"

    @property
    def attack(self):
        """The runner's attack: Wolfpack with the training budget, in evaluation with the test budget.

        Set it (``training(attack=...)``, ``evaluation_config: {attack: ...}``) to override.
        """
        setting = getattr(self, "_attack_setting", None)
        if setting != "auto":
            return setting
        if not getattr(self, "in_evaluation", False):
            options = self.wolfpack_options(self.num_attack_train)
            if self.attack_train_episode_prob < 1.0:
                options["episode_prob"] = float(self.attack_train_episode_prob)
            return options
        if self.test_attack == "wolfpack":
            return self.wolfpack_options(self.num_attack_test)
        if self.test_attack == "random":
            return {"name": "random", "budget": int(self.num_attack_test)}
        return None

    @attack.setter
    def attack(self, value) -> None:
        self._attack_setting = value

    def training(self, **kwargs) -> "WALLConfig":
        wall = {k: kwargs.pop(k) for k in list(kwargs) if k in _WALL_OPTIONS}
        super().training(**kwargs)
        for key, value in wall.items():
            setattr(self, key, value)
        return self

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        # Private AlgorithmConfig hook (Ray 2.60), the one QMIXConfig extends: config -> model_config.
        return super()._model_config_auto_includes | {k: getattr(self, k) for k in WALL_MODEL_DEFAULTS} | {
            "mixer_on_runners": True
        }

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=WALLRLModule)

    def get_default_learner_class(self):
        return WALLLearner

    def wolfpack_options(self, budget: int) -> dict:
        """The ``attack`` entry of the runner config for a Wolfpack attack with ``budget`` steps."""
        return {
            "name": "wolfpack", "budget": int(budget), "attack_duration": self.attack_duration,
            "temperature": self.temperature, "attack_period": self.attack_period,
            "input_len": self.trans_input_len, "num_followup_agents": self.num_followup_agents,
            "init_agent_random": self.init_agent_random, "followup_l2": self.followup_l2,
            "schedule": self.init_attack_step_method, "followup_lr": self.lr, "wall_faithful": self.wall_faithful,
            # the faithful learner reads the runners' stored h_t (the replay then has a hidden_states column)
            "store_hidden": bool(self.wall_faithful),
        }

    def validate(self) -> None:
        errors = []
        if self.init_attack_step_method not in ("planner", "random"):
            errors.append(f"init_attack_step_method must be 'planner' or 'random', got {self.init_attack_step_method!r}")
        if self.num_attack_train < 0 or self.num_attack_test < 0:
            errors.append("num_attack_train and num_attack_test must be >= 0")
        if not 0.0 <= float(self.attack_train_episode_prob) <= 1.0:
            errors.append(f"attack_train_episode_prob must be in [0, 1], got {self.attack_train_episode_prob!r}")
        if self.attack_period > self.trans_input_len:
            errors.append("attack_period must not exceed trans_input_len")
        if self.test_attack not in ("wolfpack", "random", "none"):
            errors.append(f"test_attack must be 'wolfpack', 'random' or 'none', got {self.test_attack!r}")
        if errors:  # before QMIX's checks, which would report the derived attack entry instead
            raise ValueError("invalid WALL config: " + "; ".join(errors))
        super().validate()


class WALL(QMIX):
    """QMIX trained under the Wolfpack attack (see the module docstring).

    Evaluation reports the attacked test episodes under RLlib's usual ``evaluation/env_runners/*`` keys and the
    same number of natural (unattacked) episodes under ``evaluation/natural/*``.
    """

    @classmethod
    def get_default_config(cls) -> WALLConfig:
        return WALLConfig(cls)

    def setup(self, config: WALLConfig) -> None:
        super().setup(config)
        if config.restore_from:
            loaded = self.restore_natural(config.restore_from, with_target_mixer=not config.wall_faithful)
            self.metrics.log_value("wall_restored_tensors", loaded, window=1)

    def restore_natural(self, path: str, with_target_mixer: bool = True) -> int:
        """Load agent, mixer and target agent (and target mixer) from a QMIX/VDN/WALL checkpoint, and the RL
        optimiser's state; sync runners.

        The released code restores agent, target agent, mixer and the RMSprop state but not the target mixer
        (``q_learner.py:420-425``); ``with_target_mixer=False`` does the same. The optimiser state (RMSprop's running
        mean of squared gradients and step count, or Adam's moments) is loaded when the checkpoint's optimiser is of
        the same kind and shapes (``restore_optimizer``): a fresh RMSprop (alpha 0.99) makes its first steps ~10x
        lr per parameter, which throws a trained policy far from where it was.
        """
        from marlx.cli.evaluate import find_checkpoint

        ckpt = find_checkpoint(path)
        state_file = os.path.join(ckpt, "learner_group", "learner", "rl_module", DEFAULT_POLICY_ID, "module_state.pkl")
        if not os.path.isfile(state_file):
            raise NotACheckpointError(f"{ckpt} holds no learner module state ({state_file}); restore_from needs a "
                                      "QMIX, VDN or WALL checkpoint")
        with open(state_file, "rb") as f:
            state = pickle.load(f)
        prefixes = ("agent.", "mixer.", "target_agent.") + (("target_mixer.",) if with_target_mixer else ())
        wanted = {k: v for k, v in state.items() if k.startswith(prefixes)}

        def load(learner):
            module = learner.module[DEFAULT_POLICY_ID].unwrapped()
            own = module.state_dict()
            bad = [k for k, v in wanted.items() if k not in own or tuple(own[k].shape) != tuple(np.shape(v))]
            if bad:
                raise NotACheckpointError(f"{ckpt} does not fit this WALL model (e.g. {bad[0]}); train the natural "
                                          "checkpoint with the same env and network sizes")
            with torch.no_grad():
                for k, v in wanted.items():
                    own[k].copy_(torch.as_tensor(np.asarray(v)))
            return len(wanted)

        results = [r.get() for r in self.learner_group.foreach_learner(load)]
        if self.config.restore_optimizer:
            saved = _saved_optimizer_state(ckpt)
            if saved is None:
                logger.warning("restore_from %s: no optimiser state in the checkpoint; WALL starts a fresh optimiser",
                               ckpt)
            else:
                def load_optimizer(learner):
                    return _load_optimizer_state(learner.get_optimizer(DEFAULT_POLICY_ID), saved)

                problems = [r.get() for r in self.learner_group.foreach_learner(load_optimizer)]
                if problems and problems[0]:
                    logger.warning("restore_from %s: optimiser state not loaded (%s); WALL starts a fresh optimiser",
                                   ckpt, problems[0])
                else:
                    self.metrics.log_value("wall_restored_optimizer", 1, window=1)
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        return int(results[0]) if results else 0

    def make_replay(self, config: WALLConfig) -> TeamEpisodeReplay:
        columns = [EXECUTED_ACTIONS, ATTACKER_ACTIONS, INITIAL_AGENT, FOLLOWUP_AGENTS]
        if config.wall_faithful:
            columns.append(HIDDEN_STATES)
        if config.attack is None:
            columns = []
        return TeamEpisodeReplay(config.buffer_size, config.replay_obs_dtype, seed=config.seed,
                                 extra_columns=columns)

    def evaluate(self, *args, **kwargs):
        results = super().evaluate(*args, **kwargs)
        group = getattr(self, "eval_env_runner_group", None)
        if group is not None and self.config.get_evaluation_config_object().attack is not None:
            cfg = self.config
            n = int(cfg.evaluation_duration) if cfg.evaluation_duration_unit == "episodes" else 32
            natural = natural_and_attacked(group, n, which=("natural",))["natural"]
            results["natural"] = {
                "episode_return_mean": natural["return_mean"], "episode_len_mean": natural["length_mean"],
                SUCCESS_METRIC: natural["success_rate"], "num_episodes": natural["episodes"],
            }
        return results
