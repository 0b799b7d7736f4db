"""A pure-Python renderer for the small subset of kustomize that infra/k8s/ uses.

Why: the tests render the overlays and validate what they produce (tests/test_k8s.py),
on machines that have neither kustomize nor kubectl, and reviewers read the renders
checked in under infra/k8s/rendered/. The subset is standard kustomize, so `kubectl
kustomize infra/k8s/overlays/production` gives the same objects:

- `resources`: files (one or more YAML documents) and directories holding a
  kustomization (rendered first, as kustomize does);
- `namespace`: set on every resource (all of ours are namespaced);
- `labels`: `pairs` added to every resource's metadata.labels (neither selectors nor
  templates: `includeSelectors`/`includeTemplates` only as false);
- `images`: `name` with `newName`, `newTag` and/or `digest`, on the containers and
  init containers of pod templates;
- `patches`: strategic-merge patch files (`path` only), each naming its target by
  apiVersion, kind and name; lists merge by key only where Kubernetes' schema says so
  (containers by name, volumeMounts by mountPath, ...).

Anything else (another kustomization key, a JSON 6902 patch, a `$patch` directive, a
list merge whose semantics are not listed here) raises `KustomizeError`: a renderer
that ignored it would silently print something other than kustomize does.
Transformers run in kustomize's order (patches, namespace, labels, images) and the
output is in its legacy order (kind priority, then group/version/kind, then name).

Usage: `python -m devstack.kustomize infra/k8s/overlays/production` prints the
multi-document YAML.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILE = "kustomization.yaml"
API_VERSION = "kustomize.config.k8s.io/v1beta1"
SUPPORTED_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
)
SUPPORTED_LABEL_KEYS = frozenset({"pairs", "includeSelectors", "includeTemplates"})
SUPPORTED_IMAGE_KEYS = frozenset({"name", "newName", "newTag", "digest"})
SUPPORTED_PATCH_KEYS = frozenset({"path"})

# Kinds without a namespace: setting one on them is what kustomize would not do, and
# none of ours is one, so meeting one is an error rather than a case to get right.
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "ClusterTriggerAuthentication",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
)

# Strategic merge: the lists Kubernetes merges element by element (their
# x-kubernetes-patch-merge-key), and those it replaces whole (atomic lists). A list
# that is in neither, present on both sides, is refused.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
REPLACED_LISTS = frozenset({"tolerations", "command", "args", "envFrom"})
# Built-in kinds whose lists follow the tables above; a custom resource's lists have
# no merge keys kustomize knows for sure, so a patch may not merge into one.
STRATEGIC_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"})

# kustomize's legacy output order (kyaml/resid/gvk.go); other kinds sit in between.
ORDER_FIRST = (
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
)
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


# --------------------------------------------------------------------------- loading


def load_kustomization(directory: Path) -> dict[str, Any]:
    """The kustomization of `directory`, refused if it has a key outside the subset."""
    path = directory / KUSTOMIZATION_FILE
    if not path.is_file():
        raise KustomizeError(f"{directory}: no {KUSTOMIZATION_FILE}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise KustomizeError(f"{path}: not a mapping")
    unsupported = sorted(set(data) - SUPPORTED_KEYS)
    if unsupported:
        raise KustomizeError(
            f"{path}: unsupported kustomization key(s) {', '.join(unsupported)}; "
            f"devstack/kustomize.py implements only {', '.join(sorted(SUPPORTED_KEYS))}"
        )
    if data.get("apiVersion", API_VERSION) != API_VERSION:
        raise KustomizeError(f"{path}: apiVersion must be {API_VERSION}")
    if data.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")
    return data


def load_documents(path: Path) -> list[Resource]:
    """The non-empty YAML documents of a file, each a Kubernetes object."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for document in documents:
        if not (isinstance(document, dict) and document.get("kind") and _name(document)):
            raise KustomizeError(f"{path}: every document needs a kind and metadata.name")
    return documents


def _entries(kustomization: dict[str, Any], key: str) -> list[Any]:
    value = kustomization.get(key) or []
    if not isinstance(value, list):
        raise KustomizeError(f"kustomization field {key} must be a list")
    return value


def _load_resources(directory: Path, entries: Iterable[Any]) -> list[Resource]:
    resources: list[Resource] = []
    for entry in entries:
        if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
            raise KustomizeError(f"{directory}: resource {entry!r}: only local paths")
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += build(path)
        elif path.is_file():
            resources += load_documents(path)
        else:
            raise KustomizeError(f"{directory}: resource {entry} does not exist")
    _refuse_duplicates(resources, directory)
    return resources


