"""Rules of the built-in sparse tasks, checked on hand-built situations, and random play failing them."""

import numpy as np
import pytest

from marlx.envs.builtin.predator_prey import PredatorPreyEnv
from marlx.envs.builtin.push_box import DOWN, LEFT, RIGHT, STAY, UP, PushBoxEnv


def place(env, agents, boxes):
    env.agents[:] = np.array(agents)
    env.boxes[:] = np.array(boxes)
    env.delivered[:] = False


def test_box_moves_only_with_two_pushers_in_the_same_direction():
    env = PushBoxEnv(size=5)
    env.reset(seed=0)
    place(env, agents=[[2, 4], [1, 3]], boxes=[[2, 3]])
    # one pusher: nothing moves, the pusher stays put
    _, r, te, tr, _ = env.step([UP, STAY])
    assert env.boxes.tolist() == [[2, 3]] and env.agents.tolist() == [[2, 4], [1, 3]] and r == 0.0
    # two agents pushing in different directions (up from below, right from the left side): no move
    env.step([UP, RIGHT])
    assert env.boxes.tolist() == [[2, 3]]
    # both push up from below: the box moves up, pushers follow
    place(env, agents=[[2, 4], [2, 4]], boxes=[[2, 3]])
    _, r, te, _, _ = env.step([UP, UP])
    assert env.boxes.tolist() == [[2, 2]] and env.agents.tolist() == [[2, 3], [2, 3]] and r == 0.0 and not te


def test_reward_only_when_box_reaches_goal_edge_then_terminates():
    env = PushBoxEnv(size=5)
    env.reset(seed=0)
    place(env, agents=[[2, 2], [2, 2]], boxes=[[2, 1]])
    obs, r, te, tr, info = env.step([UP, UP])
    assert r == 1.0 and te and not tr and info["success"]
    assert obs["state"][-1] == 1.0  # box0_delivered


def test_box_cannot_leave_the_grid_and_blocks_agents():
    env = PushBoxEnv(size=5)
    env.reset(seed=0)
    place(env, agents=[[3, 2], [3, 2]], boxes=[[4, 2]])
    env.step([RIGHT, RIGHT])  # box at the right edge cannot move right
    assert env.boxes.tolist() == [[4, 2]] and env.agents.tolist() == [[3, 2], [3, 2]]


def test_two_boxes_each_give_reward_and_success_needs_both():
    env = PushBoxEnv(size=6, n_agents=2, n_boxes=2)
    env.reset(seed=0)
    place(env, agents=[[1, 2], [1, 2]], boxes=[[1, 1], [3, 4]])
    _, r, te, _, info = env.step([UP, UP])
    assert r == 1.0 and not te and not info["success"] and info["delivered"] == 1


def test_push_box_state_names_and_avail_mask():
    env = PushBoxEnv(size=5)
    obs, _ = env.reset(seed=0)
    place(env, agents=[[0, 0], [4, 4]], boxes=[[2, 3]])
    avail = env.get_avail_actions()
    assert avail[0].tolist() == [1, 0, 1, 0, 1]  # top-left corner: no up, no left
    assert avail[1].tolist() == [1, 1, 0, 1, 0]
    state = env.get_state()
    names = env.state_names
    assert state[names.index("box0_x")] == pytest.approx(2 / 4) and state[names.index("box0_y")] == pytest.approx(3 / 4)
    assert state[names.index("agent1_x")] == 1.0


def test_predator_prey_capture_needs_two_adjacent_predators():
    env = PredatorPreyEnv(size=5, n_predators=3, n_prey=1, prey_move_prob=0.0)
    env.reset(seed=0)
    env.prey[:] = [[2, 2]]
    env.preds[:] = [[2, 0], [4, 4], [0, 4]]
    _, r, te, _, _ = env.step([DOWN, STAY, STAY])  # one predator next to the prey: no capture
    assert r == 0.0 and env.alive.all() and env.preds[0].tolist() == [2, 1]
    env.preds[:] = [[2, 1], [3, 3], [0, 4]]
    _, r, te, _, info = env.step([STAY, UP, STAY])  # second predator arrives at (3, 2)
    assert r == 1.0 and te and info["success"] and not env.alive.any()


def test_predator_cannot_enter_prey_cell_and_sees_window():
    env = PredatorPreyEnv(size=5, n_predators=2, n_prey=1, obs_radius=1, prey_move_prob=0.0)
    env.reset(seed=0)
    env.prey[:] = [[2, 2]]
    env.preds[:] = [[1, 2], [0, 0]]
    obs, *_ = env.step([RIGHT, STAY])
    assert env.preds[0].tolist() == [1, 2]
    w = 3
    view = obs["obs"][0, :-2].reshape(3, w, w)
    assert view[1, 1, 2] == 1.0  # prey one cell to the right
    corner = obs["obs"][1, :-2].reshape(3, w, w)
    assert corner[2, 0, 0] == 1.0 and corner[2, 1, 1] == 0.0  # outside-the-grid channel


