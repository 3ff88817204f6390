"""Settings from the environment, validated once at start-up.

`SETTINGS` is the one source of each setting: its name, component, parser (type and range), shipped
default, meaning, example, and whether it is a secret. Everything else is derived from it: the
`Settings` dataclass takes its field defaults from it (so a `Settings` built in code runs on the
shipped defaults), `load_settings` is a loop over it, docs/settings.md is generated from it
(`config_reference.py`, kept in step by a test), and the unknown-name warning checks against it.
A wrong value raises `ConfigError` with one line naming the variable, the problem and what is
accepted; the CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rerank_proxy.config_values import (
    BadValue,
    ExistingFile,
    Flag,
    Integer,
    JsonList,
    Number,
    OneOf,
    OptionalInteger,
    Parser,
    RedisUrl,
    Template,
    Text,
    Url,
    UrlPath,
    Urls,
    Words,
    Workers,
    check_template,
    split_words,
)
from rerank_proxy.experiments.arms import DEFAULT_SALT, UNITS, Experiment, ExperimentSetting, SaltSetting


class ConfigError(ValueError):
    """A setting has a value the proxy cannot run with."""


_INDEX_FORBIDDEN = frozenset('\\/*?"<>| ,#:')


class IndexName:
    """An engine index name: lowercase, none of the characters the engines forbid, not `.`/`..`."""

    @property
    def accepted(self) -> str:
        return "a lowercase index name, without spaces, pipes or any of , \\ / * ? \" < > # : and not starting with - _ +"

    def __call__(self, raw: str) -> str:
        name = raw.strip()
        if not name or name in (".", "..") or name[0] in "-_+" or name != name.lower() \
                or any(c in _INDEX_FORBIDDEN for c in name) or len(name.encode()) > 255:
            raise BadValue("not a valid index name", self.accepted)
        return name


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    group: str        # the component that reads it (docs/settings.md has a section per group)
    parse: Parser
    default: str      # as shipped, in the variable's own syntax
    meaning: str
    example: str
    secret: bool = False
    from_file: bool = False   # also accepted as the contents of the file named by NAME_FILE

    @property
    def field(self) -> str:
        return self.name.lower()


PROVIDERS = ("local", "cohere", "cohere-v1", "compatible", "tei", "voyage", "none")
SCORE_MODES = ("auto", "rerank", "blend")  # RERANK_SCORE_MODE; applied and resolved in scoring/final.py
LOG_LEVELS = ("debug", "info", "warning", "error")
RULES_EXAMPLE = '[{"index":"products*","fields":["title"],"window":50}]'

SETTINGS: tuple[Setting, ...] = (
    # --- upstream ----------------------------------------------------------------------------------
    Setting("UPSTREAM_URLS", "upstream", Urls(), "http://127.0.0.1:9200",
            "Comma-separated engine URLs; load is spread across them, connection failures fail over.",
            "http://es1:9200,http://es2:9200"),
    Setting("UPSTREAM_CA_FILE", "upstream", ExistingFile(), "",
            "PEM CA bundle used to verify https upstreams (empty: system CAs).",
            "/etc/ssl/es-ca.pem"),
    Setting("UPSTREAM_CLIENT_CERT_FILE", "upstream", ExistingFile(), "",
            "PEM client certificate for mutual TLS to the upstream.",
            "/etc/ssl/proxy.pem"),
    Setting("UPSTREAM_CLIENT_KEY_FILE", "upstream", ExistingFile(), "",
            "PEM private key of the client certificate.",
            "/etc/ssl/proxy.key"),
    Setting("UPSTREAM_TLS_VERIFY", "upstream", Flag(), "true",
            "Verify the upstream's TLS certificate (true/false).",
            "true"),
    Setting("UPSTREAM_TIMEOUT_S", "upstream", Number(0.1, 3600), "60",
            "Read timeout for one upstream response, in seconds.",
            "30"),
    Setting("UPSTREAM_CONNECT_TIMEOUT_S", "upstream", Number(0.1, 600), "5",
            "Connect timeout to one upstream, in seconds.",
            "2"),
    Setting("UPSTREAM_MAX_CONNECTIONS", "upstream", Integer(1, 100_000), "200",
            "Open connections to the engines per worker, idle or in use; past it a request waits up to UPSTREAM_CONNECT_TIMEOUT_S for one, then gets 429.",
            "100"),
    # --- limits ------------------------------------------------------------------------------------
    Setting("MAX_BODY_BYTES", "limits", Integer(1024, 1 << 40), "104857600",
            "Largest request body accepted (413 above it).",
            "10485760"),
    Setting("MAX_HEADER_BYTES", "limits", Integer(1024, 1 << 24), "65536",
            "Largest total size of a request's headers (431 above it).",
            "16384"),
    Setting("MAX_SEARCH_BODY_BYTES", "limits", Integer(1024, 1 << 32), "10485760",
            "Largest search body the proxy parses (413 above it).",
            "1048576"),
    Setting("MAX_CONCURRENT_REQUESTS", "limits", Integer(1, 1_000_000), "1000",
            "Requests handled at once per worker; more get a 429 engine-style error.",
            "500"),
    Setting("CLIENT_HEADER_TIMEOUT_S", "limits", Number(0.1, 3600), "10",
            "Time a client has to send a whole request head; slower gets a 408 and the connection closes.",
            "5"),
    Setting("CLIENT_BODY_TIMEOUT_S", "limits", Number(0.1, 3600), "10",
            "Longest pause between two parts of a request body; longer gets a 408 and the connection closes.",
            "30"),
    Setting("CLIENT_BODY_MIN_RATE", "limits", Integer(0, 1 << 30), "1024",
            "Slowest average upload accepted after CLIENT_BODY_TIMEOUT_S, in bytes per second (0: none); slower gets a 408.",
            "256"),
    Setting("MAX_MSEARCH_SEARCHES", "limits", Integer(1, 1_000_000), "1000",
            "Most sub-searches in one _msearch the proxy parses (400 above it).",
            "200"),
    Setting("MAX_CANDIDATE_BYTES", "limits", Integer(65536, 1 << 34), "67108864",
            "Largest engine answer to a candidate fetch; past it the search is answered by the engine, unreranked and flagged.",
            "16777216"),
    # --- server ------------------------------------------------------------------------------------
    Setting("SHUTDOWN_GRACE_S", "server", Number(0, 3600), "20",
            "Seconds in-flight requests get to finish on shutdown.",
            "30"),
    Setting("HOST", "server", Text(), "127.0.0.1",
            "Interface `rerank-proxy serve` binds to.",
            "0.0.0.0"),
    Setting("PORT", "server", Integer(1, 65_535), "8080",
            "Port `rerank-proxy serve` listens on.",
            "9200"),
    Setting("WORKERS", "server", Workers(), "auto",
            "Worker processes of `rerank-proxy serve`: an integer, or auto (one per CPU this process may use, lowered to the cgroup CPU quota); several workers share one score cache per host.",
            "2"),
    # --- access ------------------------------------------------------------------------------------
    Setting("ADMIN_TOKEN", "access", Text(), "",
            "Bearer token for /_rerank/admin/* and the console (also ADMIN_TOKEN_FILE); unset: `serve` generates one at each start and logs the console URL with it; off: both disabled.",
            "s3cret", secret=True, from_file=True),
    Setting("PROXY_API_KEYS", "access", Words(), "",
            "Comma-separated keys clients must send in X-Proxy-Api-Key (also PROXY_API_KEYS_FILE); empty: no check.",
            "k1,k2", secret=True, from_file=True),
    # --- rerank ------------------------------------------------------------------------------------
    Setting("RERANK_PROVIDER", "rerank", OneOf(PROVIDERS), "local",
            "Who scores: local (built-in MiniLM), cohere, cohere-v1, compatible, tei, voyage, none.",
            "cohere"),
    Setting("RERANK_BASE_URL", "rerank", Url(optional=True), "",
            "Provider base URL (empty: the provider's public default).",
            "https://api.cohere.com"),
    Setting("RERANK_PATH", "rerank", UrlPath(), "",
            "Provider endpoint path (empty: the provider's default, e.g. /v2/rerank).",
            "/v1/rerank"),
    Setting("RERANK_API_KEY", "rerank", Text(), "",
            "Provider API key (also RERANK_API_KEY_FILE). Never logged.",
            "co-...", secret=True, from_file=True),
    Setting("RERANK_MODEL", "rerank", Text(), "",
            "Provider model (empty: rerank-v3.5 for Cohere, all-MiniLM-L6-v2 for local).",
            "rerank-v4.0-fast"),
    Setting("RERANK_WINDOW", "rerank", Integer(1, 10_000), "100",
            "Candidates fetched from the engine and reranked per search (1-10000).",
            "50"),
    Setting("RERANK_FIELDS", "rerank", Words(), "",
            "Comma-separated _source fields that make a hit's text (empty: see RERANK_TEXT_FROM_MAPPING).",
            "title,body"),
    Setting("RERANK_TEMPLATE", "rerank", Template(), "",
            "Template for a hit's text, with {field} placeholders (overrides RERANK_FIELDS).",
            "title: {title}\\nbody: {body}"),
    Setting("RERANK_TEXT_FROM_MAPPING", "rerank", Flag(), "true",
            "Without RERANK_FIELDS or RERANK_TEMPLATE (nor a rule's fields or template), a hit's text is the strings of its index's text-typed fields (text, match_only_text, search_as_you_type, semantic_text; read from the mapping, cached 60 s), so keyword ids and codes are not sent, nor a top-level metadata object's fields; false, or no readable mapping: every string of _source. Serialised JSON strings are left out either way (framework records, see docs/search.md).",
            "false"),
    Setting("RERANK_MAX_CHARS", "rerank", Integer(1, 1_000_000), "2000",
            "Each hit's text is truncated to this many characters before it is sent.",
            "4000"),
    Setting("RERANK_INDICES", "rerank", Words(), "*",
            "Comma-separated index patterns whose searches are reranked; others pass through.",
            "products*,docs"),
    Setting("RERANK_RULES", "rerank", JsonList(RULES_EXAMPLE), "",
            "JSON list of per-index rules overriding fields/template/window/max_chars/enabled.",
            "[{\"index\":\"products*\",\"fields\":[\"title\",\"description\"],\"window\":50}]"),
    Setting("RERANK_SCORE_MODE", "rerank", OneOf(SCORE_MODES), "auto",
            "Hit _score: rerank (provider score), blend (weighted with lexical), auto (blend for local, rerank otherwise).",
            "rerank"),
    Setting("RERANK_BLEND_WEIGHT", "rerank", Number(0.0, 1.0), "0.7",
            "Weight of the reranker in blend mode (0-1); the rest goes to the normalised lexical score (0.7: best on Cranfield, see docs/decisions/local-scoring.md).",
            "0.5"),
    Setting("RERANK_DEADLINE_MS", "rerank", Integer(10, 600_000), "3000",
            "Total time for one rerank, retries included; past it the search answers in lexical order.",
            "1500"),
    Setting("RERANK_ATTEMPT_TIMEOUT_MS", "rerank", Integer(10, 600_000), "2000",
            "Time limit for one provider attempt.",
            "1000"),
    Setting("RERANK_MAX_RETRIES", "rerank", Integer(0, 20), "2",
            "Retries after a failed provider attempt (429, 5xx, connection errors).",
            "3"),
    Setting("RERANK_MAX_CONCURRENCY", "rerank", Integer(1, 10_000), "64",
            "Provider calls in flight at once, per worker.",
            "16"),
    Setting("RERANK_BATCH_SIZE", "rerank", Integer(1, 10_000), "1000",
            "Most documents sent in one provider request; larger sets are split into concurrent batches.",
            "100"),
    Setting("RERANK_MAX_TOKENS_PER_DOC", "rerank", OptionalInteger(1, 1_000_000), "",
            "Cohere v2 max_tokens_per_doc (empty: the provider default, 4096).",
            "1024"),
    Setting("RERANK_BREAKER_FAILURES", "rerank", Integer(1, 100_000), "5",
            "Consecutive failed reranks that open the circuit breaker.",
            "10"),
    Setting("RERANK_BREAKER_COOLDOWN_S", "rerank", Number(0.01, 86_400), "30",
            "Seconds the breaker stays open before one probe is let through.",
            "10"),
    Setting("RERANK_FAIL_MODE", "rerank", OneOf(("open", "closed")), "open",
            "When the reranker fails: open (lexical order, flagged) or closed (engine-style 503).",
            "closed"),
    Setting("RERANK_MAX_QUERY_CHARS", "rerank", Integer(1, 10_000_000), "2000",
            "Query text is truncated to this many characters before it is reranked (models read a few hundred tokens).",
            "4000"),
    # --- local model -------------------------------------------------------------------------------
    Setting("LOCAL_MODEL_MAX_TOKENS", "local model", Integer(8, 512), "128",
            "Token limit of the built-in model's inputs (128: the length it was trained at; 256 costs twice the embedding time for no significant gain, see docs/decisions/token-cut.md).",
            "256"),
    Setting("LOCAL_VECTOR_STORE", "local model", Text(), "~/.cache/rerank-proxy/vectors.sqlite",
            "SQLite file of document vectors for the built-in model (shared by workers, survives restarts).",
            "/var/lib/rerank-proxy/vectors.sqlite"),
    Setting("LOCAL_VECTOR_STORE_MAX_ENTRIES", "local model", Integer(1, 1_000_000_000), "1000000",
            "Bound on stored document vectors (about 0.9 KB each on disk); the oldest are evicted.",
            "200000"),
    Setting("LOCAL_COLD_WAIT_MS", "local model", Integer(0, 600_000), "500",
            "How long a search waits for the background embedder to finish its cold documents; past it (or when they cannot finish in time) it answers in lexical order with reason vectors_cold.",
            "1000"),
    Setting("LOCAL_EMBED_THREADS", "local model", Integer(1, 64), "2",
            "Threads of the background embedder (each runs at LOCAL_EMBED_NICE).",
            "1"),
    Setting("LOCAL_EMBED_NICE", "local model", Integer(0, 19), "5",
            "How much lower the background embedder's CPU priority is than the proxy's (Linux niceness, 0-19): it gives way to searches and the engine on a shared host.",
            "10"),
    Setting("LOCAL_EMBED_QUEUE_MAX", "local model", Integer(1, 100_000_000), "100000",
            "Bound on documents waiting for the background embedder; past it new work is dropped and counted (searches' documents first). At most a tenth of it waits for write warming (10000 on the default: a few minutes of embedding); write documents past that are dropped and counted, and embedded when a search meets them.",
            "20000"),
    Setting("LOCAL_WARM_ON_START", "local model", Words(), "",
            "Comma-separated indices (or patterns) whose documents are read and queued for the background embedder at start-up, at the lowest priority (empty: off; traffic and writes warm the store).",
            "products,docs"),
    Setting("LOCAL_VECTOR_SHARED_TTL_S", "local model", Number(0, 10 * 365 * 86_400), "2592000",
            "With REDIS_URL set, document vectors are also kept in Redis for this long, so replicas and rolled pods share them (0: per-pod store only).",
            "604800"),
    # --- cache -------------------------------------------------------------------------------------
    Setting("CACHE_TTL_S", "cache", Number(0.001, 365 * 86_400), "3600",
            "Lifetime of a cached rerank score, in seconds.",
            "86400"),
    Setting("CACHE_MAX_ENTRIES", "cache", Integer(0, 100_000_000), "200000",
            "Bound on in-process cached scores (about 210 bytes each), per worker; with several workers, also on the per-host tier they share.",
            "1000000"),
    Setting("CACHE_ANSWERS_MAX_MB", "cache", Integer(0, 65_536), "32",
            "Memory for finished answers of repeated searches, in MiB per worker: the same request meeting the same engine answer is answered without reranking it again (0: off).",
            "128"),
    Setting("REDIS_URL", "cache", RedisUrl(), "",
            "Shared score cache for several replicas (empty: in-process cache only).",
            "redis://redis:6379/0", secret=True, from_file=True),
    Setting("REDIS_CLUSTER", "cache", Flag(), "false",
            "REDIS_URL names a seed node of a Redis Cluster (true/false): the client finds the other nodes and follows the slots; a lost node or CLUSTERDOWN is a miss.",
            "true"),
    Setting("REDIS_TIMEOUT_MS", "cache", Integer(1, 60_000), "50",
            "Time limit for one Redis operation; slower means a miss, never a failed search.",
            "100"),
    # --- console -----------------------------------------------------------------------------------
    Setting("CONSOLE_JUDGMENTS_FILE", "console", Text(), "~/.cache/rerank-proxy/console-judgments.json",
            "Where the relevance console keeps judgments and saved query sets: a SQLite database (a `.json` name keeps it beside, as `.sqlite3`, importing the old JSON once); shared by the workers of one host; must be writable.",
            "/var/lib/rerank-proxy/console-judgments.sqlite3"),
    Setting("CONSOLE_STORE_MAX_MB", "console", Integer(1, 1_000_000), "64",
            "Largest size of the console's store, in MiB; a save past it is refused (507) with how to make room.",
            "256"),
    # --- experiments -------------------------------------------------------------------------------
    Setting("RERANK_EXPERIMENT", "experiments", ExperimentSetting(), "off",
            "The online experiment: off; shadow (serve the lexical order, rerank behind it and record both); ab:<percent> (that share of users gets the reranked order, the rest the lexical order of the same window); interleave (team-draft interleaving of the two). The arm is answered in X-Rerank-Arm and recorded with the UBI query.",
            "ab:50"),
    Setting("RERANK_EXPERIMENT_UNIT", "experiments", OneOf(UNITS), "api_key",
            "Who keeps one arm across searches when a search has no UBI client_id: api_key (the Authorization header, else the source address), address (the client's address), forwarded_for (the first X-Forwarded-For address, behind a load balancer that sets it; else the address).",
            "forwarded_for"),
    Setting("RERANK_EXPERIMENT_SALT", "experiments", SaltSetting(), DEFAULT_SALT,
            "Seeds the arm assignment (at most 64 bytes); a new salt draws every user again, for a new experiment that must not inherit the last one's split.",
            "checkout-2027-01"),
    Setting("UBI", "experiments", Flag(), "true",
            "Record the searches that carry the UBI extension (`ext.ubi`) in UBI_QUERIES_INDEX (true/false); either way the extension is removed before the engine sees it and its query id is answered.",
            "false"),
    Setting("UBI_QUERIES_INDEX", "experiments", IndexName(), "ubi_queries",
            "The engine index the UBI query records are written to (created with its mapping on the first write).",
            "ubi_queries_shop"),
    Setting("UBI_QUEUE_MAX", "experiments", Integer(1, 10_000_000), "10000",
            "Most UBI query records a worker holds waiting for their bulk write; past it (a slow or refusing engine) records are dropped and counted, never a search slowed.",
            "50000"),
    # --- logging -----------------------------------------------------------------------------------
    Setting("LOG_LEVEL", "logging", OneOf(LOG_LEVELS), "info",
            "Log level: debug, info, warning, error.",
            "warning"),
    Setting("LOG_FORMAT", "logging", OneOf(("json", "ecs")), "json",
            "Log lines: json (short field names) or ecs (Elastic Common Schema, for Filebeat/Elastic Agent).",
            "ecs"),
)

# Read by the tools around the proxy (engine runner, demo), never by the request path.
TOOL_SETTINGS: tuple[Setting, ...] = (
    Setting("RERANK_PROXY_CACHE_DIR", "tools", Text(), "~/.cache/rerank-proxy/engines",
            "Where the engine runner keeps downloaded zips, unpacked engines, data and state (as root: /var/cache/rerank-proxy/engines, since the engine user cannot read /root).",
            "/var/cache/rerank-proxy"),
    Setting("RERANK_PROXY_ENGINE_USER", "tools", Text(), "rerankproxy",
            "Unprivileged system user the engine runner creates and runs engines as (when started as root).",
            "search"),
    Setting("RERANK_PROXY_JAVA_HOME", "tools", Text(), "",
            "JDK the engine runner must use (empty: the newest fitting JDK found).",
            "/usr/lib/jvm/temurin-25-jdk-amd64"),
    Setting("JAVA_HOME_21", "tools", Text(), "",
            "A Java 21+ JDK for Elasticsearch 9 and OpenSearch 3 (searched before /usr/lib/jvm).",
            "/opt/jdk-21"),
    Setting("JAVA_HOME_17", "tools", Text(), "",
            "A Java 17 JDK for Elasticsearch 8 and OpenSearch 2 (searched before /usr/lib/jvm).",
            "/opt/jdk-17"),
)

SETTING_NAMES = frozenset(s.name for s in SETTINGS)
TOOL_SETTING_NAMES = frozenset(s.name for s in TOOL_SETTINGS)
SECRET_NAMES = frozenset(s.name for s in SETTINGS if s.secret)
FILE_VARIANTS = tuple(s.name for s in SETTINGS if s.from_file)
_BY_NAME = {s.name: s for s in SETTINGS}


def shipped(name: str) -> Any:
    """The shipped default of setting `name`, parsed as a variable set to it would be."""
    setting = _BY_NAME[name]
    return setting.parse(setting.default)


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
    """The effective settings; every field's default is its setting's shipped default."""

    upstream_urls: tuple[str, ...] = shipped("UPSTREAM_URLS")
    upstream_ca_file: str = shipped("UPSTREAM_CA_FILE")
    upstream_client_cert_file: str = shipped("UPSTREAM_CLIENT_CERT_FILE")
    upstream_client_key_file: str = shipped("UPSTREAM_CLIENT_KEY_FILE")
    upstream_tls_verify: bool = shipped("UPSTREAM_TLS_VERIFY")
    upstream_timeout_s: float = shipped("UPSTREAM_TIMEOUT_S")
    upstream_connect_timeout_s: float = shipped("UPSTREAM_CONNECT_TIMEOUT_S")
    upstream_max_connections: int = shipped("UPSTREAM_MAX_CONNECTIONS")
    rerank_provider: str = shipped("RERANK_PROVIDER")
    rerank_base_url: str = shipped("RERANK_BASE_URL")
    rerank_path: str = shipped("RERANK_PATH")
    rerank_api_key: str = shipped("RERANK_API_KEY")
    rerank_model: str = shipped("RERANK_MODEL")
    rerank_window: int = shipped("RERANK_WINDOW")
    rerank_fields: tuple[str, ...] = shipped("RERANK_FIELDS")
    rerank_template: str = shipped("RERANK_TEMPLATE")
    rerank_text_from_mapping: bool = shipped("RERANK_TEXT_FROM_MAPPING")
    rerank_max_chars: int = shipped("RERANK_MAX_CHARS")
    rerank_indices: tuple[str, ...] = shipped("RERANK_INDICES")
    rerank_rules: tuple[IndexRule, ...] = shipped("RERANK_RULES")
    rerank_score_mode: str = shipped("RERANK_SCORE_MODE")
    rerank_blend_weight: float = shipped("RERANK_BLEND_WEIGHT")
    rerank_deadline_ms: int = shipped("RERANK_DEADLINE_MS")
    rerank_attempt_timeout_ms: int = shipped("RERANK_ATTEMPT_TIMEOUT_MS")
    rerank_max_retries: int = shipped("RERANK_MAX_RETRIES")
    rerank_max_concurrency: int = shipped("RERANK_MAX_CONCURRENCY")
    rerank_batch_size: int = shipped("RERANK_BATCH_SIZE")
    rerank_max_tokens_per_doc: int | None = shipped("RERANK_MAX_TOKENS_PER_DOC")
    rerank_breaker_failures: int = shipped("RERANK_BREAKER_FAILURES")
    rerank_breaker_cooldown_s: float = shipped("RERANK_BREAKER_COOLDOWN_S")
    rerank_fail_mode: str = shipped("RERANK_FAIL_MODE")
    local_model_max_tokens: int = shipped("LOCAL_MODEL_MAX_TOKENS")
    local_vector_store: str = shipped("LOCAL_VECTOR_STORE")
    local_vector_store_max_entries: int = shipped("LOCAL_VECTOR_STORE_MAX_ENTRIES")
    local_cold_wait_ms: int = shipped("LOCAL_COLD_WAIT_MS")
    local_embed_threads: int = shipped("LOCAL_EMBED_THREADS")
    local_embed_nice: int = shipped("LOCAL_EMBED_NICE")
    local_embed_queue_max: int = shipped("LOCAL_EMBED_QUEUE_MAX")
    local_vector_shared_ttl_s: float = shipped("LOCAL_VECTOR_SHARED_TTL_S")
    local_warm_on_start: tuple[str, ...] = shipped("LOCAL_WARM_ON_START")
    rerank_max_query_chars: int = shipped("RERANK_MAX_QUERY_CHARS")
    cache_ttl_s: float = shipped("CACHE_TTL_S")
    cache_max_entries: int = shipped("CACHE_MAX_ENTRIES")
    cache_answers_max_mb: int = shipped("CACHE_ANSWERS_MAX_MB")
    redis_url: str = shipped("REDIS_URL")
    redis_cluster: bool = shipped("REDIS_CLUSTER")
    redis_timeout_ms: int = shipped("REDIS_TIMEOUT_MS")
    admin_token: str = shipped("ADMIN_TOKEN")
    proxy_api_keys: tuple[str, ...] = shipped("PROXY_API_KEYS")
    max_body_bytes: int = shipped("MAX_BODY_BYTES")
    max_search_body_bytes: int = shipped("MAX_SEARCH_BODY_BYTES")
    max_header_bytes: int = shipped("MAX_HEADER_BYTES")
    max_concurrent_requests: int = shipped("MAX_CONCURRENT_REQUESTS")
    client_header_timeout_s: float = shipped("CLIENT_HEADER_TIMEOUT_S")
    client_body_timeout_s: float = shipped("CLIENT_BODY_TIMEOUT_S")
    client_body_min_rate: int = shipped("CLIENT_BODY_MIN_RATE")
    max_msearch_searches: int = shipped("MAX_MSEARCH_SEARCHES")
    max_candidate_bytes: int = shipped("MAX_CANDIDATE_BYTES")
    shutdown_grace_s: float = shipped("SHUTDOWN_GRACE_S")
    console_judgments_file: str = shipped("CONSOLE_JUDGMENTS_FILE")
    console_store_max_mb: int = shipped("CONSOLE_STORE_MAX_MB")
    rerank_experiment: Experiment = shipped("RERANK_EXPERIMENT")  # noqa: RUF009 - a frozen dataclass
    rerank_experiment_unit: str = shipped("RERANK_EXPERIMENT_UNIT")
    rerank_experiment_salt: str = shipped("RERANK_EXPERIMENT_SALT")
    ubi: bool = shipped("UBI")
    ubi_queries_index: str = shipped("UBI_QUERIES_INDEX")
    ubi_queue_max: int = shipped("UBI_QUEUE_MAX")
    log_level: str = shipped("LOG_LEVEL")
    log_format: str = shipped("LOG_FORMAT")
    host: str = shipped("HOST")
    port: int = shipped("PORT")
    workers: int = shipped("WORKERS")

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
            elif isinstance(value, Experiment):
                value = str(value)  # in the setting's own syntax, as it was given
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


# --- loading -------------------------------------------------------------------------------------


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raises ConfigError on the first bad one."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = _read_secret(env, setting.name) if setting.from_file else env.get(setting.name, setting.default)
        try:
            values[setting.field] = setting.parse(raw)
        except BadValue as exc:
            raise _fail(setting.name, raw, exc.problem, exc.accepted) from None
    _check_together(values)
    values["admin_token"] = _admin_token(values["admin_token"])
    default_rule = IndexRule(pattern="*", fields=values["rerank_fields"], template=values["rerank_template"],
                             window=values["rerank_window"], max_chars=values["rerank_max_chars"],
                             text_from_mapping=_from_mapping(values["rerank_text_from_mapping"],
                                                             values["rerank_fields"], values["rerank_template"]))
    values["rerank_rules"] = _rules(values["rerank_rules"], default_rule, env.get("RERANK_RULES", ""))
    values["rerank_attempt_timeout_ms"] = min(values["rerank_attempt_timeout_ms"], values["rerank_deadline_ms"])
    return Settings(**values)


def _check_together(values: Mapping[str, Any]) -> None:
    """The rules that involve more than one setting."""
    provider, api_key, base_url = values["rerank_provider"], values["rerank_api_key"], values["rerank_base_url"]
    if provider in ("cohere", "cohere-v1", "voyage") and not api_key and not base_url:
        raise ConfigError(f"RERANK_API_KEY is empty but RERANK_PROVIDER={provider} calls a hosted API; "
                          "accepted: set RERANK_API_KEY (or RERANK_API_KEY_FILE), or point RERANK_BASE_URL "
                          "at a self-hosted server")
    if provider in ("compatible", "tei") and not base_url:
        raise ConfigError(f"RERANK_BASE_URL is empty but RERANK_PROVIDER={provider} needs it; "
                          "accepted: the server's URL, e.g. http://reranker:8080")
    if values["upstream_client_key_file"] and not values["upstream_client_cert_file"]:
        raise ConfigError("UPSTREAM_CLIENT_KEY_FILE is set without UPSTREAM_CLIENT_CERT_FILE; "
                          "accepted: both or neither")
    if values["redis_cluster"]:
        _check_cluster_url(values["redis_url"])


def _check_cluster_url(url: str) -> None:
    """REDIS_CLUSTER needs a TCP seed node; a cluster has only database 0."""
    if not url:
        raise ConfigError("REDIS_CLUSTER=true but REDIS_URL is empty; accepted: REDIS_URL naming a seed node "
                          "of the cluster, e.g. redis://redis-cluster:6379/0, or REDIS_CLUSTER=false")
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raise ConfigError("REDIS_CLUSTER=true but REDIS_URL is a unix:// socket; accepted: a redis:// or "
                          "rediss:// seed node (cluster nodes talk TCP)")
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError("REDIS_CLUSTER=true but REDIS_URL names database "
                          f"{parts.path.strip('/')!r}; accepted: database 0 (/0 or none), the only one a cluster has")


# ADMIN_TOKEN=off turns the admin endpoints and the console off (unset no longer does: `serve` then
# generates a token). Other words that read as a switch are refused rather than taken as a token
# anyone could guess.
ADMIN_OFF = "off"
_ADMIN_SWITCH_WORDS = frozenset({"disabled", "disable", "none", "false", "no", "0", "on", "true", "yes", "1"})


def _admin_token(token: str) -> str:
    """The loaded ADMIN_TOKEN: "" for off (what every admin endpoint checks for), else the token."""
    word = token.lower()
    if word == ADMIN_OFF:
        return ""
    if word in _ADMIN_SWITCH_WORDS:
        raise _fail("ADMIN_TOKEN", token, "reads as a switch, not a token",
                    "off (admin endpoints and console disabled), a token, or unset (serve generates one)")
    return token


def _fail(name: str, value: str, problem: str, accepted: str) -> ConfigError:
    shown = "<redacted>" if name in SECRET_NAMES else repr(value)
    return ConfigError(f"{name}={shown}: {problem}; accepted: {accepted}")


_RULE_KEYS = frozenset({"index", "enabled", "fields", "template", "window", "max_chars"})


def _rules(items: tuple[dict[str, Any], ...], defaults: IndexRule, raw: str) -> tuple[IndexRule, ...]:
    """RERANK_RULES' items as rules; what a rule leaves out it inherits from the default rule."""
    return tuple(_rule(i, item, defaults, raw) for i, item in enumerate(items))