def _refuse_duplicates(resources: list[Resource], directory: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for resource in resources:
        key = _identity(resource)
        if key in seen:
            raise KustomizeError(f"{directory}: {'/'.join(key)} appears twice")
        seen.add(key)


# --------------------------------------------------------------------------- identity


def _name(resource: Resource) -> str:
    metadata = resource.get("metadata") or {}
    return str(metadata.get("name", ""))


def _identity(resource: Resource) -> tuple[str, str, str, str]:
    namespace = str((resource.get("metadata") or {}).get("namespace", ""))
    return (str(resource.get("apiVersion", "")), resource["kind"], namespace, _name(resource))


def _describe(resource: Resource) -> str:
    return f"{resource['kind']}/{_name(resource)}"


# --------------------------------------------------------------------------- patches


def strategic_merge(target: Any, patch: Any, where: str = "", kind: str = "") -> Any:
    """`patch` merged into `target` (a new value) as a strategic-merge patch does: maps
    merge key by key, a null deletes its key, keyed lists merge by their key (new
    elements appended), atomic lists and scalars are replaced."""
    if isinstance(patch, dict):
        if any(str(k).startswith("$") for k in patch):
            raise KustomizeError(f"{where}: strategic-merge directives are not supported")
        if not isinstance(target, dict):
            return _without_nulls(patch)
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge_field(key, merged[key], value, f"{where}.{key}", kind)
            else:
                merged[key] = _without_nulls(value)
        return merged
    return copy.deepcopy(patch)


def _merge_field(key: str, target: Any, patch: Any, where: str, kind: str) -> Any:
    if isinstance(patch, list) and isinstance(target, list) and target:
        if key in MERGE_KEYS and kind in STRATEGIC_KINDS:
            return _merge_keyed_list(target, patch, MERGE_KEYS[key], where, kind)
        if key in REPLACED_LISTS and kind in STRATEGIC_KINDS:
            return copy.deepcopy(patch)
        raise KustomizeError(
            f"{where}: a patch of a {kind} list whose merge semantics devstack/kustomize.py "
            "does not know; patch a whole parent object or extend MERGE_KEYS/REPLACED_LISTS"
        )
    return strategic_merge(target, patch, where, kind)


def _merge_keyed_list(target: list[Any], patch: list[Any], key: str, where: str, kind: str) -> Any:
    merged = copy.deepcopy(target)
    positions = {item.get(key): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"{where}: every element of the patch needs its {key}")
        at = positions.get(item[key])
        if at is None:
            positions[item[key]] = len(merged)
            merged.append(_without_nulls(item))
        else:
            merged[at] = strategic_merge(merged[at], item, f"{where}[{item[key]}]", kind)
    return merged


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def apply_patches(resources: list[Resource], directory: Path, entries: Iterable[Any]) -> None:
    """Apply each strategic-merge patch file to the one resource it names."""
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - SUPPORTED_PATCH_KEYS or "path" not in entry:
            raise KustomizeError(
                f"{directory}: patches: only entries with a `path` to a strategic-merge file"
            )
        path = directory / entry["path"]
        if not path.is_file():
            raise KustomizeError(f"{directory}: patch {entry['path']} does not exist")
        raw = list(yaml.safe_load_all(path.read_text()))
        if any(isinstance(doc, list) for doc in raw):
            raise KustomizeError(f"{path}: JSON 6902 patches are not supported")
        for patch in load_documents(path):
            _apply_patch(resources, patch, path)


def _apply_patch(resources: list[Resource], patch: Resource, path: Path) -> None:
    matches = [i for i, resource in enumerate(resources) if _patch_matches(resource, patch)]
    if len(matches) != 1:
        raise KustomizeError(f"{path}: {_describe(patch)} matches {len(matches)} resources")
    at = matches[0]
    where = f"{path.name}:{_describe(patch)}"
    resources[at] = strategic_merge(resources[at], patch, where, patch["kind"])


def _patch_matches(resource: Resource, patch: Resource) -> bool:
    namespace = (patch.get("metadata") or {}).get("namespace")
    return (
        resource.get("apiVersion") == patch.get("apiVersion")
        and resource["kind"] == patch["kind"]
        and _name(resource) == _name(patch)
        and (namespace is None or (resource.get("metadata") or {}).get("namespace") == namespace)
    )


# --------------------------------------------------------------------------- transformers


def set_namespace(resources: list[Resource], namespace: str) -> None:
    for resource in resources:
        if resource["kind"] in CLUSTER_SCOPED_KINDS:
            raise KustomizeError(f"{_describe(resource)} is cluster-scoped: not supported")
        resource.setdefault("metadata", {})["namespace"] = namespace


def add_labels(resources: list[Resource], entries: Iterable[Any]) -> None:
    """`labels` entries: their pairs on every resource's metadata.labels."""
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - SUPPORTED_LABEL_KEYS:
            raise KustomizeError(f"labels: only {', '.join(sorted(SUPPORTED_LABEL_KEYS))}")
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError("labels: includeSelectors/includeTemplates are not supported")
        pairs = entry.get("pairs") or {}
        if not all(isinstance(v, str) for v in pairs.values()):
            raise KustomizeError("labels: values must be strings")
        for resource in resources:
            labels = resource.setdefault("metadata", {}).setdefault("labels", {})
            labels.update(pairs)


def split_image(reference: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference; tag and digest may be empty."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def set_images(resources: list[Resource], entries: Iterable[Any]) -> None:
    """`images` entries on the containers and init containers of pod templates."""
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - SUPPORTED_IMAGE_KEYS or "name" not in entry:
            raise KustomizeError(f"images: only {', '.join(sorted(SUPPORTED_IMAGE_KEYS))}")
        if not all(isinstance(v, str) for v in entry.values()):
            # A tag such as 1.10 read as a number would lose its last digit: quote it.
            raise KustomizeError(f"images: {entry['name']}: every value must be a string")
        for container in _containers(resources):
            container["image"] = _new_image(str(container.get("image", "")), entry)


def _containers(resources: list[Resource]) -> Iterator[dict[str, Any]]:
    for resource in resources:
        if resource["kind"] == "CustomResourceDefinition":
            continue
        spec = resource.get("spec") or {}
        for pod_spec in (spec, (spec.get("template") or {}).get("spec") or {}):
            for field in ("containers", "initContainers"):
                yield from pod_spec.get(field) or []


def _new_image(reference: str, entry: dict[str, Any]) -> str:
    name, tag, digest = split_image(reference)
    if name != entry["name"]:
        return reference
    name = str(entry.get("newName") or name)
    if entry.get("newTag") or entry.get("digest"):
        # A new tag or digest replaces both old ones (kustomize's imagetag filter).
        tag = str(entry.get("newTag") or "")
        digest = str(entry.get("digest") or "")
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# --------------------------------------------------------------------------- build


def build(directory: Path) -> list[Resource]:
    """The resources of the kustomization in `directory`, transformed, in output order."""
    directory = directory.resolve()
    kustomization = load_kustomization(directory)
    resources = _load_resources(directory, _entries(kustomization, "resources"))
    resources = copy.deepcopy(resources)
    apply_patches(resources, directory, _entries(kustomization, "patches"))
    if kustomization.get("namespace"):
        set_namespace(resources, str(kustomization["namespace"]))
    add_labels(resources, _entries(kustomization, "labels"))
    set_images(resources, _entries(kustomization, "images"))
    return sorted(resources, key=_legacy_order)


def _legacy_order(resource: Resource) -> tuple[int, str, str, str]:
    kind = resource["kind"]
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind) - len(ORDER_FIRST)
    elif kind in ORDER_LAST:
        rank = 1 + ORDER_LAST.index(kind)
    else:
        rank = 0
    group, _, version = str(resource.get("apiVersion", "")).rpartition("/")
    gvk = f"{group or '~G'}_{version or '~V'}_{kind}"
    namespace = (resource.get("metadata") or {}).get("namespace") or "~X"
    return rank, gvk, namespace, _name(resource)


# --------------------------------------------------------------------------- output


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (shell scripts, SQL) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(resources: list[Resource]) -> str:
    """The resources as one multi-document YAML stream."""
    return yaml.dump_all(
        resources,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        explicit_start=True,
        allow_unicode=True,
        width=100,
    )


def render(directory: Path) -> str:
    return to_yaml(build(directory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.kustomize",
        description="Render a kustomization of the supported subset (see the module doc).",
    )
    parser.add_argument("directory", type=Path, help="a folder with a kustomization.yaml")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = render(args.directory)
    except KustomizeError as exc:
        print(f"kustomize: {exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
