"""deploy/ingress-nginx/ingress.yaml rendered into nginx configuration as ingress-nginx's template renders it.

The controller turns `auth-url` into an internal location that proxies an auth subrequest
(`nginx.tmpl`, the external-auth location), and `auth-response-headers` into an
`auth_request_set` / `proxy_set_header` pair per header (`buildAuthResponseHeaders`). This
module does the same for the shipped Ingress, with the service addresses moved to loopback,
so that Debian's nginx can stand in for the controller in the proxy tests.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml
from harness import REPO_ROOT

SHIPPED_INGRESS = REPO_ROOT / "deploy/ingress-nginx/ingress.yaml"
ANNOTATION = "nginx.ingress.kubernetes.io/"


def shipped_ingress() -> dict:
    (ingress,) = [document for document in yaml.safe_load_all(SHIPPED_INGRESS.read_text()) if document]
    assert ingress["kind"] == "Ingress"
    return ingress


def render_ingress_nginx_config(ingress: dict, *, listen: int, portcullis: int, upstream: int, workdir: Path) -> str:
    """nginx.conf for the Ingress's one rule, the auth service at `portcullis` and the backend at `upstream`."""
    annotations = ingress["metadata"]["annotations"]
    auth_url = urlsplit(annotations[ANNOTATION + "auth-url"])
    target = f"http://127.0.0.1:{portcullis}{auth_url.path}" + (f"?{auth_url.query}" if auth_url.query else "")
    response_headers = [name.strip() for name in annotations[ANNOTATION + "auth-response-headers"].split(",")]
    copied = "".join(
        f"            auth_request_set $authHeader{index} $upstream_http_{name.lower().replace('-', '_')};\n"
        f"            proxy_set_header '{name}' $authHeader{index};\n"
        for index, name in enumerate(response_headers)
    )
    (rule,) = ingress["spec"]["rules"]
    scratch = "".join(f"    {kind}_temp_path {workdir / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes 1;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
{scratch}    access_log off;
    server {{
        listen 127.0.0.1:{listen};
        server_name {rule["host"]};

        location = /_external-auth-Lw-Prefix {{
            internal;
            proxy_pass_request_body     off;
            proxy_set_header            Content-Length          "";
            proxy_set_header            X-Forwarded-Proto       "";
            proxy_set_header            X-Request-ID            $request_id;
            proxy_set_header            Host                    {auth_url.hostname};
            proxy_set_header            X-Original-URL          $scheme://$http_host$request_uri;
            proxy_set_header            X-Original-Method       $request_method;
            proxy_set_header            X-Sent-From             "nginx-ingress-controller";
            proxy_set_header            X-Real-IP               $remote_addr;
            proxy_set_header            X-Forwarded-For         $remote_addr;
            proxy_set_header            X-Auth-Request-Redirect $request_uri;
            proxy_buffering             off;
            proxy_pass_request_headers  on;
            set $target {target};
            proxy_pass $target;
        }}

        location / {{
            auth_request        /_external-auth-Lw-Prefix;
            auth_request_set    $auth_cookie $upstream_http_set_cookie;
            add_header          Set-Cookie $auth_cookie;
{copied}            proxy_set_header    Host $http_host;
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"""