def _rule(i: int, item: dict[str, Any], defaults: IndexRule, raw: str) -> IndexRule:
    accepted = f"a JSON list like {RULES_EXAMPLE}"

    def bad(problem: str, what: str = accepted) -> ConfigError:
        return _fail("RERANK_RULES", raw, problem, what)

    if not isinstance(item.get("index"), str) or not item["index"]:
        raise bad(f"rule {i} has no \"index\" pattern")
    unknown = set(item) - _RULE_KEYS
    if unknown:
        raise bad(f"rule {i} has unknown keys {sorted(unknown)}", ", ".join(sorted(_RULE_KEYS)))
    chosen = item.get("fields", list(defaults.fields))
    if isinstance(chosen, str):
        chosen = split_words(chosen)
    if not isinstance(chosen, (list, tuple)) or not all(isinstance(f, str) for f in chosen):
        raise bad(f"rule {i}: fields must be a list of strings")
    window = item.get("window", defaults.window)
    max_chars = item.get("max_chars", defaults.max_chars)
    if not isinstance(window, int) or not 1 <= window <= 10_000:
        raise bad(f"rule {i}: window must be an integer 1-10000")
    if not isinstance(max_chars, int) or not 1 <= max_chars <= 1_000_000:
        raise bad(f"rule {i}: max_chars must be an integer 1-1000000")
    template = item.get("template", defaults.template)
    enabled = item.get("enabled", True)
    if not isinstance(template, str) or not isinstance(enabled, bool):
        raise bad(f"rule {i}: template must be a string and enabled a boolean")
    try:
        check_template(template, f"rule {i}: ")
    except BadValue as exc:
        raise bad(exc.problem, exc.accepted) from None
    # A rule that names fields or a template (even `"fields": []`: every string) has chosen its
    # text; one that only sets a window or a cut inherits the default, the mapping included.
    from_mapping = defaults.text_from_mapping and "fields" not in item and "template" not in item
    return IndexRule(pattern=item["index"], enabled=enabled, fields=tuple(chosen), template=template,
                     window=window, max_chars=max_chars, text_from_mapping=from_mapping)


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


def non_defaults(settings: Settings) -> dict[str, Any]:
    """The effective settings that differ from the shipped defaults, by name, secrets redacted:
    what a measurement must state so its figures can be read as "on the defaults" or not."""
    shipped_values = Settings().redacted()
    return {name: value for name, value in settings.redacted().items() if value != shipped_values[name]}


def field_names() -> tuple[str, ...]:
    """The dataclass's fields, for the test that they are exactly the table's settings."""
    return tuple(f.name for f in fields(Settings))


# --- start-up checks: misspelt names -------------------------------------------------------------

# Unknown names under these prefixes are probably misspelt settings. Kubernetes service links
# (RERANK_PROXY_SERVICE_HOST, REDIS_PORT_6379_TCP...) share them and are left alone.
SETTING_PREFIXES = ("RERANK_", "UPSTREAM_", "CACHE_", "LOCAL_", "REDIS_", "ADMIN_", "PROXY_API", "CONSOLE_",
                    "SHUTDOWN_")
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$")


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
