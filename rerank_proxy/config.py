"""Settings from the environment, validated once at start-up.

Every setting the proxy reads is declared in `SETTINGS` below (name, default, meaning, example); the
README's configuration table is checked against this list by a test, so the two cannot drift apart.
A wrong value raises `ConfigError` with one line naming the variable, the problem and what is
accepted; the CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a value the proxy cannot run with."""


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: str
    meaning: str
    example: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("UPSTREAM_URLS", "http://127.0.0.1:9200", "Comma-separated engine URLs; load is spread across them, connection failures fail over.", "http://es1:9200,http://es2:9200"),
    Setting("UPSTREAM_CA_FILE", "", "PEM CA bundle used to verify https upstreams (empty: system CAs).", "/etc/ssl/es-ca.pem"),
    Setting("UPSTREAM_CLIENT_CERT_FILE", "", "PEM client certificate for mutual TLS to the upstream.", "/etc/ssl/proxy.pem"),
    Setting("UPSTREAM_CLIENT_KEY_FILE", "", "PEM private key of the client certificate.", "/etc/ssl/proxy.key"),
    Setting("UPSTREAM_TLS_VERIFY", "true", "Verify the upstream's TLS certificate (true/false).", "true"),
    Setting("UPSTREAM_TIMEOUT_S", "60", "Read timeout for one upstream response, in seconds.", "30"),
    Setting("UPSTREAM_CONNECT_TIMEOUT_S", "5", "Connect timeout to one upstream, in seconds.", "2"),
    Setting("UPSTREAM_MAX_CONNECTIONS", "200", "Open connections to the engines per worker, idle or in use; past it a request waits up to UPSTREAM_CONNECT_TIMEOUT_S for one, then gets 429.", "100"),
    Setting("RERANK_PROVIDER", "local", "Who scores: local (built-in MiniLM), cohere, cohere-v1, compatible, tei, voyage, none.", "cohere"),
    Setting("RERANK_BASE_URL", "", "Provider base URL (empty: the provider's public default).", "https://api.cohere.com"),
    Setting("RERANK_PATH", "", "Provider endpoint path (empty: the provider's default, e.g. /v2/rerank).", "/v1/rerank"),
    Setting("RERANK_API_KEY", "", "Provider API key (also RERANK_API_KEY_FILE). Never logged.", "co-...", secret=True),
    Setting("RERANK_MODEL", "", "Provider model (empty: rerank-v3.5 for Cohere, all-MiniLM-L6-v2 for local).", "rerank-v4.0-fast"),
    Setting("RERANK_WINDOW", "100", "Candidates fetched from the engine and reranked per search (1-10000).", "50"),
    Setting("RERANK_FIELDS", "", "Comma-separated _source fields that make a hit's text (empty: see RERANK_TEXT_FROM_MAPPING).", "title,body"),
    Setting("RERANK_TEMPLATE", "", "Template for a hit's text, with {field} placeholders (overrides RERANK_FIELDS).", "title: {title}\\nbody: {body}"),
    Setting("RERANK_TEXT_FROM_MAPPING", "true", "Without RERANK_FIELDS or RERANK_TEMPLATE (nor a rule's fields or template), a hit's text is the strings of its index's text-typed fields (text, match_only_text, search_as_you_type, semantic_text; read from the mapping, cached 60 s), so keyword ids and codes are not sent; false, or no readable mapping: every string of _source.", "false"),
    Setting("RERANK_MAX_CHARS", "2000", "Each hit's text is truncated to this many characters before it is sent.", "4000"),
    Setting("RERANK_INDICES", "*", "Comma-separated index patterns whose searches are reranked; others pass through.", "products*,docs"),
    Setting("RERANK_RULES", "", "JSON list of per-index rules overriding fields/template/window/max_chars/enabled.", '[{"index":"products*","fields":["title","description"],"window":50}]'),
    Setting("RERANK_SCORE_MODE", "auto", "Hit _score: rerank (provider score), blend (weighted with lexical), auto (blend for local, rerank otherwise).", "rerank"),
    Setting("RERANK_BLEND_WEIGHT", "0.7", "Weight of the reranker in blend mode (0-1); the rest goes to the normalised lexical score (0.7: best on Cranfield, see BENCHMARKS.md).", "0.5"),
    Setting("RERANK_DEADLINE_MS", "3000", "Total time for one rerank, retries included; past it the search answers in lexical order.", "1500"),
    Setting("RERANK_ATTEMPT_TIMEOUT_MS", "2000", "Time limit for one provider attempt.", "1000"),
    Setting("RERANK_MAX_RETRIES", "2", "Retries after a failed provider attempt (429, 5xx, connection errors).", "3"),
    Setting("RERANK_MAX_CONCURRENCY", "64", "Provider calls in flight at once, per worker.", "16"),
    Setting("RERANK_BATCH_SIZE", "1000", "Most documents sent in one provider request; larger sets are split into concurrent batches.", "100"),
    Setting("RERANK_MAX_TOKENS_PER_DOC", "", "Cohere v2 max_tokens_per_doc (empty: the provider default, 4096).", "1024"),
    Setting("RERANK_BREAKER_FAILURES", "5", "Consecutive failed reranks that open the circuit breaker.", "10"),
    Setting("RERANK_BREAKER_COOLDOWN_S", "30", "Seconds the breaker stays open before one probe is let through.", "10"),
    Setting("RERANK_FAIL_MODE", "open", "When the reranker fails: open (lexical order, flagged) or closed (engine-style 503).", "closed"),
    Setting("LOCAL_MODEL_MAX_TOKENS", "256", "Token limit of the built-in model's inputs (sentence-transformers' default for this model, which was trained at 128).", "128"),
    Setting("LOCAL_VECTOR_STORE", "~/.cache/rerank-proxy/vectors.sqlite", "SQLite file of document vectors for the built-in model (shared by workers, survives restarts).", "/var/lib/rerank-proxy/vectors.sqlite"),
    Setting("LOCAL_VECTOR_STORE_MAX_ENTRIES", "1000000", "Bound on stored document vectors (about 0.9 KB each on disk); the oldest are evicted.", "200000"),
    Setting("LOCAL_COLD_WAIT_MS", "500", "How long a search waits for the background embedder to finish its cold documents; past it (or when they cannot finish in time) it answers in lexical order with reason vectors_cold.", "1000"),
    Setting("LOCAL_EMBED_THREADS", "2", "Threads of the background embedder (each runs at LOCAL_EMBED_NICE).", "1"),
    Setting("LOCAL_EMBED_NICE", "5", "How much lower the background embedder's CPU priority is than the proxy's (Linux niceness, 0-19): it gives way to searches and the engine on a shared host.", "10"),
    Setting("LOCAL_EMBED_QUEUE_MAX", "100000", "Bound on documents waiting for the background embedder; past it new work is dropped and counted (searches' documents first). At most a tenth of it waits for write warming (10000 on the default: a few minutes of embedding); write documents past that are dropped and counted, and embedded when a search meets them.", "20000"),
    Setting("LOCAL_WARM_ON_START", "", "Comma-separated indices (or patterns) whose documents are read and queued for the background embedder at start-up, at the lowest priority (empty: off; traffic and writes warm the store).", "products,docs"),
    Setting("LOCAL_VECTOR_SHARED_TTL_S", "2592000", "With REDIS_URL set, document vectors are also kept in Redis for this long, so replicas and rolled pods share them (0: per-pod store only).", "604800"),
    Setting("RERANK_MAX_QUERY_CHARS", "2000", "Query text is truncated to this many characters before it is reranked (models read a few hundred tokens).", "4000"),
    Setting("CACHE_TTL_S", "3600", "Lifetime of a cached rerank score, in seconds.", "86400"),
    Setting("CACHE_MAX_ENTRIES", "200000", "Bound on in-process cached scores (about 210 bytes each), per worker; with several workers, also on the per-host tier they share.", "1000000"),
    Setting("CACHE_ANSWERS_MAX_MB", "32", "Memory for finished answers of repeated searches, in MiB per worker: the same request meeting the same engine answer is answered without reranking it again (0: off).", "128"),
    Setting("REDIS_URL", "", "Shared score cache for several replicas (empty: in-process cache only).", "redis://redis:6379/0", secret=True),
    Setting("REDIS_TIMEOUT_MS", "50", "Time limit for one Redis operation; slower means a miss, never a failed search.", "100"),
    Setting("ADMIN_TOKEN", "", "Bearer token for /_rerank/admin/* and the console (also ADMIN_TOKEN_FILE); empty disables them.", "s3cret", secret=True),
    Setting("PROXY_API_KEYS", "", "Comma-separated keys clients must send in X-Proxy-Api-Key (also PROXY_API_KEYS_FILE); empty: no check.", "k1,k2", secret=True),
    Setting("MAX_BODY_BYTES", "104857600", "Largest request body accepted (413 above it).", "10485760"),
    Setting("MAX_HEADER_BYTES", "65536", "Largest total size of a request's headers (431 above it).", "16384"),
    Setting("MAX_SEARCH_BODY_BYTES", "10485760", "Largest search body the proxy parses (413 above it).", "1048576"),
    Setting("MAX_CONCURRENT_REQUESTS", "1000", "Requests handled at once per worker; more get a 429 engine-style error.", "500"),
    Setting("CLIENT_HEADER_TIMEOUT_S", "10", "Time a client has to send a whole request head; slower gets a 408 and the connection closes.", "5"),
    Setting("CLIENT_BODY_TIMEOUT_S", "10", "Longest pause between two parts of a request body; longer gets a 408 and the connection closes.", "30"),
    Setting("CLIENT_BODY_MIN_RATE", "1024", "Slowest average upload accepted after CLIENT_BODY_TIMEOUT_S, in bytes per second (0: none); slower gets a 408.", "256"),
    Setting("MAX_MSEARCH_SEARCHES", "1000", "Most sub-searches in one _msearch the proxy parses (400 above it).", "200"),
    Setting("MAX_CANDIDATE_BYTES", "67108864", "Largest engine answer to a candidate fetch; past it the search is answered by the engine, unreranked and flagged.", "16777216"),
    Setting("SHUTDOWN_GRACE_S", "20", "Seconds in-flight requests get to finish on shutdown.", "30"),
    Setting("CONSOLE_JUDGMENTS_FILE", "~/.cache/rerank-proxy/console-judgments.json", "Where the relevance console keeps judgments and saved query sets: a SQLite database (a `.json` name keeps it beside, as `.sqlite3`, importing the old JSON once); shared by the workers of one host; must be writable.", "/var/lib/rerank-proxy/console-judgments.sqlite3"),
    Setting("CONSOLE_STORE_MAX_MB", "64", "Largest size of the console's store, in MiB; a save past it is refused (507) with how to make room.", "256"),
    Setting("LOG_LEVEL", "info", "Log level: debug, info, warning, error.", "warning"),
    Setting("LOG_FORMAT", "json",
            "Log lines: json (short field names) or ecs (Elastic Common Schema, for Filebeat/Elastic Agent).", "ecs"),
    Setting("HOST", "127.0.0.1", "Interface `rerank-proxy serve` binds to.", "0.0.0.0"),
    Setting("PORT", "8080", "Port `rerank-proxy serve` listens on.", "9200"),
    Setting("WORKERS", "auto", "Worker processes of `rerank-proxy serve`: an integer, or auto (one per CPU this process may use, lowered to the cgroup CPU quota); several workers share one score cache per host.", "2"),
)

