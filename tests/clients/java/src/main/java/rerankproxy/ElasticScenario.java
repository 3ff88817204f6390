package rerankproxy;

import co.elastic.clients.elasticsearch.ElasticsearchClient;
import co.elastic.clients.elasticsearch._types.Refresh;
import co.elastic.clients.elasticsearch._types.query_dsl.Query;
import co.elastic.clients.elasticsearch.core.BulkRequest;
import co.elastic.clients.elasticsearch.core.GetResponse;
import co.elastic.clients.elasticsearch.core.MsearchResponse;
import co.elastic.clients.elasticsearch.core.SearchResponse;
import co.elastic.clients.elasticsearch.core.msearch.MultiSearchItem;
import co.elastic.clients.elasticsearch.core.msearch.MultiSearchResponseItem;
import co.elastic.clients.elasticsearch.core.search.Hit;
import co.elastic.clients.elasticsearch.core.search.HitsMetadata;
import co.elastic.clients.json.jackson.JacksonJsonpMapper;
import co.elastic.clients.transport.rest5_client.Rest5ClientTransport;
import co.elastic.clients.transport.rest5_client.low_level.Rest5Client;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.List;

/** The scenario with co.elastic.clients:elasticsearch-java over its Rest5Client transport. */
final class ElasticScenario {
    private ElasticScenario() {}

    static String version() {
        String v = ElasticsearchClient.class.getPackage().getImplementationVersion();
        return v == null ? co.elastic.clients.transport.Version.VERSION.toString() : v;
    }

    static Query match() {
        return Query.of(q -> q.match(m -> m.field("body").query(ClientScenario.QUERY)));
    }

    static void hits(ObjectNode out, HitsMetadata<ObjectNode> hits) {
        ArrayNode ids = out.putArray("ids");
        ArrayNode scores = out.putArray("scores");
        ObjectNode sources = out.putObject("sources");
        for (Hit<ObjectNode> hit : hits.hits()) {
            ClientScenario.putHit(ids, scores, sources, hit.id(), hit.score(), hit.source());
        }
        if (hits.total() != null) {
            out.put("total", hits.total().value());
        }
        if (hits.maxScore() == null) {
            out.putNull("max_score");
        } else {
            out.put("max_score", hits.maxScore());
        }
    }

    static void run(ClientScenario s, String url, String index, List<String> ids, List<ObjectNode> docs)
            throws Exception {
        Rest5Client rest = Rest5Client.builder(ClientScenario.uri(url))
                .setHttpClientConfigCallback(ClientScenario::intercept)
                .build();
        try (ElasticsearchClient es = new ElasticsearchClient(new Rest5ClientTransport(rest, new JacksonJsonpMapper()))) {
            s.step("create", out -> out.put("acknowledged", es.indices().create(c -> c.index(index)
                    .settings(st -> st.numberOfShards("1").numberOfReplicas("0"))
                    .mappings(m -> m.properties("title", p -> p.text(t -> t))
                            .properties("body", p -> p.text(t -> t))
                            .properties("year", p -> p.integer(i -> i)))).acknowledged()));
            s.step("bulk", out -> {
                BulkRequest.Builder bulk = new BulkRequest.Builder();
                for (int i = 0; i < ids.size(); i++) {
                    String id = ids.get(i);
                    ObjectNode doc = docs.get(i);
                    bulk.operations(op -> op.index(x -> x.index(index).id(id).document(doc)));
                }
                var response = es.bulk(bulk.build());
                out.put("errors", response.errors());
                out.put("items", response.items().size());
            });
            s.step("refresh", out -> es.indices().refresh(r -> r.index(index)));
            s.step("search", out -> {
                SearchResponse<ObjectNode> r = es.search(x -> x.index(index).query(match()).size(5), ObjectNode.class);
                hits(out, r.hits());
            });
            s.step("search_window", out -> {
                SearchResponse<ObjectNode> r = es.search(x -> x.index(index).query(match()).size(20), ObjectNode.class);
                hits(out, r.hits());
            });
            s.step("msearch", out -> {
                MsearchResponse<ObjectNode> r = es.msearch(m -> m
                        .searches(x -> x.header(h -> h.index(index)).body(b -> b.query(match()).size(5)))
                        .searches(x -> x.header(h -> h.index(index)).body(b -> b.query(q -> q.matchAll(a -> a)).size(2))),
                        ObjectNode.class);
                ArrayNode responses = out.putArray("responses");
                for (MultiSearchResponseItem<ObjectNode> item : r.responses()) {
                    ObjectNode one = responses.addObject();
                    if (item.isResult()) {
                        MultiSearchItem<ObjectNode> result = item.result();
                        one.put("status", result.status());
                        hits(one, result.hits());
                    } else {
                        one.put("status", item.failure().status());
                        one.put("error", item.failure().error().type());
                    }
                }
            });
            ClientScenario.Step get = out -> {
                GetResponse<ObjectNode> g = es.get(x -> x.index(index).id(ClientScenario.UPDATE_ID), ObjectNode.class);
                out.put("found", g.found());
                out.set("source", g.source());
                out.put("version", g.version());
            };
            s.step("get", get);
            s.step("update", out -> {
                var u = es.update(x -> x.index(index).id(ClientScenario.UPDATE_ID).doc(ClientScenario.partialDoc()),
                        ObjectNode.class);
                out.put("result", u.result().jsonValue());
                out.put("version", u.version());
            });
            s.step("get_updated", get);
            s.step("delete", out -> {
                var d = es.delete(x -> x.index(index).id(ClientScenario.UPDATE_ID).refresh(Refresh.True));
                out.put("result", d.result().jsonValue());
                out.put("version", d.version());
            });
            s.step("count", out -> out.put("count", es.count(c -> c.index(index)).count()));
        }
    }

}
