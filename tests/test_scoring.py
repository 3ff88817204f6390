"""The scoring rule (rerank_proxy/scoring/final.py): score modes, `auto`, weights, blending, blank texts.

The score cache is real and in-process, in front of a tiny real reranker (tests/support_rerankers.py).
"""

from __future__ import annotations

import pytest

from rerank_proxy.config import SCORE_MODES as SETTING_MODES
from rerank_proxy.config import IndexRule, load_settings
from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.scoring.final import (
    AUTO,
    SCORE_MODES,
    auto_mode,
    combine,
    final_scores,
    is_blank,
    minmax,
    resolve_mode,
    resolve_weight,
    with_blanks,
)
from rerank_proxy.search.merge import rerank_order
from rerank_proxy.search.text.hit_text import RuleMemo, hit_texts
from tests.support_rerankers import OverlapReranker, RecordingReranker, overlap_score

QUERY = "jet engine noise"


def cache_for(reranker: OverlapReranker) -> ScoreCache:
    return ScoreCache(reranker, max_entries=1000, ttl_s=60.0)


# --- vocabulary and resolution ------------------------------------------------------------------

def test_one_vocabulary():
    assert SCORE_MODES == ("rerank", "blend", "lexical")
    assert set(SETTING_MODES) <= {AUTO, *SCORE_MODES}  # what RERANK_SCORE_MODE accepts is applied here


def test_auto_per_provider():
    assert auto_mode("local") == "blend"
    assert auto_mode("none") == "lexical"
    assert [auto_mode(p) for p in ("cohere", "cohere-v1", "compatible", "tei", "voyage")] == ["rerank"] * 5


@pytest.mark.parametrize(("requested", "setting", "provider", "expected"), [
    (None, "auto", "local", "blend"),
    (None, "auto", "cohere", "rerank"),
    (None, "blend", "cohere", "blend"),
    (None, "rerank", "local", "rerank"),
    ("lexical", "blend", "local", "lexical"),   # the request's option wins
    ("rerank", "auto", "local", "rerank"),
    ("auto", "blend", "cohere", "blend"),       # the console's "auto": the setting decides
    ("auto", "auto", "local", "blend"),
    ("", "auto", "tei", "rerank"),
])
def test_resolve_mode(requested, setting, provider, expected):
    assert resolve_mode(requested, setting, provider) == expected


def test_resolve_mode_from_the_environment():
    settings = load_settings({"RERANK_PROVIDER": "local"})
    assert resolve_mode(None, settings.rerank_score_mode, settings.rerank_provider) == "blend"
    settings = load_settings({"RERANK_PROVIDER": "local", "RERANK_SCORE_MODE": "rerank"})
    assert resolve_mode(None, settings.rerank_score_mode, settings.rerank_provider) == "rerank"


def test_resolve_mode_refuses_unknown_modes():
    with pytest.raises(ValueError, match="best"):
        resolve_mode("best", "auto", "local")


def test_weight_option_over_setting():
    assert resolve_weight(None, 0.7) == 0.7
    assert resolve_weight(0.0, 0.7) == 0.0  # zero is a choice, not "unset"
    assert resolve_weight(1, 0.7) == 1.0


# --- blending ---------------------------------------------------------------------------------------