# Read by the tools around the proxy (engine runner, demo), never by the request path.
TOOL_SETTINGS: tuple[Setting, ...] = (
    Setting("RERANK_PROXY_CACHE_DIR", "~/.cache/rerank-proxy/engines", "Where the engine runner keeps downloaded zips, unpacked engines, data and state (as root: /var/cache/rerank-proxy/engines, since the engine user cannot read /root).", "/var/cache/rerank-proxy"),
    Setting("RERANK_PROXY_ENGINE_USER", "rerankproxy", "Unprivileged system user the engine runner creates and runs engines as (when started as root).", "search"),
    Setting("RERANK_PROXY_JAVA_HOME", "", "JDK the engine runner must use (empty: the newest fitting JDK found).", "/usr/lib/jvm/temurin-25-jdk-amd64"),
    Setting("JAVA_HOME_21", "", "A Java 21+ JDK for Elasticsearch 9 and OpenSearch 3 (searched before /usr/lib/jvm).", "/opt/jdk-21"),
    Setting("JAVA_HOME_17", "", "A Java 17 JDK for Elasticsearch 8 and OpenSearch 2 (searched before /usr/lib/jvm).", "/opt/jdk-17"),
)

SETTING_NAMES = frozenset(s.name for s in SETTINGS)
TOOL_SETTING_NAMES = frozenset(s.name for s in TOOL_SETTINGS)
SECRET_NAMES = frozenset(s.name for s in SETTINGS if s.secret)
FILE_VARIANTS = ("RERANK_API_KEY", "ADMIN_TOKEN", "PROXY_API_KEYS", "REDIS_URL")
PROVIDERS = ("local", "cohere", "cohere-v1", "compatible", "tei", "voyage", "none")
SCORE_MODES = ("auto", "rerank", "blend")  # RERANK_SCORE_MODE; applied and resolved in scoring/final.py