def test_step_penalty_is_added():
    env = PredatorPreyEnv(step_penalty=-0.01, prey_move_prob=0.0)
    env.reset(seed=0)
    env.preds[:] = [[0, 0], [0, 1], [0, 2]]
    env.prey[:] = [[7, 7], [7, 5], [5, 7]]
    _, r, *_ = env.step([STAY, STAY, STAY])
    assert r == pytest.approx(-0.01)


@pytest.mark.parametrize("env_cls", [PushBoxEnv, PredatorPreyEnv])
def test_random_play_fails_at_default_size(env_cls):
    env = env_cls()
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    episodes = successes = 0
    while episodes < 200:
        a = [rng.choice(np.flatnonzero(row)) for row in obs["avail"]]
        obs, r, te, tr, info = env.step(a)
        if te or tr:
            episodes += 1
            successes += info["success"]
            obs, _ = env.reset()
    assert successes / episodes < 0.05


def _toward(pos, goal):
    """The move (push_box action ids) that brings ``pos`` one step closer to ``goal``, x first."""
    if pos[0] != goal[0]:
        return RIGHT if goal[0] > pos[0] else LEFT
    if pos[1] != goal[1]:
        return DOWN if goal[1] > pos[1] else UP
    return STAY


def test_push_box_is_solvable_at_default_size_by_a_scripted_team():
    """Both agents walk to the cell below the box (around it), then push up together every step."""
    env = PushBoxEnv()
    solved = 0
    for seed in range(20):
        env.reset(seed=seed)
        for _ in range(env.episode_limit):
            below = env.boxes[0] + [0, 1]
            acts = []
            for a in env.agents:
                if np.array_equal(a, below):
                    acts.append(UP)
                elif a[1] <= env.boxes[0][1] and a[0] == env.boxes[0][0]:
                    acts.append(RIGHT if a[0] + 1 < env.size else LEFT)  # step aside, do not walk into the box
                elif a[1] <= env.boxes[0][1]:
                    acts.append(DOWN)
                else:
                    acts.append(_toward(a, below))
            _, _, te, tr, info = env.step(acts)
            if te or tr:
                break
        solved += info["success"]
    assert solved == 20


def test_predator_prey_is_solvable_at_default_size_by_a_scripted_team():
    """Pairs of predators chase the same prey and close in from two sides; far better than random play."""
    env = PredatorPreyEnv()
    solved = 0
    for seed in range(40):
        env.reset(seed=seed)
        for _ in range(env.episode_limit):
            target = env.prey[np.flatnonzero(env.alive)[0]]
            sides = [target + [-1, 0], target + [1, 0], target + [0, -1], target + [0, 1]]
            sides = [s for s in sides if (0 <= s).all() and (s < env.size).all()]
            acts = []
            for i, p in enumerate(env.preds):
                goal = sides[i % len(sides)]
                acts.append(_toward(p, goal))
            _, _, te, tr, info = env.step(acts)
            if te or tr:
                break
        solved += info["success"]
    assert solved / 40 > 0.9


def test_push_box_paper_like_mode_single_pusher_is_slow_and_first_box_ends_the_episode():
    env = PushBoxEnv(size=6, mode="paper_like")
    assert env.n_boxes == 2 and env.state_names == [
        "agent0_x", "agent0_y", "agent1_x", "agent1_y", "box0_x", "box0_y", "box1_x", "box1_y"]
    env.reset(seed=0)
    moved = 0
    for _ in range(400):  # one pusher moves the box with probability p_single = 0.25
        place(env, agents=[[2, 4], [0, 0]], boxes=[[2, 3], [4, 3]])
        env.step([UP, STAY])
        moved += env.boxes[0].tolist() == [2, 2]
        assert env.boxes[1].tolist() == [4, 3]
    assert 0.17 < moved / 400 < 0.33
    for _ in range(20):  # two pushers always move it
        place(env, agents=[[2, 4], [2, 4]], boxes=[[2, 3], [4, 3]])
        env.step([UP, UP])
        assert env.boxes[0].tolist() == [2, 2]
    place(env, agents=[[2, 2], [2, 2]], boxes=[[2, 1], [4, 3]])
    obs, r, te, _, info = env.step([UP, UP])  # the first box at the wall: +1 and success
    assert r == 1.0 and te and info["success"] and obs["state"].shape == (8,)


def test_push_box_strict_mode_ignores_single_pushers_with_paper_like_options_off():
    env = PushBoxEnv(size=5, p_single=0.0, mode="strict")
    env.reset(seed=0)
    for _ in range(50):
        place(env, agents=[[2, 4], [0, 0]], boxes=[[2, 3]])
        env.step([UP, STAY])
        assert env.boxes.tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="mode"):
        PushBoxEnv(mode="paper")
