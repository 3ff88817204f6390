"""nDCG@k, the metric the console reports for both columns, over binary or graded judgments.

Same definition as trec_eval's `ndcg_cut` and pytrec_eval (so the numbers BEIR reports): the gain
is the grade itself (linear, not 2^grade - 1), discount log2(rank + 1), the ideal ranking is built
from every judged document of the query (not only the retrieved ones), and unjudged documents count
as not relevant. Linear gains keep a console run comparable with a published BEIR or TREC score of
the same qrels. Binary judgments are grades 0 and 1, so both kinds mix in one query set. A query
with no relevant judgment has no nDCG (None): it is left out of means rather than counted as 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

K = 10
# The console's graded scale, TREC Deep Learning's 0-3; a binary "relevant" is grade 1.
GRADES = ("not relevant", "related", "highly relevant", "perfectly relevant")


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int = K) -> float | None:
    """nDCG@k of a ranked list of document ids against graded judgments (None: not evaluable)."""
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return None
    gains = [max(qrels.get(doc, 0), 0) for doc in ranking[:k]]
    return dcg(gains) / dcg(ideal)


def mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
