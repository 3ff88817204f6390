package rerankproxy;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.List;
import org.opensearch.client.json.jackson.JacksonJsonpMapper;
import org.opensearch.client.opensearch.OpenSearchClient;
import org.opensearch.client.opensearch._types.FieldValue;
import org.opensearch.client.opensearch._types.Refresh;
import org.opensearch.client.opensearch._types.query_dsl.Query;
import org.opensearch.client.opensearch.core.BulkRequest;
import org.opensearch.client.opensearch.core.GetResponse;
import org.opensearch.client.opensearch.core.MsearchResponse;
import org.opensearch.client.opensearch.core.SearchResponse;
import org.opensearch.client.opensearch.core.msearch.MultiSearchItem;
import org.opensearch.client.opensearch.core.msearch.MultiSearchResponseItem;
import org.opensearch.client.opensearch.core.search.Hit;
import org.opensearch.client.opensearch.core.search.HitsMetadata;
import org.opensearch.client.transport.httpclient5.ApacheHttpClient5Transport;
import org.opensearch.client.transport.httpclient5.ApacheHttpClient5TransportBuilder;

/** The scenario with org.opensearch.client:opensearch-java over its Apache HttpClient 5 transport. */
final class OpenSearchScenario {
    private OpenSearchScenario() {}

    static String version() {
        String v = OpenSearchClient.class.getPackage().getImplementationVersion();
        return v == null ? "unknown" : v;
    }

    static Query match() {
        return Query.of(q -> q.match(m -> m.field("body").query(FieldValue.of(ClientScenario.QUERY))));
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
            // A Float in this client: print its shortest decimal form, not the widened double.
            out.put("max_score", Double.parseDouble(hits.maxScore().toString()));
        }
    }

    static void run(ClientScenario s, String url, String index, List<String> ids, List<ObjectNode> docs)
            throws Exception {
        ApacheHttpClient5Transport transport = ApacheHttpClient5TransportBuilder.builder(ClientScenario.host(url))
                .setMapper(new JacksonJsonpMapper())
                .setHttpClientConfigCallback(ClientScenario::intercept)
                .build();
        try (transport) {
            OpenSearchClient os = new OpenSearchClient(transport);
            s.step("create", out -> out.put("acknowledged", os.indices().create(c -> c.index(index)
                    .settings(st -> st.numberOfShards(1).numberOfReplicas(0))
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
                var response = os.bulk(bulk.build());
                out.put("errors", response.errors());
                out.put("items", response.items().size());
            });
            s.step("refresh", out -> os.indices().refresh(r -> r.index(index)));
            s.step("search", out -> {
                SearchResponse<ObjectNode> r = os.search(x -> x.index(index).query(match()).size(5), ObjectNode.class);
                hits(out, r.hits());
            });
            s.step("search_window", out -> {
                SearchResponse<ObjectNode> r = os.search(x -> x.index(index).query(match()).size(20), ObjectNode.class);
                hits(out, r.hits());
            });
            s.step("msearch", out -> {
                MsearchResponse<ObjectNode> r = os.msearch(m -> m
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
                GetResponse<ObjectNode> g = os.get(x -> x.index(index).id(ClientScenario.UPDATE_ID), ObjectNode.class);
                out.put("found", g.found());
                out.set("source", g.source());
                out.put("version", g.version());
            };
            s.step("get", get);
            s.step("update", out -> {
                var u = os.update(x -> x.index(index).id(ClientScenario.UPDATE_ID).doc(ClientScenario.partialDoc()),
                        ObjectNode.class);
                out.put("result", u.result().jsonValue());
                out.put("version", u.version());
            });
            s.step("get_updated", get);
            s.step("delete", out -> {
                var d = os.delete(x -> x.index(index).id(ClientScenario.UPDATE_ID).refresh(Refresh.True));
                out.put("result", d.result().jsonValue());
                out.put("version", d.version());
            });
            s.step("count", out -> out.put("count", os.count(c -> c.index(index)).count()));
        }
    }
}
