"""Property tests (hypothesis) for the invariants the rest of pareto leans on.

Already covered in tests/test_front.py and not repeated here: the Pareto filter (no kept point dominated, every
dropped point dominated by a kept one: `test_non_dominated_properties`) and hypervolume never decreasing when a
point is added (`test_hypervolume_2d_matches_brute_force_and_is_monotone`, `test_hypervolume_3d_monotone_and_nd_
invariant`). This file adds the strict version: a point no current point dominates, inside the reference box,
strictly increases the hypervolume.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pareto.config import config_from_dict, dump_config, mask_secrets, simplex_problem
from pareto.front.grid import parse_weights, sample_preferences, validate_weights
from pareto.front.metrics import hypervolume, non_dominated_mask

OBJECTIVES = ["helpful", "harmless", "concise"]
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False)


def _normalised(raw: list[float]) -> list[float]:
    total = sum(raw)
    return [x / total for x in raw]


@st.composite
def configs(draw) -> dict:
    """Valid experiment configs: objectives, a per-weight λ grid on the simplex, a reference point, hyper-params."""
    k = draw(st.integers(2, 3))
    objectives = draw(st.permutations(OBJECTIVES))[:k]
    weights = [_normalised(draw(st.lists(positive, min_size=k, max_size=k))) for _ in range(draw(st.integers(1, 4)))]
    return {
        "name": draw(st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True)),
        "seed": draw(st.integers(0, 2**31)),
        "objectives": objectives,
        "methods": {
            "panacea": {"lr": draw(positive), "beta": draw(positive), "max_steps": draw(st.integers(1, 10_000)),
                        "aggregation": draw(st.sampled_from(["linear", "tchebycheff"])),
                        "vertex_prob": draw(st.floats(0, 1))},
            "per_weight_dpo": {"weights": weights, "lora_rank": draw(st.integers(1, 64))},
        },
        "evaluation": {"grid_points": draw(st.integers(2, 12)),
                       "reference_point": draw(st.lists(finite, min_size=k, max_size=k)),
                       "do_sample": draw(st.booleans())},
        "tracking": {"experiment": draw(st.none() | st.text(min_size=1, max_size=12))},
    }


@settings(max_examples=60, deadline=None)
@given(configs())
def test_config_round_trip(data: dict) -> None:
    """dump -> load gives the same config, field for field (floats included: YAML keeps repr precision)."""
    cfg = config_from_dict(data)
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert again.digest("methods", "evaluation") == cfg.digest("methods", "evaluation")
    assert dump_config(again) == dump_config(cfg)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 6).flatmap(lambda k: st.lists(positive, min_size=k, max_size=k)))
def test_simplex_normalisation(raw: list[float]) -> None:
    """Any positive vector divided by its sum is a valid λ for both validators, and stays where it is."""
    k = len(raw)
    lam = _normalised(raw)
    assert simplex_problem(lam, k) is None
    out = validate_weights(lam, k)
    assert out.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(validate_weights(out, k), out)  # idempotent
    # the same λ written as text (as the CLI and the UI take it) parses back to the same values
    assert np.allclose(parse_weights(",".join(repr(x) for x in lam), k), lam)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5).flatmap(lambda k: st.lists(finite, min_size=k, max_size=k)))
def test_simplex_rejects_exactly_the_off_simplex(values: list[float]) -> None:
    """Validators agree: accepted iff non-negative and summing to 1 (within tolerance)."""
    k = len(values)
    on = all(v >= 0 for v in values) and abs(sum(values) - 1.0) <= 1e-6
    assert (simplex_problem(values, k) is None) == on
    if not on:
        with pytest.raises(ValueError):
            validate_weights(values, k)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5), st.integers(1, 50), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_sampled_preferences_are_on_the_simplex(k: int, n: int, vertex_prob: float, seed: int) -> None:
    lam = sample_preferences(np.random.default_rng(seed), k, n, vertex_prob)
    assert lam.shape == (n, k)
    for row in lam:
        assert simplex_problem(row.tolist(), k) is None


coord = st.integers(-16, 16).map(lambda i: i / 4)  # a grid: "strictly larger" is then not lost to rounding


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 3).flatmap(lambda k: st.tuples(
    st.lists(st.lists(coord, min_size=k, max_size=k), min_size=1, max_size=10),
    st.lists(coord, min_size=k, max_size=k))))
def test_hypervolume_strictly_grows_with_a_non_dominated_point(case) -> None:
    points, extra = np.array(case[0]), np.array(case[1])
    ref = np.full(points.shape[1], -5.0)
    together = np.vstack([points, extra])
    # `extra` is on the new front and not equal to any point already there
    assume(non_dominated_mask(together)[-1] and not any(np.array_equal(extra, p) for p in points))
    assert hypervolume(together, ref) > hypervolume(points, ref) + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_.]{1,20}", fullmatch=True),
                       st.none() | st.integers() | st.text(max_size=30)))
def test_masking_is_idempotent_and_keeps_keys(params: dict) -> None:
    once = mask_secrets(params)
    assert set(once) == set(params)
    assert mask_secrets(once) == once
    assert all(once[k] in (v, "***") for k, v in params.items() if not isinstance(v, str))
