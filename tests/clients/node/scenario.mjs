// One scenario (create, bulk, refresh, search, msearch, get, update, get, delete, count) run with the
// official Node.js client of an engine kind, printing one JSON object on stdout.
//
//   node scenario.mjs --kind elasticsearch|opensearch --url URL --index NAME --corpus FILE
//
// The corpus file is a JSON list of {"_id": ..., "_source": {...}}. Both clients return the HTTP status
// and the response headers with each result (the Elasticsearch client when asked with {meta: true}),
// so every step records its status and X-Rerank header.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const QUERY = 'jet engine noise';
const UPDATE_ID = '3';
const MAPPINGS = {
  properties: { title: { type: 'text' }, body: { type: 'text' }, year: { type: 'integer' } },
};
const SETTINGS = { number_of_shards: 1, number_of_replicas: 0 };
const PARTIAL_DOC = { title: 'Jet mixing, revised', year: 2000 };

const { values: args } = parseArgs({
  options: {
    kind: { type: 'string' },
    url: { type: 'string' },
    index: { type: 'string' },
    corpus: { type: 'string' },
  },
});
for (const name of ['kind', 'url', 'index', 'corpus']) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}
const corpus = JSON.parse(readFileSync(args.corpus, 'utf8'));
const index = args.index;
const match = { match: { body: QUERY } };

// --- the two clients behind one small interface ---------------------------------------------------

function elasticsearchApi(url) {
  const { Client } = require('@elastic/elasticsearch');
  const es = new Client({ node: url, requestTimeout: 30000, maxRetries: 0 });
  const meta = { meta: true };
  return {
    client: `@elastic/elasticsearch ${require('@elastic/elasticsearch/package.json').version}`,
    close: () => es.close(),
    create: () => es.indices.create({ index, settings: SETTINGS, mappings: MAPPINGS }, meta),
    bulk: (operations) => es.bulk({ operations }, meta),
    refresh: () => es.indices.refresh({ index }, meta),
    search: (body) => es.search({ index, ...body }, meta),
    msearch: (searches) => es.msearch({ searches }, meta),
    get: (id) => es.get({ index, id }, meta),
    update: (id, doc) => es.update({ index, id, doc }, meta),
    delete: (id) => es.delete({ index, id, refresh: true }, meta),
    count: () => es.count({ index }, meta),
  };
}

function opensearchApi(url) {
  const { Client } = require('@opensearch-project/opensearch');
  const os = new Client({ node: url, requestTimeout: 30000, maxRetries: 0 });
  return {
    client: `@opensearch-project/opensearch ${require('@opensearch-project/opensearch/package.json').version}`,
    close: () => os.close(),
    create: () => os.indices.create({ index, body: { settings: SETTINGS, mappings: MAPPINGS } }),
    bulk: (operations) => os.bulk({ body: operations }),
    refresh: () => os.indices.refresh({ index }),
    search: (body) => os.search({ index, body }),
    msearch: (searches) => os.msearch({ body: searches }),
    get: (id) => os.get({ index, id }),
    update: (id, doc) => os.update({ index, id, body: { doc } }),
    delete: (id) => os.delete({ index, id, refresh: true }),
    count: () => os.count({ index }),
  };
}

// --- the scenario ---------------------------------------------------------------------------------

function hits(body) {
  const out = { ids: [], scores: [], sources: {} };
  for (const hit of body.hits.hits) {
    out.ids.push(hit._id);
    out.scores.push(hit._score ?? null);
    out.sources[hit._id] = hit._source;
  }
  const total = body.hits.total;
  out.total = typeof total === 'object' && total !== null ? total.value : total;
  out.max_score = body.hits.max_score ?? null;
  return out;
}

function header(headers, name) {
  if (!headers) return null;
  const value = headers[name] ?? headers[name.toLowerCase()];
  return value === undefined ? null : String(value);
}

const steps = {};

async function step(name, call, summarize) {
  const out = {};
  try {
    const response = await call();
    Object.assign(out, summarize(response.body));
    out.ok = response.statusCode < 300;
    out.status = response.statusCode;
    out.rerank = header(response.headers, 'x-rerank');
  } catch (error) {
    out.ok = false;
    out.error = `${error.name}: ${error.message}`;
    out.status = error.meta?.statusCode ?? null;
    out.rerank = header(error.meta?.headers, 'x-rerank');
  }
  steps[name] = out;
}

const api = args.kind === 'elasticsearch' ? elasticsearchApi(args.url)
  : args.kind === 'opensearch' ? opensearchApi(args.url)
    : null;
if (api === null) {
  console.error('--kind must be elasticsearch or opensearch');
  process.exit(2);
}

try {
  await step('create', api.create, (b) => ({ acknowledged: b.acknowledged }));
  const operations = corpus.flatMap((d) => [{ index: { _index: index, _id: d._id } }, d._source]);
  await step('bulk', () => api.bulk(operations), (b) => ({ errors: b.errors, items: b.items.length }));
  await step('refresh', api.refresh, () => ({}));
  await step('search', () => api.search({ query: match, size: 5 }), hits);
  await step('search_window', () => api.search({ query: match, size: 20 }), hits);
  await step('msearch', () => api.msearch([
    { index }, { query: match, size: 5 },
    { index }, { query: { match_all: {} }, size: 2 },
  ]), (b) => ({
    responses: b.responses.map((r) => (r.error
      ? { status: r.status, error: r.error.type }
      : { status: r.status, ...hits(r) })),
  }));
  const summarizeGet = (b) => ({ found: b.found, source: b._source, version: b._version });
  await step('get', () => api.get(UPDATE_ID), summarizeGet);
  await step('update', () => api.update(UPDATE_ID, PARTIAL_DOC), (b) => ({ result: b.result, version: b._version }));
  await step('get_updated', () => api.get(UPDATE_ID), summarizeGet);
  await step('delete', () => api.delete(UPDATE_ID), (b) => ({ result: b.result, version: b._version }));
  await step('count', api.count, (b) => ({ count: b.count }));
} finally {
  await api.close();
}

console.log(JSON.stringify({
  client: api.client,
  kind: args.kind,
  headers_exposed: true,
  headers_via: 'response.headers',
  steps,
}));
