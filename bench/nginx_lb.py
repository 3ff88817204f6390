"""nginx as a round-robin balancer over proxy replicas: the config the tests (tests/fixtures/nginx_lb.py)
and the benchmarks (bench/common.py's start_nginx_lb) both run.

`proxy_next_upstream error timeout non_idempotent`: searches are POSTs, which nginx by default never
sends to a second server once the first has them; with `non_idempotent` a search whose replica died
is sent to the next one, as a load balancer in front of replicas does. Bodies and answers stay in
memory, so workers running as nobody never touch the work directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {access_log};
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size 10m;
    client_body_buffer_size 1m;      # bodies and answers stay in memory: the workers never touch tmp/

    upstream replicas {{
{servers}
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout non_idempotent;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def render_conf(prefix: Path, port: int, backends: Sequence[str], *, access_log: bool = True) -> str:
    """nginx.conf for `backends` (host:port each), round robin (nginx's default balancing); the
    access log off for benchmarks, where it would cost the balancer CPU the replicas share."""
    servers = "\n".join(f"        server {b} max_fails=1 fail_timeout=30s;" for b in backends)
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    log = f"{prefix}/logs/access.log combined" if access_log else "off"
    return CONF.format(user=user, prefix=prefix, port=port, servers=servers, access_log=log)
