"""Team-draft interleaving of the lexical and the reranked ranking, and the credit of its clicks.

Why interleaving: one user's clicks on one merged list compare both rankers under the same query,
the same user and the same moment, so it needs far fewer searches than an A/B test to tell which
ranking users prefer.

Team draft (Radlinski, Kurup and Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008): like two captains picking players, the team with fewer picks so far picks
next, a coin flip breaking a tie; a team picks its ranking's highest hit not yet in the list, and
that position belongs to it. As in the paper, the list ends when either ranking has no hit left to
give (or at k): when both rank the same hits, that is all of them. A click on a position is a point
for its team; the team with more points wins the query, equal points (no click included) is a tie.

One refinement, as in the Lerot toolkit's team draft (Schuth et al., 2013): the common prefix (the
first hits both rankings put at the same ranks) comes first and belongs to no team (None), so clicks
on it count for nobody. Who drafts a hit both rankings agree on is the coin's choice, not a
preference: without this, identical rankings would win or lose queries at random; with it they
always tie.

The coin flips come from BLAKE2b of the query id, so a query id interleaves the same way on every
process and replica, and a logged query can be interleaved again to check its teams.

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

Team = Literal["lexical", "reranked"]
Outcome = Literal["lexical", "reranked", "tie"]

_COIN_SALT = b"rerank-proxy-team-draft"


@dataclass(frozen=True, slots=True)
class Interleaving:
    """The merged list, and for each position the team whose pick it was (None: the common prefix)."""

    ids: tuple[str, ...]
    teams: tuple[Team | None, ...]


@dataclass(frozen=True, slots=True)
class Credit:
    """Clicks on each team's positions in one interleaved search."""

    lexical: int
    reranked: int

    @property
    def outcome(self) -> Outcome:
        if self.reranked > self.lexical:
            return "reranked"
        if self.lexical > self.reranked:
            return "lexical"
        return "tie"


def coin_flips(query_id: str) -> Iterator[bool]:
    """An endless, reproducible stream of fair bits: BLAKE2b(salt, query id, block number), 512 per block."""
    block = 0
    while True:
        digest = hashlib.blake2b(block.to_bytes(8, "big") + query_id.encode(), key=_COIN_SALT).digest()
        for byte in digest:
            for shift in range(8):
                yield bool(byte >> shift & 1)
        block += 1


def team_draft(lexical: Sequence[str], reranked: Sequence[str], query_id: str, k: int) -> Interleaving:
    """The team-draft interleaving of the two rankings, at most k long, its flips seeded by query_id."""
    if k < 0:
        raise ValueError(f"k must not be negative, not {k}")
    shared = _common_prefix(lexical, reranked, k)
    ids: list[str] = list(shared)
    teams: list[Team | None] = [None] * len(shared)
    taken: set[str] = set(shared)
    picks: dict[Team, int] = {"lexical": 0, "reranked": 0}
    # where each ranking's search for its highest untaken hit resumes
    heads: dict[Team, int] = {"lexical": len(shared), "reranked": len(shared)}
    rankings: dict[Team, Sequence[str]] = {"lexical": lexical, "reranked": reranked}
    flips = coin_flips(query_id)
    while len(ids) < k:
        for team in ("lexical", "reranked"):
            ranking = rankings[team]
            while heads[team] < len(ranking) and ranking[heads[team]] in taken:
                heads[team] += 1
        if heads["lexical"] == len(lexical) or heads["reranked"] == len(reranked):
            break
        team = _next_team(picks["lexical"], picks["reranked"], flips)
        hit = rankings[team][heads[team]]
        ids.append(hit)
        teams.append(team)
        taken.add(hit)
        picks[team] += 1
    return Interleaving(tuple(ids), tuple(teams))


def _common_prefix(lexical: Sequence[str], reranked: Sequence[str], k: int) -> list[str]:
    """The first hits, up to k, that both rankings put at the same ranks (each once)."""
    prefix: list[str] = []
    for a, b in zip(lexical, reranked):
        if len(prefix) == k or a != b or a in prefix:
            break
        prefix.append(a)
    return prefix


def _next_team(lexical_picks: int, reranked_picks: int, flips: Iterator[bool]) -> Team:
    """The team with fewer picks; on equal picks, the coin (one flip per tie, none otherwise)."""
    if lexical_picks != reranked_picks:
        return "lexical" if lexical_picks < reranked_picks else "reranked"
    return "lexical" if next(flips) else "reranked"


def credit(teams: Sequence[Team | None], clicked_positions: Iterable[int]) -> Credit:
    """Each team's clicks, from 0-based positions in the interleaved list.

    A position clicked several times counts once (a user going back to the same hit is one vote);
    a position of the common prefix, or outside the list, counts for nobody.
    """
    clicked = [teams[p] for p in set(clicked_positions) if 0 <= p < len(teams)]
    return Credit(lexical=clicked.count("lexical"), reranked=clicked.count("reranked"))


def credit_ids(interleaving: Interleaving, clicked_ids: Iterable[str]) -> Credit:
    """Each team's clicks, from the clicked hits' ids (ids not in the list count for nobody)."""
    position = {hit: p for p, hit in enumerate(interleaving.ids)}
    return credit(interleaving.teams, (position[hit] for hit in clicked_ids if hit in position))
