package rerankproxy.rootendpoint;

import java.util.Collection;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;

import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.index.IndexVersion;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

/**
 * Serves {@code GET /} and {@code HEAD /} on the Elasticsearch integ-test build, which lacks the
 * module that normally does: clients call this "info" endpoint before anything else.
 *
 * <p>Every value comes from the running node. The {@code getRestHandlers} override lives in a
 * subclass because its signature differs between Elasticsearch lines (see the sibling files); the
 * Python side compiles this file with the one subclass that matches the distribution's jars.
 */
public abstract class RootEndpointPlugin extends Plugin implements ActionPlugin {

    // Set by createComponents, which the node calls before it serves any request.
    private final AtomicReference<ClusterService> clusterService = new AtomicReference<>();

    @Override
    public Collection<?> createComponents(PluginServices services) {
        clusterService.set(services.clusterService());
        return List.of();
    }

    protected final Collection<RestHandler> rootHandlers() {
        return List.of(new RootAction(clusterService));
    }

    static final class RootAction extends BaseRestHandler {
        private final AtomicReference<ClusterService> clusterService;

        RootAction(AtomicReference<ClusterService> clusterService) {
            this.clusterService = clusterService;
        }

        @Override
        public String getName() {
            return "rerank_proxy_root_action";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            ClusterService cluster = clusterService.get();
            if (cluster == null) {
                throw new IllegalStateException("the node has not finished starting");
            }
            // The HTTP layer drops the body of a HEAD answer but keeps its Content-Length.
            return channel -> channel.sendResponse(new RestResponse(RestStatus.OK, describe(channel.newBuilder(), cluster)));
        }

        private static XContentBuilder describe(XContentBuilder builder, ClusterService cluster) throws java.io.IOException {
            Build build = Build.current();
            builder.startObject();
            builder.field("name", cluster.getNodeName());
            builder.field("cluster_name", cluster.getClusterName().value());
            builder.field("cluster_uuid", cluster.state().metadata().clusterUUID());
            builder.startObject("version");
            builder.field("number", build.qualifiedVersion());
            builder.field("build_flavor", build.flavor());
            builder.field("build_type", build.type().displayName());
            builder.field("build_hash", build.hash());
            builder.field("build_date", build.date());
            builder.field("build_snapshot", build.isSnapshot());
            builder.field("lucene_version", IndexVersion.current().luceneVersion().toString());
            builder.field("minimum_wire_compatibility_version", build.minWireCompatVersion());
            builder.field("minimum_index_compatibility_version", build.minIndexCompatVersion());
            builder.endObject();
            builder.field("tagline", "You Know, for Search");
            return builder.endObject();
        }
    }
}
