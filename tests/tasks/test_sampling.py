"""Task samplers: which tasks each step feeds, their empirical frequencies, and resuming."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from polytask.tasks.sampling import SAMPLERS, Sampler

SIZES = {"small": 100, "medium": 300, "large": 600}
DRAWS = 4000
TOLERANCE = 0.03  # ~4 standard deviations of a frequency estimated from 4000 draws


def make(name: str, total_steps: int = 100, seed: int = 0, **options: float) -> Sampler:
    return SAMPLERS.get(name)(SIZES, total_steps, seed, **options)


def sequence(sampler: Sampler, start: int, steps: int) -> list[list[str]]:
    return [sampler.tasks_for_step(step) for step in range(start, start + steps)]


def frequencies(sampler: Sampler, step: int | None = None) -> dict[str, float]:
    counts = Counter(
        task for i in range(DRAWS)
        for task in sampler.tasks_for_step(i if step is None else step)
    )
    return {name: counts[name] / DRAWS for name in SIZES}


def normalised(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def assert_close(observed: dict[str, float], expected: dict[str, float]) -> None:
    for name in SIZES:
        assert observed[name] == pytest.approx(expected[name], abs=TOLERANCE), (
            name, observed, expected)


def test_registered_samplers() -> None:
    assert set(SAMPLERS.names()) >= {
        "all", "annealed", "proportional", "round_robin", "temperature", "uniform"}
    assert [n for n in SAMPLERS.names() if SAMPLERS.get(n).feeds_all_tasks] == ["all"]


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_only_known_tasks_and_deterministic_for_a_seed(name: str) -> None:
    first = sequence(make(name, seed=3), 0, 60)
    again = sequence(make(name, seed=3), 0, 60)
    assert first == again
    assert all(step and set(step) <= set(SIZES) for step in first)
    if not make(name).feeds_all_tasks:
        assert all(len(step) == 1 for step in first)


@pytest.mark.parametrize("name", ["proportional", "uniform", "temperature", "annealed"])
def test_random_samplers_depend_on_the_seed(name: str) -> None:
    assert sequence(make(name, seed=0), 0, 60) != sequence(make(name, seed=1), 0, 60)


def test_all_returns_every_task_every_step() -> None:
    sampler = make("all")
    assert sampler.feeds_all_tasks
    assert sequence(sampler, 0, 5) == [list(SIZES)] * 5


def test_round_robin_cycles() -> None:
    sampler = make("round_robin")
    assert [s[0] for s in sequence(sampler, 0, 7)] == [
        "small", "medium", "large", "small", "medium", "large", "small"]
    assert sampler.tasks_for_step(302) == ["large"]  # depends on the step, not on history


def test_proportional_frequencies() -> None:
    assert_close(frequencies(make("proportional")), normalised(SIZES))


def test_uniform_frequencies() -> None:
    assert_close(frequencies(make("uniform")), dict.fromkeys(SIZES, 1 / 3))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_temperature_frequencies(temperature: float) -> None:
    sampler = make("temperature", temperature=temperature)
    expected = normalised({k: v ** (1 / temperature) for k, v in SIZES.items()})
    assert_close(frequencies(sampler), expected)


def test_temperature_default_and_probabilities() -> None:
    sampler = make("temperature")
    assert sampler.temperature == 2.0
    p = sampler.probabilities(0)
    assert torch.allclose(p, torch.tensor([10.0, 300**0.5, 600**0.5]))


def test_annealed_moves_from_proportional_towards_uniform() -> None:
    total = 1000
    start = make("annealed", total_steps=total, decay=0.8)
    assert_close(frequencies(start, step=0), normalised(SIZES))
    end = make("annealed", total_steps=total, decay=0.8)
    expected = normalised({k: v ** 0.2 for k, v in SIZES.items()})
    assert_close(frequencies(end, step=total - 1), expected)
    middle = end.probabilities((total - 1) // 2)
    alpha = 1 - 0.8 * ((total - 1) // 2) / (total - 1)
    assert torch.allclose(middle, torch.tensor([float(v) for v in SIZES.values()]) ** alpha)


def test_annealed_decay_zero_is_proportional_throughout() -> None:
    sampler = make("annealed", total_steps=10, decay=0.0)
    assert torch.allclose(sampler.probabilities(9), sampler.sizes)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_state_dict_resumes_the_same_sequence(name: str) -> None:
    sampler = make(name, seed=7)
    sequence(sampler, 0, 10)
    state = sampler.state_dict()
    expected = sequence(sampler, 10, 30)
    resumed = make(name, seed=12345)  # the saved state, not the seed, decides
    resumed.load_state_dict(state)
    assert sequence(resumed, 10, 30) == expected


def test_state_dict_is_a_snapshot() -> None:
    sampler = make("proportional", seed=1)
    state = sampler.state_dict()
    first = sequence(sampler, 0, 20)
    sampler.load_state_dict(state)
    assert sequence(sampler, 0, 20) == first


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_invalid_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"sampler\.temperature must be > 0"):
        make("temperature", temperature=temperature)


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_invalid_decay(decay: float) -> None:
    with pytest.raises(ValueError, match=r"sampler\.decay must be in \[0, 1\]") as info:
        make("annealed", decay=decay)
    assert str(decay) in str(info.value)
