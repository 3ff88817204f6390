"""`rerank-proxy` command line: one sub-command per job, each defined in the module that does it.

Sub-command modules are imported only when chosen, so `rerank-proxy engine status` does not load
the model and `rerank-proxy serve` does not load the engine runner.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rerank_proxy import __version__

# name -> (module, one-line help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("rerank_proxy.serve", "run the proxy (HTTP server)"),
    "engine": ("rerank_proxy.local_engines.cli", "start/stop/inspect local Elasticsearch/OpenSearch engines"),
    "serve-reranker": ("rerank_proxy.local.rerank_server",
                       "run a Cohere v2-compatible rerank server on the local model"),
    "warm": ("rerank_proxy.warm", "embed every document of an index into the local vector store"),
    "demo": ("rerank_proxy.demo", "local engine + proxy + sample data: lexical vs reranked side by side"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rerank-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