@dataclass(frozen=True, slots=True)
class IndexRule:
    """How searches on indices matching `pattern` are reranked."""

    pattern: str
    enabled: bool = True
    fields: tuple[str, ...] = ()
    template: str = ""
    window: int = 100
    max_chars: int = 2000
    # Neither fields nor template were chosen for it: the text is its index's text-typed fields.
    text_from_mapping: bool = False

    def matches(self, index: str) -> bool:
        return fnmatch.fnmatchcase(index, self.pattern)


@dataclass(frozen=True, slots=True)
class Settings:
    upstream_urls: tuple[str, ...] = ("http://127.0.0.1:9200",)
    upstream_ca_file: str = ""
    upstream_client_cert_file: str = ""
    upstream_client_key_file: str = ""
    upstream_tls_verify: bool = True
    upstream_timeout_s: float = 60.0
    upstream_connect_timeout_s: float = 5.0
    upstream_max_connections: int = 200
    rerank_provider: str = "local"
    rerank_base_url: str = ""
    rerank_path: str = ""
    rerank_api_key: str = ""
    rerank_model: str = ""
    rerank_window: int = 100
    rerank_fields: tuple[str, ...] = ()
    rerank_template: str = ""
    rerank_text_from_mapping: bool = True
    rerank_max_chars: int = 2000
    rerank_indices: tuple[str, ...] = ("*",)
    rerank_rules: tuple[IndexRule, ...] = ()
    rerank_score_mode: str = "auto"
    rerank_blend_weight: float = 0.7
    rerank_deadline_ms: int = 3000
    rerank_attempt_timeout_ms: int = 2000
    rerank_max_retries: int = 2
    rerank_max_concurrency: int = 16
    rerank_batch_size: int = 1000
    rerank_max_tokens_per_doc: int | None = None
    rerank_breaker_failures: int = 5
    rerank_breaker_cooldown_s: float = 30.0
    rerank_fail_mode: str = "open"
    local_model_max_tokens: int = 256
    local_vector_store: str = "~/.cache/rerank-proxy/vectors.sqlite"
    local_vector_store_max_entries: int = 1_000_000
    local_cold_wait_ms: int = 500
    local_embed_threads: int = 2
    local_embed_nice: int = 5
    local_embed_queue_max: int = 100_000
    local_vector_shared_ttl_s: float = 2_592_000.0
    local_warm_on_start: tuple[str, ...] = ()
    rerank_max_query_chars: int = 2000
    cache_ttl_s: float = 3600.0
    cache_max_entries: int = 200_000
    cache_answers_max_mb: int = 32
    redis_url: str = ""
    redis_timeout_ms: int = 50
    admin_token: str = ""
    proxy_api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 100 * 1024 * 1024
    max_search_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 65536
    max_concurrent_requests: int = 1000
    client_header_timeout_s: float = 10.0
    client_body_timeout_s: float = 10.0
    client_body_min_rate: int = 1024
    max_msearch_searches: int = 1000
    max_candidate_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 20.0
    console_judgments_file: str = "~/.cache/rerank-proxy/console-judgments.json"
    console_store_max_mb: int = 64
    log_level: str = "info"
    log_format: str = "json"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1              # load_settings resolves the default WORKERS=auto to a count

    def rule_for(self, index: str) -> IndexRule | None:
        """The rule for one concrete index name or pattern; None when it is not reranked."""
        for rule in self.rerank_rules:
            if rule.matches(index):
                return rule if rule.enabled else None
        if not any(fnmatch.fnmatchcase(index, p) for p in self.rerank_indices):
            return None
        return self.default_rule(index)

    def default_rule(self, pattern: str = "*") -> IndexRule:
        return IndexRule(pattern=pattern, fields=self.rerank_fields, template=self.rerank_template,
                         window=self.rerank_window, max_chars=self.rerank_max_chars,
                         text_from_mapping=_from_mapping(self.rerank_text_from_mapping, self.rerank_fields,
                                                         self.rerank_template))

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as shown by the admin API: secrets replaced."""
        out: dict[str, Any] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.name.lower())
            if isinstance(value, tuple):
                value = [_rule_dict(v) if isinstance(v, IndexRule) else v for v in value]
            if setting.secret:
                value = "<redacted>" if value else ""
            if setting.name == "UPSTREAM_URLS":
                value = [_strip_userinfo(u) for u in value]
            out[setting.name] = value
        return out

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _rule_dict(rule: IndexRule) -> dict[str, Any]:
    return {"index": rule.pattern, "enabled": rule.enabled, "fields": list(rule.fields),
            "template": rule.template, "window": rule.window, "max_chars": rule.max_chars,
            "text_from_mapping": rule.text_from_mapping}


def _from_mapping(enabled: bool, fields: tuple[str, ...], template: str) -> bool:
    """Fields or a template, once given, are what the text is made of: the mapping is the default only."""
    return enabled and not fields and not template


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return parts._replace(netloc=f"<redacted>@{host}").geturl()
    return url


# --- parsing -------------------------------------------------------------------------------------

def _fail(name: str, value: str, problem: str, accepted: str) -> ConfigError:
    shown = "<redacted>" if name in SECRET_NAMES else repr(value)
    return ConfigError(f"{name}={shown}: {problem}; accepted: {accepted}")


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise _fail(name, raw, "not an integer", f"an integer from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise _fail(name, raw, "out of range", f"an integer from {lo} to {hi}")
    return value


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise _fail(name, raw, "not a number", f"a number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise _fail(name, raw, "out of range", f"a number from {lo} to {hi}")
    return value


MAX_WORKERS = 256


def _workers(name: str, raw: str) -> int:
    """`auto` (one per usable CPU) or an integer."""
    if raw.strip().lower() == "auto":
        from rerank_proxy.cpus import usable_cpus

        return min(usable_cpus()[0], MAX_WORKERS)
    try:
        value = int(raw.strip())
    except ValueError:
        raise _fail(name, raw, "not an integer or auto", f"auto, or an integer from 1 to {MAX_WORKERS}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise _fail(name, raw, "out of range", f"auto, or an integer from 1 to {MAX_WORKERS}")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _fail(name, raw, "not a boolean", "true or false")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise _fail(name, raw, "unknown value", ", ".join(choices))
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _url(name: str, raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(name, raw, "not an http(s) URL", "http://host:port or https://host:port")
    return raw.strip().rstrip("/")


def _file(name: str, raw: str) -> str:
    if raw and not Path(raw).expanduser().is_file():
        raise _fail(name, raw, "file not found", "a path to a readable file")
    return raw


def _rules(name: str, raw: str, defaults: IndexRule) -> tuple[IndexRule, ...]:
    if not raw.strip():
        return ()
    accepted = 'a JSON list like [{"index":"products*","fields":["title"],"window":50}]'
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(name, raw, f"invalid JSON ({exc.msg} at {exc.pos})", accepted) from None
    if not isinstance(items, list):
        raise _fail(name, raw, "not a JSON list", accepted)
    known = {"index", "enabled", "fields", "template", "window", "max_chars"}
    rules = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("index"), str) or not item["index"]:
            raise _fail(name, raw, f"rule {i} has no \"index\" pattern", accepted)
        unknown = set(item) - known
        if unknown:
            raise _fail(name, raw, f"rule {i} has unknown keys {sorted(unknown)}", ", ".join(sorted(known)))
        fields = item.get("fields", list(defaults.fields))
        if isinstance(fields, str):
            fields = _csv(fields)
        if not isinstance(fields, (list, tuple)) or not all(isinstance(f, str) for f in fields):
            raise _fail(name, raw, f"rule {i}: fields must be a list of strings", accepted)
        window = item.get("window", defaults.window)
        max_chars = item.get("max_chars", defaults.max_chars)
        if not isinstance(window, int) or not 1 <= window <= 10_000:
            raise _fail(name, raw, f"rule {i}: window must be an integer 1-10000", accepted)
        if not isinstance(max_chars, int) or not 1 <= max_chars <= 1_000_000:
            raise _fail(name, raw, f"rule {i}: max_chars must be an integer 1-1000000", accepted)
        template = item.get("template", defaults.template)
        enabled = item.get("enabled", True)
        if not isinstance(template, str) or not isinstance(enabled, bool):
            raise _fail(name, raw, f"rule {i}: template must be a string and enabled a boolean", accepted)
        _check_template(name, raw, template, f"rule {i}: ")
        # A rule that names fields or a template (even `"fields": []`: every string) has chosen its
        # text; one that only sets a window or a cut inherits the default, the mapping included.
        from_mapping = defaults.text_from_mapping and "fields" not in item and "template" not in item
        rules.append(IndexRule(pattern=item["index"], enabled=enabled, fields=tuple(fields),
                               template=template, window=window, max_chars=max_chars,
                               text_from_mapping=from_mapping))
    return tuple(rules)


def _read_secret(env: Mapping[str, str], name: str) -> str:
    """`NAME` or the contents of the file named by `NAME_FILE` (Docker/Kubernetes secrets)."""
    direct = env.get(name, "")
    path = env.get(f"{name}_FILE", "")
    if direct and path:
        raise ConfigError(f"{name} and {name}_FILE are both set; accepted: one of them")
    if path:
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r}: cannot read ({exc.strerror}); "
                              "accepted: a path to a readable file") from None
    return direct.strip()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raises ConfigError on the first bad one."""
    env = os.environ if env is None else env
    get: Callable[[str], str] = lambda name: env.get(name, _DEFAULTS[name])  # noqa: E731

    urls = _csv(get("UPSTREAM_URLS"))
    if not urls:
        raise _fail("UPSTREAM_URLS", get("UPSTREAM_URLS"), "empty", "comma-separated http(s) URLs")
    upstream_urls = tuple(_url("UPSTREAM_URLS", u) for u in urls)
    base_url = get("RERANK_BASE_URL").strip()
    if base_url:
        base_url = _url("RERANK_BASE_URL", base_url)
    path = get("RERANK_PATH").strip()
    if path and not path.startswith("/"):
        raise _fail("RERANK_PATH", path, "must start with /", "a path like /v2/rerank")
    provider = _choice("RERANK_PROVIDER", get("RERANK_PROVIDER"), PROVIDERS)
    api_key = _read_secret(env, "RERANK_API_KEY")
    if provider in ("cohere", "cohere-v1", "voyage") and not api_key and not base_url:
        raise ConfigError(f"RERANK_API_KEY is empty but RERANK_PROVIDER={provider} calls a hosted API; "
                          "accepted: set RERANK_API_KEY (or RERANK_API_KEY_FILE), or point RERANK_BASE_URL "
                          "at a self-hosted server")
    if provider in ("compatible", "tei") and not base_url:
        raise ConfigError(f"RERANK_BASE_URL is empty but RERANK_PROVIDER={provider} needs it; "
                          "accepted: the server's URL, e.g. http://reranker:8080")
    max_tokens_raw = get("RERANK_MAX_TOKENS_PER_DOC").strip()
    redis_url = _read_secret(env, "REDIS_URL")
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL=<redacted>: not a Redis URL; accepted: redis://host:port/db, "
                          "rediss://... or unix://path")
    ca_file = _file("UPSTREAM_CA_FILE", get("UPSTREAM_CA_FILE").strip())
    cert_file = _file("UPSTREAM_CLIENT_CERT_FILE", get("UPSTREAM_CLIENT_CERT_FILE").strip())
    key_file = _file("UPSTREAM_CLIENT_KEY_FILE", get("UPSTREAM_CLIENT_KEY_FILE").strip())
    if key_file and not cert_file:
        raise ConfigError("UPSTREAM_CLIENT_KEY_FILE is set without UPSTREAM_CLIENT_CERT_FILE; "
                          "accepted: both or neither")
    log_level = _choice("LOG_LEVEL", get("LOG_LEVEL"), ("debug", "info", "warning", "error"))

    window = _int("RERANK_WINDOW", get("RERANK_WINDOW"), 1, 10_000)
    max_chars = _int("RERANK_MAX_CHARS", get("RERANK_MAX_CHARS"), 1, 1_000_000)
    fields = _csv(get("RERANK_FIELDS"))
    template = get("RERANK_TEMPLATE").replace("\\n", "\n")
    _check_template("RERANK_TEMPLATE", get("RERANK_TEMPLATE"), template)
    from_mapping = _bool("RERANK_TEXT_FROM_MAPPING", get("RERANK_TEXT_FROM_MAPPING"))
    defaults = IndexRule(pattern="*", fields=fields, template=template, window=window, max_chars=max_chars,
                         text_from_mapping=_from_mapping(from_mapping, fields, template))
    deadline = _int("RERANK_DEADLINE_MS", get("RERANK_DEADLINE_MS"), 10, 600_000)
    attempt = _int("RERANK_ATTEMPT_TIMEOUT_MS", get("RERANK_ATTEMPT_TIMEOUT_MS"), 10, 600_000)

    return Settings(
        upstream_urls=upstream_urls,
        upstream_ca_file=ca_file,
        upstream_client_cert_file=cert_file,
        upstream_client_key_file=key_file,
        upstream_tls_verify=_bool("UPSTREAM_TLS_VERIFY", get("UPSTREAM_TLS_VERIFY")),
        upstream_timeout_s=_float("UPSTREAM_TIMEOUT_S", get("UPSTREAM_TIMEOUT_S"), 0.1, 3600),
        upstream_connect_timeout_s=_float("UPSTREAM_CONNECT_TIMEOUT_S", get("UPSTREAM_CONNECT_TIMEOUT_S"), 0.1, 600),
        upstream_max_connections=_int("UPSTREAM_MAX_CONNECTIONS", get("UPSTREAM_MAX_CONNECTIONS"), 1, 100_000),
        rerank_provider=provider,
        rerank_base_url=base_url,
        rerank_path=path,
        rerank_api_key=api_key,
        rerank_model=get("RERANK_MODEL").strip(),
        rerank_window=window,
        rerank_fields=fields,
        rerank_template=template,
        rerank_text_from_mapping=from_mapping,
        rerank_max_chars=max_chars,
        rerank_indices=_csv(get("RERANK_INDICES")),
        rerank_rules=_rules("RERANK_RULES", get("RERANK_RULES"), defaults),
        rerank_score_mode=_choice("RERANK_SCORE_MODE", get("RERANK_SCORE_MODE"), SCORE_MODES),
        rerank_blend_weight=_float("RERANK_BLEND_WEIGHT", get("RERANK_BLEND_WEIGHT"), 0.0, 1.0),
        rerank_deadline_ms=deadline,
        rerank_attempt_timeout_ms=min(attempt, deadline),
        rerank_max_retries=_int("RERANK_MAX_RETRIES", get("RERANK_MAX_RETRIES"), 0, 20),
        rerank_max_concurrency=_int("RERANK_MAX_CONCURRENCY", get("RERANK_MAX_CONCURRENCY"), 1, 10_000),
        rerank_batch_size=_int("RERANK_BATCH_SIZE", get("RERANK_BATCH_SIZE"), 1, 10_000),
        rerank_max_tokens_per_doc=(_int("RERANK_MAX_TOKENS_PER_DOC", max_tokens_raw, 1, 1_000_000)
                                   if max_tokens_raw else None),
        rerank_breaker_failures=_int("RERANK_BREAKER_FAILURES", get("RERANK_BREAKER_FAILURES"), 1, 100_000),
        rerank_breaker_cooldown_s=_float("RERANK_BREAKER_COOLDOWN_S", get("RERANK_BREAKER_COOLDOWN_S"), 0.01, 86_400),
        rerank_fail_mode=_choice("RERANK_FAIL_MODE", get("RERANK_FAIL_MODE"), ("open", "closed")),
        local_model_max_tokens=_int("LOCAL_MODEL_MAX_TOKENS", get("LOCAL_MODEL_MAX_TOKENS"), 8, 512),
        local_vector_store=get("LOCAL_VECTOR_STORE").strip(),
        local_vector_store_max_entries=_int("LOCAL_VECTOR_STORE_MAX_ENTRIES", get("LOCAL_VECTOR_STORE_MAX_ENTRIES"), 1, 1_000_000_000),
        local_cold_wait_ms=_int("LOCAL_COLD_WAIT_MS", get("LOCAL_COLD_WAIT_MS"), 0, 600_000),
        local_embed_threads=_int("LOCAL_EMBED_THREADS", get("LOCAL_EMBED_THREADS"), 1, 64),
        local_embed_nice=_int("LOCAL_EMBED_NICE", get("LOCAL_EMBED_NICE"), 0, 19),
        local_embed_queue_max=_int("LOCAL_EMBED_QUEUE_MAX", get("LOCAL_EMBED_QUEUE_MAX"), 1, 100_000_000),
        local_warm_on_start=_csv(get("LOCAL_WARM_ON_START")),
        local_vector_shared_ttl_s=_float("LOCAL_VECTOR_SHARED_TTL_S", get("LOCAL_VECTOR_SHARED_TTL_S"), 0, 10 * 365 * 86_400),
        rerank_max_query_chars=_int("RERANK_MAX_QUERY_CHARS", get("RERANK_MAX_QUERY_CHARS"), 1, 10_000_000),
        cache_ttl_s=_float("CACHE_TTL_S", get("CACHE_TTL_S"), 0.001, 365 * 86_400),
        cache_max_entries=_int("CACHE_MAX_ENTRIES", get("CACHE_MAX_ENTRIES"), 0, 100_000_000),
        cache_answers_max_mb=_int("CACHE_ANSWERS_MAX_MB", get("CACHE_ANSWERS_MAX_MB"), 0, 65_536),
        redis_url=redis_url,
        redis_timeout_ms=_int("REDIS_TIMEOUT_MS", get("REDIS_TIMEOUT_MS"), 1, 60_000),
        admin_token=_read_secret(env, "ADMIN_TOKEN"),
        proxy_api_keys=_csv(_read_secret(env, "PROXY_API_KEYS")),
        max_body_bytes=_int("MAX_BODY_BYTES", get("MAX_BODY_BYTES"), 1024, 1 << 40),
        max_header_bytes=_int("MAX_HEADER_BYTES", get("MAX_HEADER_BYTES"), 1024, 1 << 24),
        max_search_body_bytes=_int("MAX_SEARCH_BODY_BYTES", get("MAX_SEARCH_BODY_BYTES"), 1024, 1 << 32),
        max_concurrent_requests=_int("MAX_CONCURRENT_REQUESTS", get("MAX_CONCURRENT_REQUESTS"), 1, 1_000_000),
        client_header_timeout_s=_float("CLIENT_HEADER_TIMEOUT_S", get("CLIENT_HEADER_TIMEOUT_S"), 0.1, 3600),
        client_body_timeout_s=_float("CLIENT_BODY_TIMEOUT_S", get("CLIENT_BODY_TIMEOUT_S"), 0.1, 3600),
        client_body_min_rate=_int("CLIENT_BODY_MIN_RATE", get("CLIENT_BODY_MIN_RATE"), 0, 1 << 30),
        max_msearch_searches=_int("MAX_MSEARCH_SEARCHES", get("MAX_MSEARCH_SEARCHES"), 1, 1_000_000),
        max_candidate_bytes=_int("MAX_CANDIDATE_BYTES", get("MAX_CANDIDATE_BYTES"), 65536, 1 << 34),
        shutdown_grace_s=_float("SHUTDOWN_GRACE_S", get("SHUTDOWN_GRACE_S"), 0, 3600),
        console_judgments_file=get("CONSOLE_JUDGMENTS_FILE").strip(),
        console_store_max_mb=_int("CONSOLE_STORE_MAX_MB", get("CONSOLE_STORE_MAX_MB"), 1, 1_000_000),
        log_level=log_level,
        log_format=_choice("LOG_FORMAT", get("LOG_FORMAT"), ("json", "ecs")),
        host=get("HOST").strip(),
        port=_int("PORT", get("PORT"), 1, 65_535),
        workers=_workers("WORKERS", get("WORKERS")),
    )


