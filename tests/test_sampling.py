"""The sampler against the distributions it should draw from, and the generation loop's stops."""
import numpy as np
import pytest

from runtime_py.sampling import Sampler, Sampling, generate_tokens

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))


def _freqs(sampling, n=20_000):
    s = Sampler(sampling)
    return np.bincount([s(LOGITS) for _ in range(n)], minlength=len(LOGITS)) / n


def test_greedy_is_argmax():
    assert Sampler()(np.array([0.1, 3.0, -1.0])) == 1


def test_temperature_one_draws_from_softmax():
    assert np.abs(_freqs(Sampling(temperature=1.0, seed=0)) - np.exp(LOGITS)).max() < 0.015


def test_temperature_sharpens():
    p = np.exp(LOGITS / 0.5) / np.exp(LOGITS / 0.5).sum()
    assert np.abs(_freqs(Sampling(temperature=0.5, seed=1)) - p).max() < 0.015


def test_top_k_renormalises_over_the_k_best():
    p = np.exp(LOGITS[:2]) / np.exp(LOGITS[:2]).sum()
    f = _freqs(Sampling(temperature=1.0, top_k=2, seed=2))
    assert f[2:].sum() == 0 and np.abs(f[:2] - p).max() < 0.015


def test_top_p_keeps_the_smallest_set_reaching_p():
    f = _freqs(Sampling(temperature=1.0, top_p=0.8, seed=3))     # 0.5 + 0.25 < 0.8 <= 0.9
    p = np.exp(LOGITS[:3]) / np.exp(LOGITS[:3]).sum()
    assert f[3:].sum() == 0 and np.abs(f[:3] - p).max() < 0.015


def test_seed_makes_sampling_repeatable():
    assert [Sampler(Sampling(1.0, seed=7))(LOGITS) for _ in range(5)] == \
           [Sampler(Sampling(1.0, seed=7))(LOGITS) for _ in range(5)]


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="--t"):
        Sampling(**bad)


def test_loop_stops_at_stop_token_and_counts_positions():
    calls = []

    def step(tokens, start):
        calls.append((list(tokens), start))
        out = np.zeros(10)
        out[[5, 6, 9][len(calls) - 1]] = 1.0      # emits 5, 6, then the stop id 9
        return out

    assert generate_tokens(step, [1, 2, 3], 10, stop_ids=[9]) == [5, 6]
    assert calls == [([1, 2, 3], 0), ([5], 3), ([6], 4)]


def test_loop_respects_max_new_tokens():
    assert generate_tokens(lambda t, s: np.eye(4)[2], [1], 3) == [2, 2, 2]
