"""The Kubernetes manifests (infra/k8s/), checked offline.

Both overlays are rendered with devstack/kustomize.py (the subset of kustomize they use)
and every object is validated: built-in kinds against Kubernetes' own schemas
(kubernetes-validate, strict: an unknown field fails, where the API server would drop
it silently), KEDA's against the CRDs kept in infra/k8s/crds/. Then the properties the
deployment depends on, each an assertion that a plausible edit would break: no secret
in the repository, settings that exist, probes on the paths the processes serve,
grace periods that outlast the work, a scaler that counts the right rows, and network
policies that let only the API and the CPU worker reach the outside.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common.models import JobStatus
from common.settings import KNOWN_DEFAULT_SECRETS, Settings
from devstack import kustomize

Resource = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "production")
# The oldest Kubernetes the manifests must be valid for (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.33.0"

CONFIG = "ssd-img2img-config"
WORKER_ENV = "ssd-img2img-worker-env"
SECRET = "ssd-img2img-secrets"
API = "ssd-img2img-api"
GPU_WORKER = "ssd-img2img-gpu-worker"
BACKGROUND = "ssd-img2img-background"
MIGRATE = "ssd-img2img-migrate"
# What ssd-img2img-worker-env may hold: environment of the worker's libraries.
LIBRARY_ENV = frozenset({"HF_HUB_OFFLINE", "HOME", "TORCHINDUCTOR_CACHE_DIR"})
# The longest GPU job, as infra/k8s/base/gpu-worker.yaml states it.
WORKER_JOB_BOUND_SECONDS = 600
METRICS_PORT = 9100
# Components that call the outside on a client's behalf: image URLs, webhooks.
INTERNET_COMPONENTS = frozenset({"api", "background"})
BACKING_PORTS = frozenset({53, 5432, 6379, 8333})
SECRET_KEY_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CONNECTION|DATABASE_URL")
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


# --------------------------------------------------------------------------- helpers


@cache
def rendered(overlay: str) -> list[Resource]:
    return kustomize.build(K8S / "overlays" / overlay)


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] in ("Deployment", "Job")]


def pod_spec(workload: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Resource) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(resources: list[Resource], deployment: str, name: str) -> dict[str, Any]:
    spec = pod_spec(one(resources, "Deployment", deployment))
    found = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def config(resources: list[Resource]) -> dict[str, str]:
    data: dict[str, str] = one(resources, "ConfigMap", CONFIG)["data"]
    return data


def probe_target(cont: dict[str, Any], probe: str) -> tuple[str, int]:
    """(path, port number) of an HTTP probe, its named port resolved."""
    get = cont[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in cont["ports"] if p["name"] == port)
    return get["path"], port


def env_source(ref: dict[str, Any]) -> tuple[str, str]:
    """("configMap" or "secret", name) of an envFrom entry."""
    if "configMapRef" in ref:
        return "configMap", ref["configMapRef"]["name"]
    return "secret", ref["secretRef"]["name"]


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def policies(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] == "NetworkPolicy"]


def components_selected(resources: list[Resource], policy: Resource) -> set[str]:
    return {
        pod_labels(w)["app.kubernetes.io/component"]
        for w in workloads(resources)
        if selects(policy["spec"]["podSelector"], pod_labels(w))
    }


def closed(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused: the API server prunes them
    silently, so a misspelt field would otherwise pass and do nothing."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {k: closed(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@cache
def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    group, _, version = api_version.partition("/")
    for path in (K8S / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for entry in crd["spec"]["versions"]:
                if entry["name"] == version and entry["served"]:
                    schema: dict[str, Any] = closed(entry["schema"]["openAPIV3Schema"])
                    return schema
    raise AssertionError(f"no CRD in infra/k8s/crds serves {kind} {api_version}")


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checked_in_render_is_current(overlay: str) -> None:
    path = K8S / "rendered" / f"{overlay}.yaml"
    expected = kustomize.to_yaml(rendered(overlay))
    assert path.is_file() and path.read_text() == expected, (
        f"infra/k8s/rendered/{overlay}.yaml is not the render of infra/k8s/overlays/{overlay}: "
        f"regenerate it with `.venv/bin/python -m devstack.kustomize "
        f"infra/k8s/overlays/{overlay} -o infra/k8s/rendered/{overlay}.yaml`"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_resources_pass_the_kubernetes_schema(overlay: str) -> None:
    checked: set[str] = set()
    errors = []
    for resource in rendered(overlay):
        if resource["apiVersion"].startswith("keda.sh/"):
            continue
        checked.add(resource["kind"])
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            errors.append(f"{name} at {where}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert {"ConfigMap", "Deployment", "Job", "Service", "HorizontalPodAutoscaler"} <= checked
    assert {"PodDisruptionBudget", "NetworkPolicy"} <= checked


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_resources_pass_their_crd_schema(overlay: str) -> None:
    keda = [r for r in rendered(overlay) if r["apiVersion"].startswith("keda.sh/")]
    assert {r["kind"] for r in keda} == {"ScaledObject", "TriggerAuthentication"}
    for resource in keda:
        schema = crd_schema(resource["kind"], resource["apiVersion"])
        jsonschema.Draft7Validator(schema).validate(resource)


def test_crd_schema_check_refuses_an_unknown_field() -> None:
    scaled = json.loads(json.dumps(one(rendered("production"), "ScaledObject", GPU_WORKER)))
    scaled["spec"]["maxReplicas"] = 3  # the HPA's name for it, not KEDA's
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.Draft7Validator(crd_schema("ScaledObject", scaled["apiVersion"])).validate(
            scaled
        )


# --------------------------------------------------------------------------- secrets, settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_in_the_manifests(overlay: str) -> None:
    resources = rendered(overlay)
    assert not [r for r in resources if r["kind"] == "Secret"], "the Secret is created by hand"
    for configmap in (r for r in resources if r["kind"] == "ConfigMap"):
        secretish = [k for k in configmap["data"] if SECRET_KEY_WORDS.search(k)]
        assert not secretish, f"{configmap['metadata']['name']}: {secretish} belong in the Secret"
    values = list(strings(resources))
    assert not [v for v in values if URL_WITH_PASSWORD.search(v)], "a URL with a password"
    assert not set(values) & KNOWN_DEFAULT_SECRETS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_takes_its_environment_from_the_configmap_and_secret(
    overlay: str,
) -> None:
    resources = rendered(overlay)
    configmaps = {r["metadata"]["name"] for r in resources if r["kind"] == "ConfigMap"}
    for workload in workloads(resources):
        for cont in all_containers(pod_spec(workload)):
            where = f"{workload['metadata']['name']}/{cont['name']}"
            assert "env" not in cont, f"{where}: inline env; use the ConfigMap"
            refs = {
                (
                    "configMap" if "configMapRef" in ref else "secret",
                    next(iter(ref.values()))["name"],
                )
                for ref in cont["envFrom"]
            }
            assert {("configMap", CONFIG), ("secret", SECRET)} <= refs, where
            assert refs <= {("configMap", CONFIG), ("configMap", WORKER_ENV), ("secret", SECRET)}
            assert {name for kind, name in refs if kind == "configMap"} <= configmaps
    auth = one(resources, "TriggerAuthentication", "ssd-img2img-postgres")
    assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {SECRET}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_keys_are_settings_and_their_values_valid(
    overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resources = rendered(overlay)
    settings = {name.upper() for name in Settings.model_fields}
    data = config(resources)
    unknown = sorted(set(data) - settings)
    assert not unknown, f"not settings of common/settings.py: {unknown}"
    # Read as a process reads them, from an environment of nothing but the ConfigMap
    # (and a database URL standing in for the Secret's): no .env, none of this process's.
    monkeypatch.chdir(tmp_path)
    for name in settings:
        monkeypatch.delenv(name, raising=False)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://ssd:not-published@db/ssd_img2img")
    Settings()
    library = one(resources, "ConfigMap", WORKER_ENV)["data"]
    assert set(library) <= LIBRARY_ENV
    assert not set(library) & settings, "a setting belongs in ssd-img2img-config"


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_graceful_shutdown(overlay: str) -> None:
    resources = rendered(overlay)
    api = container(resources, API, "api")
    assert probe_target(api, "readinessProbe") == ("/health/ready", 8000)
    assert probe_target(api, "livenessProbe") == ("/health/live", 8000)
    # /health/ready answers within HEALTH_CHECK_TIMEOUT_SECONDS; the probe must wait longer.
    check_timeout = float(
        config(resources).get("HEALTH_CHECK_TIMEOUT_SECONDS")
        or Settings.model_fields["health_check_timeout_seconds"].default
    )
    assert api["readinessProbe"]["timeoutSeconds"] > check_timeout
    command = api["command"]
    uvicorn_grace = int(command[command.index("--timeout-graceful-shutdown") + 1])
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod_spec(one(resources, "Deployment", API))["terminationGracePeriodSeconds"]
    sync_wait = float(
        config(resources).get("SYNC_WAIT_TIMEOUT_SECONDS")
        or Settings.model_fields["sync_wait_timeout_seconds"].default
    )
    # A v1 wait ends before uvicorn stops waiting, which ends before SIGKILL.
    assert sync_wait < uvicorn_grace
    assert int(pre_stop[1]) + uvicorn_grace < grace


def test_api_command_is_the_image_command() -> None:
    dockerfile = (ROOT / "infra" / "api.Dockerfile").read_text().replace("\\\n", "")
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    api = container(rendered("production"), API, "api")
    assert api["command"] == json.loads(cmd.removeprefix("CMD "))


def test_api_replicas_per_overlay() -> None:
    dev = one(rendered("dev"), "HorizontalPodAutoscaler", API)["spec"]
    production = one(rendered("production"), "HorizontalPodAutoscaler", API)["spec"]
    assert dev["minReplicas"] == dev["maxReplicas"] == 1
    assert 2 <= production["minReplicas"] < production["maxReplicas"]
    for overlay in OVERLAYS:
        # The HPA owns the count: a value in the Deployment would be re-applied.
        assert "replicas" not in one(rendered(overlay), "Deployment", API)["spec"]


# --------------------------------------------------------------------------- workers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_worker_gpu_grace_and_probes(overlay: str) -> None:
    resources = rendered(overlay)
    deployment = one(resources, "Deployment", GPU_WORKER)
    worker = container(resources, GPU_WORKER, "worker")
    assert worker["command"] == ["python", "-m", "worker"]
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(worker["resources"].get("requests", {}).get("nvidia.com/gpu", 1)) == "1"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= WORKER_JOB_BOUND_SECONDS
    assert "replicas" not in deployment["spec"], "KEDA owns the worker count"
    assert probe_target(worker, "readinessProbe") == ("/health/ready", METRICS_PORT)
    assert probe_target(worker, "livenessProbe") == ("/health/live", METRICS_PORT)
    startup = worker["startupProbe"]
    assert probe_target(worker, "startupProbe")[1] == METRICS_PORT
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load time"


def test_the_job_bound_is_the_one_documented() -> None:
    text = (K8S / "base" / "gpu-worker.yaml").read_text()
    assert f"under {WORKER_JOB_BOUND_SECONDS} s" in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_background_worker(overlay: str) -> None:
    resources = rendered(overlay)
    deployment = one(resources, "Deployment", BACKGROUND)
    assert deployment["spec"]["replicas"] == 1
    background = container(resources, BACKGROUND, "background")
    assert background["command"] == ["python", "-m", "background"]
    assert probe_target(background, "readinessProbe") == ("/health/ready", METRICS_PORT)
    assert probe_target(background, "livenessProbe") == ("/health/live", METRICS_PORT)


def test_gpu_scheduling_knobs_only_in_production() -> None:
    production = pod_spec(one(rendered("production"), "Deployment", GPU_WORKER))
    assert production["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in production[
        "tolerations"
    ]
    dev = pod_spec(one(rendered("dev"), "Deployment", GPU_WORKER))
    assert not dev.get("nodeSelector") and not dev.get("tolerations")


def test_production_reads_the_model_from_the_read_only_volume() -> None:
    resources = rendered("production")
    spec = pod_spec(one(resources, "Deployment", GPU_WORKER))
    volume = next(v for v in spec["volumes"] if v["name"] == "models")
    assert volume == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "ssd-img2img-models", "readOnly": True},
    }
    one(resources, "PersistentVolumeClaim", "ssd-img2img-models")
    worker = container(resources, GPU_WORKER, "worker")
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert config(resources)["MODEL_ID"] == "/models/SSD-1B"
    assert one(resources, "ConfigMap", WORKER_ENV)["data"]["HF_HUB_OFFLINE"] == "1"


def test_environment_and_log_format_per_overlay() -> None:
    assert config(rendered("dev"))["ENVIRONMENT"] == "development"
    assert config(rendered("dev"))["LOG_FORMAT"] == "plain"
    assert config(rendered("production"))["ENVIRONMENT"] == "production"
    assert config(rendered("production"))["LOG_FORMAT"] == "json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_every_process_on_the_metrics_port(overlay: str) -> None:
    resources = rendered(overlay)
    assert config(resources)["METRICS_PORT"] == str(METRICS_PORT)
    for deployment in (r for r in resources if r["kind"] == "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)
        assert annotations["prometheus.io/path"] == "/metrics"
        main = pod_spec(deployment)["containers"][0]
        assert {"name": "metrics", "containerPort": METRICS_PORT} in main["ports"]
    scraped = one(resources, "NetworkPolicy", "ssd-img2img-metrics-ingress")
    assert components_selected(resources, scraped) == {"api", "gpu-worker", "background"}


# --------------------------------------------------------------------------- migration


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_and_every_deployment_waits_for_the_schema(overlay: str) -> None:
    resources = rendered(overlay)
    job = one(resources, "Job", MIGRATE)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert pod_spec(job)["containers"][0]["command"] == compose["services"]["migrate"]["command"]
    assert job["spec"]["backoffLimit"] > 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["parallelism"] == 1 and job["spec"]["podReplacementPolicy"] == "Failed"
    for deployment in (r for r in resources if r["kind"] == "Deployment"):
        first = pod_spec(deployment)["initContainers"][0]
        assert "alembic current --check-heads" in " ".join(first["command"])
        assert first["image"] == pod_spec(job)["containers"][0]["image"]


# --------------------------------------------------------------------------- KEDA


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_object_counts_the_pools_jobs_in_flight(overlay: str) -> None:
    resources = rendered(overlay)
    scaled = one(resources, "ScaledObject", GPU_WORKER)["spec"]
    target = scaled["scaleTargetRef"]
    assert target["name"] == GPU_WORKER and target.get("kind", "Deployment") == "Deployment"
    one(resources, "Deployment", GPU_WORKER)
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    assert scaled["cooldownPeriod"] > 0
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    assert re.search(r"\bFROM\s+jobs\b", query)
    assert f"queue = '{config(resources)['GPU_QUEUE']}'" in query
    statuses = set(re.findall(r"'([A-Z]+)'", query))
    assert (
        statuses
        == {s.value for s in JobStatus if not s.is_terminal}
        == {
            "QUEUED",
            "PROCESSING",
        }
    )
    assert int(trigger["metadata"]["targetQueryValue"]) >= 1
    assert int(trigger["metadata"]["activationTargetQueryValue"]) >= 0
    auth = one(resources, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": SECRET, "key": "KEDA_POSTGRES_CONNECTION"}
    ]


def test_dev_runs_at_most_one_gpu_worker() -> None:
    dev = one(rendered("dev"), "ScaledObject", GPU_WORKER)["spec"]
    production = one(rendered("production"), "ScaledObject", GPU_WORKER)["spec"]
    assert dev["maxReplicaCount"] == 1 < production["maxReplicaCount"]


# --------------------------------------------------------------------------- network, security


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default(overlay: str) -> None:
    resources = rendered(overlay)
    deny = one(resources, "NetworkPolicy", "ssd-img2img-default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    components = {pod_labels(w)["app.kubernetes.io/component"] for w in workloads(resources)}
    internet: set[str] = set()
    for policy in policies(resources):
        for rule in policy["spec"].get("egress", []):
            cidrs = {peer["ipBlock"]["cidr"] for peer in rule.get("to", []) if "ipBlock" in peer}
            if cidrs & {"0.0.0.0/0", "::/0"}:
                internet |= components_selected(resources, policy)
            elif "to" not in rule:
                # Any destination: only on the ports of DNS and the backing services.
                assert "ports" in rule, f"{policy['metadata']['name']}: egress to all"
                assert {p["port"] for p in rule["ports"]} <= BACKING_PORTS
    assert internet == INTERNET_COMPONENTS
    dns = one(resources, "NetworkPolicy", "ssd-img2img-allow-dns")
    assert components_selected(resources, dns) == components


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_takes_connections_from_anywhere(overlay: str) -> None:
    resources = rendered(overlay)
    for policy in policies(resources):
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:
                assert components_selected(resources, policy) == {"api"}
                assert [p["port"] for p in rule["ports"]] == [8000]
            else:
                assert [p["port"] for p in rule["ports"]] == [METRICS_PORT]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        for cont in all_containers(spec):
            context = cont["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in cont["resources"]["limits"]


# --------------------------------------------------------------------------- the renderer


def _kustomization(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(text)
    (directory / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  A: a\n"
    )
    return directory


@pytest.mark.parametrize(
    "extra",
    [
        "namePrefix: x-",
        "commonLabels: {a: b}",
        "configMapGenerator: []",
        "patchesStrategicMerge: [cm.yaml]",
        "replicas: []",
    ],
)
def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path, extra: str) -> None:
    directory = _kustomization(tmp_path / "k", f"resources: [cm.yaml]\n{extra}\n")
    key = extra.split(":")[0]
    with pytest.raises(kustomize.KustomizeError, match=key):
        kustomize.build(directory)
    assert kustomize.main([str(directory)]) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resources: [cm.yaml]\nlabels: [{pairs: {a: b}, includeSelectors: true}]", "Selectors"),
        ("resources: [cm.yaml]\nimages: [{name: x, newTag: 1.10}]", "string"),
        ("resources: [cm.yaml]\npatches: [{path: cm.yaml, target: {kind: ConfigMap}}]", "path"),
        ("resources: [https://example.com/x.yaml]", "local"),
        ("resources: [cm.yaml, cm.yaml]", "twice"),
    ],
)
def test_renderer_refuses_unsupported_entries(tmp_path: Path, text: str, message: str) -> None:
    directory = _kustomization(tmp_path / "k", text + "\n")
    with pytest.raises(kustomize.KustomizeError, match=message):
        kustomize.build(directory)


def test_strategic_merge_follows_kubernetes_list_semantics() -> None:
    base = {
        "containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b"}],
        "tolerations": [{"key": "k"}],
        "volumes": [{"name": "v", "emptyDir": {}}],
    }
    patch = {
        "containers": [{"name": "a", "args": ["2"]}, {"name": "c"}],
        "tolerations": [{"key": "j"}],
        "volumes": [{"name": "v", "emptyDir": None, "secret": {"secretName": "s"}}],
    }
    merged = kustomize.strategic_merge(base, patch, kind="Deployment")
    assert merged == {
        "containers": [{"name": "a", "image": "x", "args": ["2"]}, {"name": "b"}, {"name": "c"}],
        "tolerations": [{"key": "j"}],
        "volumes": [{"name": "v", "secret": {"secretName": "s"}}],
    }
    assert base["tolerations"] == [{"key": "k"}], "the target is not modified"
    with pytest.raises(kustomize.KustomizeError, match="merge semantics"):
        kustomize.strategic_merge(
            {"ports": [{"port": 1}]}, {"ports": [{"port": 2}]}, kind="Service"
        )
    with pytest.raises(kustomize.KustomizeError, match="directives"):
        kustomize.strategic_merge({"a": {}}, {"a": {"$patch": "replace"}}, kind="Deployment")


def test_image_references() -> None:
    assert kustomize.split_image("localhost:5000/api:dev") == ("localhost:5000/api", "dev", "")
    assert kustomize.split_image("api@sha256:ab") == ("api", "", "sha256:ab")
    assert kustomize.split_image("api") == ("api", "", "")
    production = rendered("production")
    images = {c["image"] for w in workloads(production) for c in all_containers(pod_spec(w))}
    assert images == {
        "registry.example.com/ssd-img2img-api:0.1.0",
        "registry.example.com/ssd-img2img-worker:0.1.0",
    }
