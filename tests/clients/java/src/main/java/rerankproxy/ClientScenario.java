package rerankproxy;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import java.net.URI;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.hc.client5.http.impl.async.HttpAsyncClientBuilder;
import org.apache.hc.core5.http.Header;
import org.apache.hc.core5.http.HttpHost;

/**
 * One scenario (create, bulk, refresh, search, msearch, get, update, get, delete, count) run with the
 * official Java client of an engine kind, printing one JSON object on stdout.
 *
 * <p>Usage: {@code java -jar client-scenario.jar --kind elasticsearch|opensearch --url URL --index NAME
 * --corpus FILE}. The corpus file is a JSON list of {"_id": ..., "_source": {...}}.
 *
 * <p>The typed clients do not expose response headers or statuses, so both transports get an Apache
 * HttpClient 5 response interceptor that records the status and the X-Rerank header of the last
 * response; the scenario is sequential, so "the last response" is the one of the current step.
 */
public final class ClientScenario {
    static final ObjectMapper JSON = new ObjectMapper();
    static final String QUERY = "jet engine noise";
    static final String UPDATE_ID = "3";

    record Seen(int status, String rerank) {}

    static final AtomicReference<Seen> LAST = new AtomicReference<>();

    interface Step {
        void run(ObjectNode out) throws Exception;
    }

    private final ObjectNode steps = JSON.createObjectNode();

    void step(String name, Step body) {
        ObjectNode out = steps.putObject(name);
        LAST.set(null);
        boolean ok;
        try {
            body.run(out);
            ok = true;
        } catch (Exception e) {
            ok = false;
            out.put("error", e.getClass().getName() + ": " + e.getMessage());
        }
        Seen seen = LAST.get();
        out.put("ok", ok && seen != null && seen.status() < 300);
        if (seen == null) {
            out.putNull("status");
            out.putNull("rerank");
        } else {
            out.put("status", seen.status());
            out.put("rerank", seen.rerank());
        }
    }

    static HttpAsyncClientBuilder intercept(HttpAsyncClientBuilder builder) {
        return builder.addResponseInterceptorLast((response, entity, context) -> {
            Header rerank = response.getFirstHeader("X-Rerank");
            LAST.set(new Seen(response.getCode(), rerank == null ? null : rerank.getValue()));
        });
    }

    static Map<String, String> parseArgs(String[] args) {
        Map<String, String> out = new LinkedHashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + args[i]);
            }
            out.put(args[i].substring(2), args[i + 1]);
        }
        for (String required : List.of("kind", "url", "index", "corpus")) {
            if (!out.containsKey(required)) {
                throw new IllegalArgumentException("missing --" + required);
            }
        }
        return out;
    }

    static ObjectNode partialDoc() {
        ObjectNode doc = JSON.createObjectNode();
        doc.put("title", "Jet mixing, revised");
        doc.put("year", 2000);
        return doc;
    }

    static void putHit(ArrayNode ids, ArrayNode scores, ObjectNode sources, String id, Double score, JsonNode source) {
        ids.add(id);
        if (score == null) {
            scores.addNull();
        } else {
            scores.add(score);
        }
        sources.set(id, source);
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parseArgs(argv);
        List<String> ids = new ArrayList<>();
        List<ObjectNode> docs = new ArrayList<>();
        for (JsonNode item : JSON.readTree(new File(args.get("corpus")))) {
            ids.add(item.get("_id").asText());
            docs.add((ObjectNode) item.get("_source"));
        }
        ClientScenario scenario = new ClientScenario();
        ObjectNode result = JSON.createObjectNode();
        String kind = args.get("kind");
        if (kind.equals("elasticsearch")) {
            result.put("client", "elasticsearch-java " + ElasticScenario.version());
            ElasticScenario.run(scenario, args.get("url"), args.get("index"), ids, docs);
        } else if (kind.equals("opensearch")) {
            result.put("client", "opensearch-java " + OpenSearchScenario.version());
            OpenSearchScenario.run(scenario, args.get("url"), args.get("index"), ids, docs);
        } else {
            throw new IllegalArgumentException("--kind must be elasticsearch or opensearch");
        }
        result.put("kind", kind);
        result.put("headers_exposed", true);
        result.put("headers_via", "http client response interceptor");
        result.set("steps", scenario.steps);
        System.out.println(JSON.writeValueAsString(result));
    }

    static URI uri(String url) {
        return URI.create(url);
    }

    static HttpHost host(String url) throws Exception {
        return HttpHost.create(url);
    }
}