def test_minmax():
    assert minmax([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert minmax([3.0, 3.0, 3.0]) == [1.0, 1.0, 1.0]  # equal values: all at the top, none divided by 0
    assert minmax([5.0]) == [1.0]


def test_combine_modes():
    raw, lexical = [0.2, 0.8, 0.5], [3.0, 1.0, None]
    assert combine(raw, lexical, "rerank", 0.3) == raw
    assert combine(raw, lexical, "lexical", 0.3) == [3.0, 1.0, 0.0]  # no _score: 0.0
    blended = combine(raw, lexical, "blend", 0.5)
    assert blended == pytest.approx([0.5 * 0.0 + 0.5 * 1.0, 0.5 * 1.0 + 0.5 * (1 / 3), 0.5 * 0.5 + 0.0])
    assert combine(raw, lexical, "blend", 1.0) == pytest.approx(minmax(raw))
    assert combine([], [], "blend", 0.5) == []


def test_blend_with_equal_values():
    # equal rerank scores: the lexical part alone orders the window (and vice versa)
    assert combine([0.4, 0.4], [2.0, 1.0], "blend", 0.5) == [1.0, 0.5]
    assert combine([0.1, 0.9], [1.0, 1.0], "blend", 0.5) == [0.5, 1.0]


def test_blank_predicate_and_spread():
    assert is_blank("")
    assert is_blank(" \n\t")
    assert not is_blank(" a ")
    assert with_blanks(4, [0, 3], [0.5, 0.2]) == [0.5, 0.2, 0.2, 0.2]
    assert with_blanks(2, [], []) == [0.0, 0.0]
    assert with_blanks(2, [0, 1], [0.3, 0.1]) == [0.3, 0.1]


# --- the entry point -----------------------------------------------------------------------------

async def test_every_text_scored():
    reranker = RecordingReranker()
    texts = ["jet engine noise levels", "wing flutter", "engine noise"]
    scored = await final_scores(cache_for(reranker), QUERY, texts, [3.0, 2.0, 1.0], "rerank", 0.5)
    expected = [overlap_score(QUERY, t) for t in texts]
    assert scored.mode == "rerank"
    assert scored.final == expected
    assert scored.raw == expected
    assert scored.scored == [0, 1, 2]
    assert scored.blanks == []
    assert scored.outcome is not None
    assert scored.outcome.status == "miss"
    assert reranker.sent == [texts]
    again = await final_scores(cache_for(reranker), QUERY, texts, [3.0, 2.0, 1.0], "rerank", 0.5)
    assert again.final == expected
    assert len(reranker.sent) == 2


async def test_cache_outcome_is_reported():
    reranker = RecordingReranker()
    cache = cache_for(reranker)
    texts = ["jet engine", "wing"]
    await final_scores(cache, QUERY, texts, [2.0, 1.0], "blend", 0.5)
    scored = await final_scores(cache, QUERY, texts, [2.0, 1.0], "blend", 0.5)
    assert scored.outcome is not None
    assert scored.outcome.status == "hit"
    assert len(reranker.sent) == 1


@pytest.mark.parametrize("mode", ["rerank", "blend"])
async def test_blank_texts_are_never_sent_and_rank_last_in_lexical_order(mode):
    reranker = RecordingReranker()
    # blanks first in lexical order and with the best lexical scores, a non-blank that scores 0-ish
    texts = ["", "jet engine noise", "   ", "unrelated words here", "\n", "engine"]
    lexical = [9.0, 5.0, 8.0, 4.0, 7.0, 1.0]
    scored = await final_scores(cache_for(reranker), QUERY, texts, lexical, mode, 0.5)
    assert reranker.sent == [["jet engine noise", "unrelated words here", "engine"]]
    assert scored.scored == [1, 3, 5]
    assert scored.blanks == [0, 2, 4]
    assert [scored.raw[i] for i in (0, 2, 4)] == [None, None, None]
    lowest = min(scored.final[i] for i in scored.scored)
    assert [scored.final[i] for i in scored.blanks] == [lowest] * 3  # the lowest score of the others
    order = rerank_order(scored.final, scored.blanks)
    assert order[-3:] == [0, 2, 4]  # last, in lexical order
    assert sorted(order[:3]) == [1, 3, 5]
    finals = [scored.final[i] for i in order]
    assert finals == sorted(finals, reverse=True)  # `_score` never goes up down the page


async def test_blank_tied_with_the_lowest_still_comes_after_it():
    reranker = RecordingReranker()
    texts = ["", "zzz"]  # "zzz" shares no word with the query: its score is the lowest, as the blank's
    scored = await final_scores(cache_for(reranker), QUERY, texts, [2.0, 1.0], "rerank", 0.5)
    assert scored.final[0] == scored.final[1]
    assert rerank_order(scored.final, scored.blanks) == [1, 0]


@pytest.mark.parametrize("mode", ["rerank", "blend"])
async def test_all_blank_window_keeps_lexical_order_and_sends_nothing(mode):
    reranker = RecordingReranker()
    lexical = [3.0, 2.0, 1.0]
    scored = await final_scores(cache_for(reranker), QUERY, ["", " ", "\t"], lexical, mode, 0.5)
    assert reranker.calls == 0
    assert scored.outcome is None
    assert scored.scored == []
    assert scored.raw == [None, None, None]
    assert rerank_order(scored.final, scored.blanks) == [0, 1, 2]


async def test_lexical_mode_and_no_cache_send_nothing():
    reranker = RecordingReranker()
    lexical = [1.0, None, 3.0]
    scored = await final_scores(cache_for(reranker), QUERY, ["a", "b", "c"], lexical, "lexical", 0.5)
    assert scored.mode == "lexical"
    assert scored.final == [1.0, 0.0, 3.0]
    assert reranker.calls == 0
    scored = await final_scores(None, QUERY, ["a", "b", "c"], lexical, "blend", 0.5)
    assert scored.mode == "lexical"
    assert scored.final == [1.0, 0.0, 3.0]
    assert scored.outcome is None


async def test_blend_weight_changes_the_order():
    reranker = RecordingReranker()
    cache = cache_for(reranker)
    texts = ["wing", "jet engine noise"]  # the reranker prefers the second, the engine the first
    lexical = [10.0, 1.0]
    lexical_heavy = await final_scores(cache, QUERY, texts, lexical, "blend", 0.2)
    rerank_heavy = await final_scores(cache, QUERY, texts, lexical, "blend", 0.8)
    assert rerank_order(lexical_heavy.final) == [0, 1]
    assert rerank_order(rerank_heavy.final) == [1, 0]


async def test_provider_failure_propagates():
    reranker = RecordingReranker()
    reranker.fail = True
    from rerank_proxy.scoring.providers.base import RerankError

    with pytest.raises(RerankError):
        await final_scores(cache_for(reranker), QUERY, ["jet"], [1.0], "rerank", 0.5)


# --- per-hit index rules ----------------------------------------------------------------------------

def test_hit_texts_follow_each_hits_index_rule():
    settings = load_settings({"RERANK_RULES": '[{"index": "a*", "fields": ["t"]}, {"index": "b*", "fields": ["u"]}]',
                              "RERANK_INDICES": "a*,b*"})
    default = IndexRule(pattern="*", fields=("v",))
    hits = [{"_index": "a1", "_source": {"t": "from t", "u": "from u", "v": "from v"}},
            {"_index": "b1", "_source": {"t": "from t", "u": "from u", "v": "from v"}},
            {"_index": "c1", "_source": {"t": "from t", "u": "from u", "v": "from v"}},
            {"_source": {"t": "from t", "v": "from v"}},
            "not a hit"]
    calls: list[str] = []

    def rule_for(index):
        calls.append(index)
        return settings.rule_for(index)

    memo = RuleMemo(rule_for)
    assert hit_texts(hits, default, memo) == ["from t", "from u", "from v", "from v", ""]
    assert hit_texts(hits, default, memo) == ["from t", "from u", "from v", "from v", ""]
    assert calls == ["a1", "b1", "c1"]  # memoised; a hit with no _index takes the default
    assert hit_texts(hits, default) == ["from v", "from v", "from v", "from v", ""]  # an explicit rule
