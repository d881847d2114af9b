"""The nginx peer: Debian's nginx, one worker, sendfile on, serving the same file."""

from __future__ import annotations

import shutil
from pathlib import Path

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    # aiohttp never closes a keep-alive connection after N requests; neither does this.
    keepalive_requests 100000000;
    default_type application/octet-stream;
    types {{ video/mp4 mp4; }}
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /file {{
            alias {file};
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def write_config(prefix: Path, file: Path, port: int) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(CONFIG.format(prefix=prefix, port=port, root=file.parent, file=file))
    return conf


def argv(binary: str, prefix: Path, conf: Path) -> list[str]:
    # -e: the error log from the start, before the config is read (not /var/log/nginx).
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
