#!/usr/bin/env python3
"""Render deploy/k8s/ without kubectl: the subset of kustomize that its kustomization.yaml uses.

    python3 deploy/k8s/render.py [deploy/k8s] > portcullis.yaml

`make deploy-render` runs `kubectl kustomize --load-restrictor LoadRestrictionsNone deploy/k8s`
when kubectl is installed and this script otherwise. It gives the same documents as kustomize
(tests/proxies/test_deploy_manifests.py compares them): `namespace`, `resources`,
`configMapGenerator` (`files`, with kustomize's content-hash name suffix, and the
references to the generated names rewritten in workloads) and `images`. Any other
kustomization field is refused rather than silently ignored. Needs PyYAML.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}

# kustomize's default ("legacy") output order: these kinds first, in this order, then the
# others by kind; inside one kind, by name.
ORDER_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
CLUSTER_SCOPED = {"Namespace", "StorageClass", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "PersistentVolume"}


def kustomize_hash(config_map: dict) -> str:
    """kustomize's name suffix of a generated ConfigMap (api/hasher: sha256 of its JSON, 10 runes re-lettered).

    kustomize looks the name up as one field called `metadata/name`, finds none, and so hashes
    an empty name: the suffix depends on the data alone (checked against kubectl kustomize).
    """
    encoded = {"kind": "ConfigMap", "name": "", "data": config_map.get("data", {})}
    # Go's encoding/json: sorted keys, no spaces, HTML-safe escapes, UTF-8 kept.
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _generated_config_map(root: Path, generator: dict) -> dict:
    unsupported = set(generator) - {"name", "files"}
    if unsupported:
        raise SystemExit(f"configMapGenerator {generator.get('name')}: unsupported fields {sorted(unsupported)}")
    data = {}
    for entry in generator["files"]:
        key, _, source = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = root / source
        data[key or path.name] = path.read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def _pod_specs(document: dict):
    spec = document.get("spec", {})
    if document["kind"] == "Pod":
        yield spec
    elif document["kind"] == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif "template" in spec:
        yield spec["template"].get("spec", {})


def _containers(pod_spec: dict):
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def _rename_config_maps(document: dict, names: dict[str, str]) -> None:
    for pod_spec in _pod_specs(document):
        for volume in pod_spec.get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = names.get(volume["configMap"]["name"], volume["configMap"]["name"])
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    source["configMap"]["name"] = names.get(source["configMap"]["name"], source["configMap"]["name"])
        for container in _containers(pod_spec):
            for env_from in container.get("envFrom", []):
                if "configMapRef" in env_from:
                    env_from["configMapRef"]["name"] = names.get(env_from["configMapRef"]["name"], env_from["configMapRef"]["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    ref["name"] = names.get(ref["name"], ref["name"])


def _split_image(reference: str) -> tuple[str, str]:
    """`name[:tag][@digest]` -> (name, tag); a registry's `host:port/` is part of the name."""
    reference = reference.split("@", 1)[0]
    colon = reference.rfind(":")
    return (reference[:colon], reference[colon + 1 :]) if colon > reference.rfind("/") else (reference, "")


def _set_images(document: dict, images: list[dict]) -> None:
    for pod_spec in _pod_specs(document):
        for container in _containers(pod_spec):
            name, tag = _split_image(container["image"])
            for image in (image for image in images if image["name"] == name):
                new_name, new_tag = image.get("newName", name), image.get("newTag", tag)
                if "digest" in image:
                    container["image"] = f"{new_name}@{image['digest']}"
                else:
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _order(document: dict) -> tuple:
    kind = document["kind"]
    if kind in ORDER_FIRST:
        group = (0, ORDER_FIRST.index(kind), "")
    elif kind in ORDER_LAST:
        group = (2, ORDER_LAST.index(kind), "")
    else:
        group = (1, 0, kind)
    return (*group, document["metadata"].get("name", ""))


def render(root: Path) -> list[dict]:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise SystemExit(f"{root}/kustomization.yaml: this fallback does not implement {sorted(unsupported)}; use kubectl kustomize")
    documents = [doc for resource in kustomization.get("resources", []) for doc in yaml.safe_load_all((root / resource).read_text()) if doc]
    renamed = {}
    for generator in kustomization.get("configMapGenerator", []):
        config_map = _generated_config_map(root, generator)
        if "namespace" in kustomization:
            config_map["metadata"]["namespace"] = kustomization["namespace"]
        suffixed = f"{generator['name']}-{kustomize_hash(config_map)}"
        renamed[generator["name"]] = suffixed
        config_map["metadata"]["name"] = suffixed
        documents.append(config_map)
    for document in documents:
        if "namespace" in kustomization and document["kind"] not in CLUSTER_SCOPED:
            document["metadata"]["namespace"] = kustomization["namespace"]
        _rename_config_maps(document, renamed)
        _set_images(document, kustomization.get("images", []))
    return sorted(documents, key=_order)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, as kustomize prints ConfigMap data."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value and all(line == line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent)
    sys.stdout.write(yaml.dump_all(render(root), Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=1 << 16))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
