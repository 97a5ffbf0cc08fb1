"""Each calibration sampler draws the timesteps it claims, and capture keeps those."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from quantization import calibration
from quantization.calibration import NORMAL_MEAN, NORMAL_STD, draw_steps

T = 1000
SCHEDULE = [float(t) for t in range(T - 1, -1, -1)]  # a 1000-step schedule: the grid hides nothing


def _drawn(sampler: str, n: int = 5000) -> np.ndarray:
    picks = draw_steps(sampler, SCHEDULE, n, np.random.default_rng(0), T)
    return np.array([SCHEDULE[i] for i in picks])


def test_trajectory_keeps_every_step_once():
    assert draw_steps("trajectory", SCHEDULE[::100], 3, np.random.default_rng(0), T) == list(range(10))


def test_uniform_is_uniform_over_the_training_timesteps():
    t = _drawn("uniform")
    assert stats.kstest(t, stats.uniform(loc=0, scale=T).cdf).pvalue > 0.01
    assert stats.kstest(t, stats.norm(loc=NORMAL_MEAN * T, scale=NORMAL_STD * T).cdf).pvalue < 1e-6


def test_normal_is_centred_on_0_4_T():
    t = _drawn("normal")
    assert abs(t.mean() - NORMAL_MEAN * T) < 10
    assert abs(t.std() - NORMAL_STD * T) < 10  # clipping at 0 takes off little (2 sigma away)
    inside = t[(t > 100) & (t < 700)]  # away from the clip, it is the normal law itself
    law = stats.truncnorm((100 - 400) / 200, (700 - 400) / 200, loc=NORMAL_MEAN * T, scale=NORMAL_STD * T)
    assert stats.kstest(inside, law.cdf).pvalue > 0.01


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="unknown calibration sampler 'gauss'"):
        draw_steps("gauss", SCHEDULE, 4, np.random.default_rng(0), T)


@pytest.mark.parametrize("sampler", calibration.SAMPLERS)
def test_capture_keeps_the_drawn_steps_of_the_real_loop(tiny_pipe, sampler):
    captured = calibration.capture(tiny_pipe, ["a red circle"], sampler=sampler, samples=5, steps=10, seed=3)
    tiny_pipe.scheduler.set_timesteps(10)
    schedule = [float(t) for t in tiny_pipe.scheduler.timesteps]
    expected = draw_steps(sampler, schedule, 5, np.random.default_rng(3), T)
    assert sorted(x.t for x in captured) == sorted(schedule[i] for i in expected)
    first = captured[0]
    assert first.sample.shape[0] == 2 and first.timestep.shape == (2,)  # the CFG batch, as the loop runs it
    assert first.encoder_hidden_states.shape[:2] == (2, 77)
