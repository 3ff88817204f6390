"""RERANK_EXPERIMENT parsing and the sticky arm assignment (rerank_proxy/experiments/arms.py)."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank_proxy.config_values import BadValue
from rerank_proxy.experiments.arms import Experiment, ExperimentSetting, assign, bucket, unit_id

parse = ExperimentSetting()
percents = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@pytest.mark.parametrize(("raw", "expected"), [
    ("off", Experiment("off")),
    ("shadow", Experiment("shadow")),
    ("interleave", Experiment("interleave")),
    (" Interleave ", Experiment("interleave")),
    ("ab:50", Experiment("ab", 50.0)),
    ("ab:12.5", Experiment("ab", 12.5)),
    ("AB: 0", Experiment("ab", 0.0)),
    ("ab:100", Experiment("ab", 100.0)),
    ("ab:100.0", Experiment("ab", 100.0)),
    ("ab:.5", Experiment("ab", 0.5)),
])
def test_parses(raw, expected):
    assert parse(raw) == expected


@pytest.mark.parametrize(("raw", "problem"), [
    ("", "unknown experiment ''"),
    ("on", "unknown experiment 'on'"),
    ("a/b:50", "unknown experiment 'a/b:50'"),
    ("ab", "ab needs a percent"),
    ("ab:", "ab needs a percent"),
    ("ab:fifty", "ab percent 'fifty' is not a number"),
    ("ab:50%", "ab percent '50%' is not a number"),
    ("ab:1e2", "ab percent '1e2' is not a number"),
    ("ab:nan", "ab percent 'nan' is not a number"),
    ("ab:inf", "ab percent 'inf' is not a number"),
    ("ab:1_0", "ab percent '1_0' is not a number"),
    ("ab:-5", "ab percent -5 is below 0"),
    ("ab:100.5", "ab percent 100.5 is above 100"),
])
def test_rejects_with_a_clear_message(raw, problem):
    with pytest.raises(BadValue) as caught:
        parse(raw)
    assert caught.value.problem.startswith(problem)
    assert "ab:<percent>" in caught.value.accepted
    assert isinstance(caught.value, ValueError)


def test_accepted_names_every_form():
    for word in ("off", "shadow", "interleave", "ab:<percent 0-100>"):
        assert word in parse.accepted


@given(percents)
def test_str_parses_back(percent):
    experiment = Experiment("ab", percent)
    assert parse(str(experiment)) == experiment
    for kind in ("off", "shadow", "interleave"):
        assert parse(str(Experiment(kind))) == Experiment(kind)


def test_str_is_the_setting_value():
    assert [str(Experiment("ab", p)) for p in (50.0, 12.5, 0.0, 100.0, 1e-5)] == [
        "ab:50", "ab:12.5", "ab:0", "ab:100", "ab:0.00001"]


def test_experiment_rejects_a_percent_out_of_range():
    for bad in (-1.0, 100.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="percent"):
            Experiment("ab", bad)


def test_fixed_kinds_ignore_the_unit():
    for uid in ("client:a", "addr:10.0.0.1", ""):
        assert assign(Experiment("off"), uid) == "off"
        assert assign(Experiment("shadow"), uid) == "lexical"
        assert assign(Experiment("interleave"), uid) == "interleaved"
    assert Experiment("shadow").shadow
    assert not Experiment("ab", 50).shadow


def test_bucket_is_pinned():
    """The hash is part of the experiment: a changed scheme would move users between arms mid-test,
    and replicas on another version would disagree. These values are BLAKE2b, not Python's hash()."""
    assert bucket("client:abc") == 0.2365815512586582
    assert bucket("client:1") == 0.07519782650342932
    assert bucket("client:abc", salt="other") == 0.8814645013521493


def test_a_long_salt_is_refused():
    with pytest.raises(ValueError, match="salt"):
        bucket("client:a", salt="s" * 65)


@given(st.text(), percents)
def test_sticky(uid, percent):
    experiment = Experiment("ab", percent)
    assert assign(experiment, uid) == assign(Experiment("ab", percent), uid)
    assert 0.0 <= bucket(uid) < 1.0


@given(st.text(), percents, percents)
def test_a_larger_share_keeps_the_reranked_units(uid, p, q):
    """Growing the rollout only moves units from lexical to reranked, never back."""
    low, high = sorted((p, q))
    if assign(Experiment("ab", low), uid) == "reranked":
        assert assign(Experiment("ab", high), uid) == "reranked"


@given(st.text())
def test_zero_and_hundred(uid):
    assert assign(Experiment("ab", 0.0), uid) == "lexical"
    assert assign(Experiment("ab", 100.0), uid) == "reranked"


@pytest.mark.parametrize("percent", [50.0, 12.5, 1.0, 99.9])
def test_share_of_random_ids(percent):
    """The reranked count of n ids is Binomial(n, p) if the hash spreads ids evenly: within 4 standard
    deviations of n*p (a false alarm about once in 16,000 runs; the ids are seeded, so never here)."""
    n = 100_000
    rng = random.Random(percent)
    ids = [f"client:{rng.getrandbits(64):016x}" for _ in range(n)]
    experiment = Experiment("ab", percent)
    reranked = sum(assign(experiment, uid) == "reranked" for uid in ids)
    p = percent / 100
    assert abs(reranked - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_salt_redraws_the_split():
    experiment = Experiment("ab", 50.0)
    ids = [f"client:{i}" for i in range(2000)]
    same = sum(assign(experiment, uid) == assign(experiment, uid, salt="next") for uid in ids)
    assert 900 <= same <= 1100   # independent draws agree about half the time


@pytest.mark.parametrize(("given_ids", "expected"), [
    ({"client_id": "c1", "api_key": "k1", "source": "10.0.0.1"}, "client:c1"),
    ({"client_id": " ", "api_key": "k1", "source": "10.0.0.1"}, "key:k1"),
    ({"client_id": None, "api_key": None, "source": "10.0.0.1"}, "addr:10.0.0.1"),
    ({"source": " 10.0.0.1 "}, "addr:10.0.0.1"),
    ({}, None),
    ({"client_id": "", "api_key": "", "source": ""}, None),
])
def test_unit_id_picks_the_first_present(given_ids, expected):
    assert unit_id(**given_ids) == expected


def test_unit_kinds_do_not_collide():
    assert unit_id(client_id="10.0.0.1") != unit_id(source="10.0.0.1")
