"""A small runner for Elastic's client YAML tests (`elasticsearch-clients-tests`), written for this repo.

The suite (Apache-2.0) lives read-only in `../shared/conformance/elasticsearch-clients-tests/`. Its files are
in Elasticsearch's YAML REST test format: a `requires` document, optional `setup` and `teardown` documents,
then one document per test, each a list of steps (`do`, `match`, `is_true`, `set`, ...).

- `loader`: files -> `YamlFile` / `YamlTest` (plain data).
- `stash`: `set` values and `$var` / `${var}` substitution, and dotted response paths.
- `executor`: runs one `do` step with elasticsearch-py's own client methods (what users run), so the
  API name -> method and path mapping is the client's.
- `matchers`: the assertions.
- `runner`: setup, steps and teardown of each test, outcomes, and a cleanup of what a file left behind.
- `subset`: which files the local integ-test engine runs, and why the others are left out.
"""
