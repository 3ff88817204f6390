"""Read evaluation sets in the BEIR layout: `queries.jsonl` plus `qrels/<split>.tsv`.

BEIR is the format search teams already have their test sets in, and what the console exports, so
a folder exported from one proxy can be replayed against another. `corpus.jsonl` is not read: the
documents are expected to be indexed already, with the corpus ids as `_id`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rerank_proxy.errors import bad_request

MAX_QUERIES = 10_000
MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EvalQuery:
    """One query of a batch; `qrels` None means: use the console's stored judgments."""

    id: str
    text: str
    qrels: dict[str, int] | None = field(default=None)


def parse_qrels_tsv(text: str) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` lines (header optional); TREC's 4-column form too."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split()
        if not parts or (number == 1 and parts[0] == "query-id"):
            continue
        if len(parts) == 4:          # TREC: qid iteration docid rel
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise bad_request(f"qrels line {number} must have 3 columns: query-id, corpus-id, score")
        try:
            grade = int(float(parts[2]))
        except ValueError:
            raise bad_request(f"qrels line {number}: score [{parts[2]}] is not a number") from None
        qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def parse_queries_jsonl(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise bad_request(f"queries line {number} is not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or "_id" not in item:
            raise bad_request(f"queries line {number} needs \"_id\" and \"text\"")
        queries[str(item["_id"])] = item["text"]
    return queries


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise bad_request(f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad_request(f"the dataset folder has no {path.parent.name}/{path.name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_request(f"cannot read {path.name} ({type(exc).__name__})") from None


def load_folder(folder: str, split: str = "test", limit: int | None = None) -> list[EvalQuery]:
    """The judged queries of a BEIR folder on the proxy's machine, in query-file order."""
    if not split.replace("-", "").replace("_", "").isalnum():
        raise bad_request("[split] must be a plain name like test or dev")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise bad_request("[beir_path] is not a folder on the proxy's machine")
    queries = parse_queries_jsonl(_read(root / "queries.jsonl"))
    qrels = parse_qrels_tsv(_read(root / "qrels" / f"{split}.tsv"))
    items = [EvalQuery(qid, text, qrels[qid]) for qid, text in queries.items() if qid in qrels]
    if not items:
        raise bad_request(f"no query of queries.jsonl has judgments in qrels/{split}.tsv")
    cap = min(limit or MAX_QUERIES, MAX_QUERIES)
    return items[:cap]
