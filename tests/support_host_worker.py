"""Another worker of the host, as a real process driven line by line, for the host-tier tests.

    python -m tests.support_host_worker DIRECTORY

Commands on stdin, one answer line each on stdout (keys in hex):
- `claim LEASE_S KEY...` -> `mine N theirs N found N`
- `waiters KEY` -> the pids waiting on this worker's claim of KEY, space-separated
- `store KEY=SCORE...` -> `stored`: writes the scores and wakes the workers that waited on them
- `release` -> `released`: gives up the last claim and wakes its waiters
"""

from __future__ import annotations

import sys

from rerank_proxy.scoring.cache.host_signals import HostSignals
from rerank_proxy.scoring.cache.host_tier import Claim, HostTier


def main() -> None:
    directory = sys.argv[1]
    tier = HostTier(directory, max_entries=10_000, ttl_s=3600)
    signals = HostSignals(directory)
    last: Claim | None = None
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "claim":
            last = tier.claim([bytes.fromhex(k) for k in args[1:]], float(args[0]))
            answer = f"mine {len(last.mine)} theirs {len(last.theirs)} found {len(last.found)}"
        elif command == "waiters":
            holders = tier.claimed_by(bytes.fromhex(args[0]))
            answer = " ".join(str(pid) for pid in holders[1]) if holders else ""
        elif command == "store":
            items = [(bytes.fromhex(k), float(v)) for k, v in (a.split("=") for a in args)]
            signals.wake(tier.set_many(items))
            answer = "stored"
        elif command == "release":
            assert last is not None
            signals.wake(tier.release(last.mine, last.token))
            answer = "released"
        else:
            answer = f"unknown command {command}"
        print(answer, flush=True)


if __name__ == "__main__":
    main()
