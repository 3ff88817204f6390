"""Run one `do` step with elasticsearch-py's own client methods.

`do: {indices.create: {index: i, body: {...}}}` becomes `client.options(...).indices.create(index="i", body={...})`:
the client maps the API to its HTTP method and path, builds the query string and serialises the body
exactly as it does for users (`body` is passed through: the client spreads it into the API's body
fields, or sends it whole where the API takes one body, e.g. `bulk`). A string body (YAML `>` block) is
sent as it is.

`catch` follows the YAML REST test format: `bad_request` 400, `unauthorized` 401, `forbidden` 403,
`missing` 404, `request_timeout` 408, `conflict` 409, `unavailable` 503, `request` any 4xx/5xx, `param`
a client-side parameter error, `/regex/` the error answer's text. A bare word that is none of these
(the suite has `catch: resource_not_found_exception`) must occur in the error answer's text.
After a caught error the error answer is the response the next assertions look at.

Where the client names a parameter differently from the REST spec the suite follows, `PARAM_RENAMES`
renames it (`snapshot.create_repository(repository=...)` is the client's `name=`; its `repository=` is
the body). A parameter the client has no way to send is dropped (`DROPPED_PARAMS`) and the trace says so.
`ignore: 404` becomes `client.options(ignore_status=404)`.

`headers` go in `client.options(headers=...)`. `warnings`, `allowed_warnings` and `node_selector` are
read but not checked: deprecation warnings are the engine's, and there is one node.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

from elastic_transport import ApiResponse, HeadApiResponse
from elasticsearch import ApiError, Elasticsearch

from tests.client_yaml.stash import Stash

CATCH_STATUS: dict[str, tuple[int, ...]] = {
    "bad_request": (400,), "unauthorized": (401,), "forbidden": (403,), "missing": (404,),
    "request_timeout": (408,), "conflict": (409,), "unavailable": (503,),
}
STEP_OPTIONS = frozenset({"catch", "headers", "warnings", "allowed_warnings", "warnings_regex",
                          "allowed_warnings_regex", "node_selector"})


PARAM_RENAMES: dict[str, dict[str, str]] = {
    **{f"snapshot.{api}": {"repository": "name"}
       for api in ("create_repository", "delete_repository", "verify_repository", "cleanup_repository",
                   "repository_analyze")},
    "ilm.get_lifecycle": {"policy": "name"},
    "ilm.delete_lifecycle": {"policy": "name"},
}
# nodes.hot_threads answers plain text whatever `format` says, and elasticsearch-py has no `format` for it.
DROPPED_PARAMS: dict[str, frozenset[str]] = {"nodes.hot_threads": frozenset({"format"})}


class StepFailure(AssertionError):
    """A step did not do what the test says (an unexpected error, a catch that did not happen, ...)."""


@dataclass
class DoResult:
    api: str
    status: int | None
    body: Any


def split_do(spec: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`do` mapping -> (api name, its params, step options)."""
    options = {k: v for k, v in spec.items() if k in STEP_OPTIONS}
    apis = [k for k in spec if k not in STEP_OPTIONS]
    if len(apis) != 1:
        raise StepFailure(f"a do step names exactly one API, got {apis}")
    params = spec[apis[0]] or {}
    if not isinstance(params, dict):
        raise StepFailure(f"{apis[0]}: params must be a mapping, got {params!r:.200}")
    return apis[0], params, options


def api_method(client: Elasticsearch, api: str) -> Any:
    target: Any = client
    for part in api.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise StepFailure(f"elasticsearch-py has no API {api!r}")
    return target


def response_body(response: Any) -> tuple[int | None, Any]:
    if isinstance(response, HeadApiResponse):
        return response.meta.status, bool(response)
    if isinstance(response, ApiResponse):
        return response.meta.status, response.body
    return None, response


def error_text(error: ApiError) -> str:
    body = error.body
    if isinstance(body, (dict, list)):
        return json.dumps(body)
    return str(body if body is not None else error.message)


def _catch_matches(catch: str, error: ApiError) -> bool:
    status = error.meta.status
    if catch in CATCH_STATUS:
        return status in CATCH_STATUS[catch]
    if catch == "request":
        return status >= 400
    if len(catch) > 1 and catch.startswith("/") and catch.endswith("/"):
        return re.search(catch[1:-1].strip(), error_text(error), re.VERBOSE) is not None
    return catch in error_text(error)


def client_params(api: str, params: dict[str, Any], notes: list[str]) -> tuple[dict[str, Any], Any]:
    """The suite's params as the client method's keyword arguments, and the `ignore` status(es) if any."""
    renames = PARAM_RENAMES.get(api, {})
    dropped = DROPPED_PARAMS.get(api, frozenset())
    out: dict[str, Any] = {}
    ignore = params.get("ignore")
    for name, value in params.items():
        if name == "ignore":
            continue
        if name in dropped:
            notes.append(f"  dropped {name}={value!r}: elasticsearch-py's {api} cannot send it")
            continue
        out[renames.get(name, name)] = value
    return out, ignore


def run_do(client: Elasticsearch, spec: dict[str, Any], stash: Stash, notes: list[str] | None = None) -> DoResult:
    """Run one `do` step; the response (or a caught error's answer) becomes `stash.body`."""
    api, raw_params, options = split_do(spec)
    params, ignore = client_params(api, stash.resolve(raw_params), notes if notes is not None else [])
    catch = options.get("catch")
    headers = stash.resolve(options.get("headers") or {})
    target = client
    if headers or ignore is not None:
        extra: dict[str, Any] = {}
        if headers:
            extra["headers"] = {str(k): str(v) for k, v in headers.items()}
        if ignore is not None:
            extra["ignore_status"] = ignore
        target = client.options(**extra)
    method = api_method(target, api)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # ElasticsearchWarning (deprecations), DeprecationWarning
            response = method(**params)
    except ApiError as error:
        stash.body = error.body
        if catch is None:
            raise StepFailure(f"{api} answered {error.meta.status}: {error_text(error)[:500]}") from error
        if catch == "param" or not _catch_matches(str(catch), error):
            raise StepFailure(f"{api}: expected catch {catch!r}, got {error.meta.status}: "
                              f"{error_text(error)[:500]}") from error
        return DoResult(api, error.meta.status, error.body)
    except (TypeError, ValueError) as error:
        if catch == "param":
            return DoResult(api, None, None)
        raise StepFailure(f"{api}: the client refused the parameters: {error}") from error
    status, body = response_body(response)
    stash.body = body
    if catch is not None:
        raise StepFailure(f"{api}: expected catch {catch!r}, but it answered {status}")
    return DoResult(api, status, body)