_DEFAULTS = {s.name: s.default for s in SETTINGS}


def non_defaults(settings: Settings) -> dict[str, Any]:
    """The effective settings that differ from the shipped defaults, by name, secrets redacted:
    what a measurement must state so its figures can be read as "on the defaults" or not."""
    shipped = load_settings({}).redacted()
    return {name: value for name, value in settings.redacted().items() if value != shipped[name]}


# --- start-up checks: misspelt names, malformed templates -------------------------------------------

# Unknown names under these prefixes are probably misspelt settings. Kubernetes service links
# (RERANK_PROXY_SERVICE_HOST, REDIS_PORT_6379_TCP...) share them and are left alone.
SETTING_PREFIXES = ("RERANK_", "UPSTREAM_", "CACHE_", "LOCAL_", "REDIS_", "ADMIN_", "PROXY_API", "CONSOLE_",
                    "SHUTDOWN_")
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$")
_TEMPLATE_FIELD = re.compile(r"\{[^{}]*[^{}\s][^{}]*\}")


def unknown_setting_warnings(env: Mapping[str, str]) -> list[str]:
    """One message per variable that looks like a setting but is none, naming the closest one."""
    known = SETTING_NAMES | TOOL_SETTING_NAMES | {f"{name}_FILE" for name in FILE_VARIANTS}
    messages = []
    for name in sorted(env):
        if name in known or not name.startswith(SETTING_PREFIXES) or _SERVICE_LINK.search(name):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        messages.append(f"{name} is not a setting and is ignored{hint}")
    return messages


def _check_template(name: str, raw: str, template: str, where: str = "") -> None:
    """Every brace must belong to one {field} placeholder: `title: {title` is a mistake, not text."""
    leftover = _TEMPLATE_FIELD.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise _fail(name, raw, f"{where}malformed template (an unmatched or empty brace)",
                    "text with {field} placeholders, e.g. 'title: {title}\\nbody: {body}'")
