"""TD targets: termination stops the bootstrap, truncation keeps it, padding is masked; TD(lambda), n-step."""

import numpy as np
import pytest
import torch

from marlx.algorithms.qmix.targets import (
    compute_targets,
    n_step_targets,
    one_step_targets,
    td_lambda_targets,
)

G = 0.9


def batch():
    """Two episodes padded to T=4: ep0 terminates after 2 steps, ep1 is truncated after 3 steps."""
    r = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.5, 0.0, 1.0, 0.0]])
    term = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]])  # Q(s_{t+1})
    return r, term, mask, v


def test_one_step_bootstraps_on_truncation_not_on_termination():
    r, term, mask, v = batch()
    y = one_step_targets(r, term, mask, v, G)
    expected = torch.tensor([[1 + G * 10, 2.0, 0, 0], [0.5 + G * 5, 0 + G * 6, 1 + G * 7, 0]])
    assert torch.allclose(y, expected)


def test_td_lambda_zero_and_one_limits():
    r, term, mask, v = batch()
    assert torch.allclose(td_lambda_targets(r, term, mask, v, G, 0.0), one_step_targets(r, term, mask, v, G))
    mc = td_lambda_targets(r, term, mask, v, G, 1.0)
    # lambda = 1: discounted return to the end, bootstrapping from Q(s_L) only for the truncated episode
    assert mc[0, 0].item() == pytest.approx(1 + G * 2)
    assert mc[0, 1].item() == pytest.approx(2.0)
    assert mc[1, 0].item() == pytest.approx(0.5 + G * 0 + G**2 * 1 + G**3 * 7)
    assert mc[1, 2].item() == pytest.approx(1 + G * 7)
    assert (mc * (1 - mask) == 0).all()


def test_td_lambda_matches_recursive_definition():
    r, term, mask, v = batch()
    lam = 0.6
    y = td_lambda_targets(r, term, mask, v, G, lam)
    # episode 1 by hand: G2 = r2 + g*v2 (last step, truncated), G1 = r1 + g[(1-l)v1 + l G2], ...
    g2 = 1 + G * 7
    g1 = 0 + G * ((1 - lam) * 6 + lam * g2)
    g0 = 0.5 + G * ((1 - lam) * 5 + lam * g1)
    assert y[1, :3].tolist() == pytest.approx([g0, g1, g2], rel=1e-6)
    assert y[0, :2].tolist() == pytest.approx([1 + G * ((1 - lam) * 10 + lam * 2.0), 2.0], rel=1e-6)


def test_n_step():
    r, term, mask, v = batch()
    assert torch.allclose(n_step_targets(r, term, mask, v, G, 1), one_step_targets(r, term, mask, v, G))
    y = n_step_targets(r, term, mask, v, G, 2)
    assert y[0, 0].item() == pytest.approx(1 + G * 2)  # terminates inside the window
    assert y[1, 0].item() == pytest.approx(0.5 + G * 0 + G**2 * 6)
    assert y[1, 1].item() == pytest.approx(0 + G * 1 + G**2 * 7)
    assert y[1, 2].item() == pytest.approx(1 + G * 7)  # data ends: bootstrap early (truncation)
    assert y[1, 3].item() == 0
    # large n equals lambda = 1
    assert torch.allclose(n_step_targets(r, term, mask, v, G, 10), td_lambda_targets(r, term, mask, v, G, 1.0))


def test_compute_targets_dispatch():
    r, term, mask, v = batch()
    assert torch.allclose(compute_targets(r, term, mask, v, G, 0.6), td_lambda_targets(r, term, mask, v, G, 0.6))
    assert torch.allclose(compute_targets(r, term, mask, v, G, 0.0, 3), n_step_targets(r, term, mask, v, G, 3))
    assert np.allclose(compute_targets(r, term, mask, v, G).numpy(), one_step_targets(r, term, mask, v, G).numpy())
