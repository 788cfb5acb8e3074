"""The Helm chart (helm/nomnom), linted and rendered by real Helm (helm-python-sdk: Helm v4
as a shared library, no binary, no cluster) for several value sets; every rendered
manifest is validated against the Kubernetes schemas (kubernetes-validate). The NATS
dependency chart cannot be downloaded here: the chart renders without it (a declared but
absent subchart is skipped), and its declaration is checked on its own."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

from conftest import CHART, ROOT, default_port, dumps, load_yaml_documents, routes

RELEASE = "nomnom"
NAMESPACE = "prod"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}

EXTERNAL_NATS = {
    "nats": {"enabled": False},
    "externalNats": {"url": "nats://nats-1.nats:4222,nats://nats-2.nats:4222", "monitoringEndpoint": "nats.nats:8222"},
}

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    # docs/webhooks.md: GitHub deliveries, signed, routed and deduplicated by header.
    "github-webhooks": {
        "api": {
            "webhookSecrets": {"existingSecret": "github-webhook"},
            "extraEnv": {
                "NOMNOM_WEBHOOKS": "scheme=github,secrets-file=/etc/nomnom/webhook-secrets/github",
                "NOMNOM_ENTITY_HEADER": "X-GitHub-Event",
                "NOMNOM_IDEMPOTENCY_HEADERS": "X-GitHub-Delivery",
                "NOMNOM_CAPTURE_HEADERS": "X-GitHub-Event,X-GitHub-Delivery",
            },
        }
    },
    "keda": {"worker": {"autoscaling": {"keda": {"enabled": True, "lagThreshold": 2500}}}},
    "external-nats-creds": {
        **EXTERNAL_NATS,
        "natsAuth": {"method": "creds", "existingSecret": "nats-client"},
        "natsTls": {"enabled": True, "existingSecret": "nats-tls", "clientCertificate": True},
        "api": {"apiKeys": {"existingSecret": "nomnom-api-keys"}},
    },
    "external-nats-user-password-keda": {
        **EXTERNAL_NATS,
        "natsAuth": {"method": "userPassword", "existingSecret": "nats-client"},
        "worker": {"autoscaling": {"keda": {"enabled": True, "account": "NOMNOM"}}},
    },
    "nats-dependency-disabled": {
        "nats": {"enabled": False},
        "externalNats": {"url": "nats://nats.messaging.svc:4222"},
        "stream": {"replicas": 3, "maxBytes": 10737418240},
        "migrations": {"job": {"enabled": True}},
    },
    # The overlay shipped for per-component NATS users with least-privilege permissions.
    "per-component-nats-users": yaml.safe_load((CHART / "values-nats-permissions.yaml").read_text()),
    # docs/operations.md: the alert rules and the Grafana dashboard.
    "observability": {
        "metrics": {
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "grafanaDashboard": {"enabled": True},
        }
    },
    # docs/operations.md, "Traces": spans exported to a collector, each service named.
    "tracing": {
        "tracing": {
            "otlpEndpoint": "http://otel-collector.observability:4318",
            "apiServiceName": "orders-api",
            "workerServiceName": "orders-worker",
        }
    },
    "ingress-hpa": {
        "api": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "ingest.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"hosts": ["ingest.example.com"], "secretName": "ingest-tls"}],
            },
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
            "extraEnv": {"NOMNOM_MAX_BODY_BYTES": 1048576, "NOMNOM_SHUTDOWN_GRACE": "20s"},
        },
        "worker": {"autoscaling": {"enabled": True}, "extraEnv": {"NOMNOM_ACK_WAIT": "60s"}},
    },
}


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def chart():
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


def render(chart, values: dict | None = None, *, api_versions: list[str] | None = None) -> dict[str, str]:
    """helm template: Chart.render, with extra API versions (helm template --api-versions),
    which the SDK's C library accepts in its options but the Python wrapper does not pass."""
    options = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True}
    if api_versions:
        options["api_versions"] = api_versions
    rendered = _native.call_string(
        "helm_render", chart._raw(), None if values is None else json.dumps(values), json.dumps(options)
    )
    return json.loads(rendered)


def manifests(rendered: dict[str, str]) -> list[dict]:
    documents = []
    for name, text in rendered.items():
        if name.endswith("NOTES.txt"):
            continue
        documents.extend(load_yaml_documents(text))
    return documents


def by_kind(documents: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def one(documents: list[dict], kind: str, name: str) -> dict:
    found = by_kind(documents, kind)
    assert name in found, f"no {kind} {name}: {sorted(found)}"
    return found[name]


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def env_value(c: dict, name: str) -> str:
    return env_of(c)[name]["value"]


def lint_messages(path: Path, values: dict | None) -> list[dict]:
    report = helm.lint(path, values, strict=True, kube_version="v1.30.0")
    return [m for m in report["messages"] if m["severity"] >= 2] + [
        {"severity": 3, "error": e} for e in report["errors"] if not any(e == m["error"] for m in report["messages"])
    ]


MISSING_DEPENDENCY = "chart directory is missing these dependencies: nats"


@pytest.fixture(scope="session")
def chart_without_dependency(tmp_path_factory) -> Path:
    """A copy of the chart with the NATS dependency removed from Chart.yaml."""
    target = tmp_path_factory.mktemp("chart") / "nomnom"
    shutil.copytree(CHART, target)
    meta = yaml.safe_load((target / "Chart.yaml").read_text())
    meta.pop("dependencies")
    (target / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return target


def merged(values: dict) -> dict:
    with helm.Chart.load(CHART) as loaded:
        return loaded.merge_values(values)


# ---------------------------------------------------------------------------- chart


def test_nats_dependency_is_declared_for_the_official_chart():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    (dependency,) = meta["dependencies"]
    assert dependency["name"] == "nats"
    assert dependency["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert dependency["condition"] == "nats.enabled"
    assert re.fullmatch(r"\^1\.\d+\.\d+", dependency["version"]), "the 1.x chart (config.cluster / config.jetstream values)"
    # helm dependency list sees it (and, offline, that it is not downloaded).
    (listed,) = helm.dependency_list(CHART)
    assert listed["name"] == "nats" and listed["status"] == "missing"


def test_bundled_nats_values_ask_for_a_jetstream_cluster_of_three():
    nats = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]
    assert nats["enabled"] is True
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert nats["config"]["jetstream"]["enabled"] is True
    assert nats["config"]["jetstream"]["fileStore"]["pvc"]["size"]
    assert nats["config"]["monitor"]["port"] == 8222


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_is_clean_but_for_the_undownloadable_dependency(name):
    messages = lint_messages(CHART, VALUE_SETS[name])
    assert {m["error"] for m in messages} <= {MISSING_DEPENDENCY}, dumps(messages)


@pytest.mark.parametrize("name", ["nats-dependency-disabled", "external-nats-creds"])
def test_helm_lint_without_the_dependency_is_clean(chart_without_dependency, name):
    assert lint_messages(chart_without_dependency, VALUE_SETS[name]) == []


@pytest.mark.parametrize(
    "values, complaint",
    [
        ({"worker": {"extraEnv": {"DATABSE_URL": "postgres://x"}}}, "DATABSE_URL"),
        ({"api": {"extraEnv": {"NOMNOM_CONSUMER": "x"}}}, "NOMNOM_CONSUMER"),
        ({"natsAuth": {"method": "password"}}, "method"),
        ({"stream": {"replicas": 7}}, "replicas"),
        ({"tracing": {"otlpEndpoint": "https://collector:4318"}}, "otlpEndpoint"),
        ({"api": {"replicas": 3}}, "replicas"),
        ({"worker": {"autoscaling": {"keda": {"natsServerMonitoringEndpoint": "http://nats:8222"}}}}, "natsServerMonitoringEndpoint"),
    ],
)
def test_values_schema_refuses_mistakes(chart, values, complaint):
    with pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(merged(values))
    assert complaint in str(error.value)


def test_values_schema_accepts_every_value_set(chart):
    for values in VALUE_SETS.values():
        chart.validate_schema(merged(values))


def test_extra_env_names_in_the_schema_are_flags_of_the_binaries(api_env, worker_env):
    schema = json.loads((CHART / "values.schema.json").read_text())
    api_names = set(schema["properties"]["api"]["properties"]["extraEnv"]["propertyNames"]["enum"])
    worker_names = set(schema["properties"]["worker"]["properties"]["extraEnv"]["propertyNames"]["enum"])
    assert api_names <= api_env, api_names - api_env
    assert worker_names <= worker_env, worker_names - worker_env


def test_every_setting_of_the_binaries_can_be_given(chart, api_env, worker_env):
    """Each variable nats-api or the worker reads is set by the chart in some value set, or
    allowed in extraEnv: a flag added to the binaries must be added to the chart too."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    extra = {
        component: set(schema["properties"][component]["properties"]["extraEnv"]["propertyNames"]["enum"])
        for component in ("api", "worker")
    }
    value_sets = [*VALUE_SETS.values()] + [
        {"natsAuth": {"method": method, "existingSecret": "nats-client"}} for method in ("token", "nkeySeed")
    ] + [{"stream": {"subjects": "orders.>", "subjectPrefix": "orders.in", "bodyBucket": "BODIES"}}]
    rendered_env = {"api": set(), "worker": set()}
    for values in value_sets:
        documents = manifests(render(chart, values))
        for component in ("api", "worker"):
            rendered_env[component] |= set(env_of(container(one(documents, "Deployment", f"{RELEASE}-{component}"))))
    rendered_env["api"] -= extra["api"]
    rendered_env["worker"] -= extra["worker"]
    # NOMNOM_API_KEYS: keys only from a mounted Secret file (NOMNOM_API_KEYS_FILE), never inline.
    assert api_env - rendered_env["api"] - extra["api"] == {"NOMNOM_API_KEYS"}
    assert worker_env - rendered_env["worker"] - extra["worker"] == set()


@pytest.mark.parametrize(
    "values, error",
    [
        ({"nats": {"enabled": False}}, "externalNats.url"),
        ({**EXTERNAL_NATS, "externalNats": {"url": "nats://n:4222"}, "worker": {"autoscaling": {"keda": {"enabled": True}}}}, "monitoringEndpoint"),
        ({"natsAuth": {"method": "creds"}}, "natsAuth.existingSecret"),
        ({"database": {"existingSecret": ""}}, "/database/existingSecret"),  # the schema says it first
    ],
)
def test_missing_required_settings_fail_with_a_message(chart, values, error):
    with pytest.raises(helm.HelmError) as failure:
        render(chart, values)
    assert error in str(failure.value)


# ---------------------------------------------------------------------------- rendering


@pytest.fixture(scope="session")
def rendered(chart) -> dict[str, list[dict]]:
    return {name: manifests(render(chart, values)) for name, values in VALUE_SETS.items()}


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered, name, kube_version):
    documents = rendered[name]
    assert documents
    for document in documents:
        if document["kind"] in CRD_KINDS:
            continue  # custom resources: no schema here; their fields are asserted below
        kubernetes_validate.validate(document, kube_version, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_are_locked_down(rendered, name):
    pods = [d["spec"]["template"] for d in rendered[name] if d["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_env_vars_are_ones_the_binaries_read(rendered, name, api_env, worker_env):
    documents = rendered[name]
    api = container(one(documents, "Deployment", f"{RELEASE}-api"))
    worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    assert set(env_of(api)) <= api_env, set(env_of(api)) - api_env
    assert set(env_of(worker)) <= worker_env, set(env_of(worker)) - worker_env
    for job in by_kind(documents, "Job").values():
        names = set(env_of(container(job)))
        assert names <= worker_env, names - worker_env
    # nats-api and the worker must agree on the stream, or each would "fix" it for itself.
    stream = {k: v for k, v in env_of(api).items() if k.startswith("NOMNOM_STREAM") or k in ("NOMNOM_DUPLICATE_WINDOW", "NATS_URL")}
    assert stream and all(env_of(worker)[k] == v for k, v in stream.items()), dumps(stream)
    # Secrets are referenced, never inlined.
    for c in (api, worker):
        for secret in ("DATABASE_URL", "NATS_PASSWORD", "NATS_TOKEN", "NATS_NKEY_SEED", "NATS_USER"):
            if secret in env_of(c):
                assert "secretKeyRef" in env_of(c)[secret]["valueFrom"], secret


def test_spans_are_exported_only_when_an_endpoint_is_given(rendered):
    for name, documents in rendered.items():
        for component in ("api", "worker"):
            env = env_of(container(one(documents, "Deployment", f"{RELEASE}-{component}")))
            if name != "tracing":
                assert not {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} & set(env), (name, component)
                continue
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"
            assert env["OTEL_SERVICE_NAME"]["value"] == f"orders-{component}"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_probes_hit_the_real_health_endpoints_on_the_listen_ports(rendered, name):
    documents = rendered[name]
    cases = [
        (f"{RELEASE}-api", "NOMNOM_LISTEN", "API_LISTEN", "nats-api/src/lib.rs"),
        (f"{RELEASE}-worker", "NOMNOM_WORKER_LISTEN", "WORKER_LISTEN", "runtime/src/worker/health.rs"),
    ]
    for deployment, listen, constant, router in cases:
        c = container(one(documents, "Deployment", deployment))
        port = int(env_value(c, listen).rsplit(":", 1)[1])
        assert port == default_port(constant)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        known = routes(router)
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            http = c[probe]["httpGet"]
            assert http["path"] == path and path in known, (deployment, probe)
            assert ports[http["port"]] == port, (deployment, probe)
        assert "/metrics" in known
    worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time for migrations and NATS"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_services_pdbs_and_autoscalers_point_at_real_pods(rendered, name):
    documents = rendered[name]
    deployments = by_kind(documents, "Deployment")
    for service in by_kind(documents, "Service").values():
        selector = service["spec"]["selector"]
        targets = [d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, service["metadata"]["name"]
        port_names = {p["name"] for p in container(targets[0])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for pdb in by_kind(documents, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector == d["spec"]["selector"]["matchLabels"] for d in deployments.values())
    for hpa in by_kind(documents, "HorizontalPodAutoscaler").values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "the autoscaler owns the replica count"
    for scaled in by_kind(documents, "ScaledObject").values():
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"]


def test_defaults_use_the_bundled_nats_cluster_with_r3_streams(rendered):
    documents = rendered["defaults"]
    nats_service = f"{RELEASE}-nats"  # the NATS chart's fullname for release "nomnom"
    for deployment in (f"{RELEASE}-api", f"{RELEASE}-worker"):
        c = container(one(documents, "Deployment", deployment))
        assert env_value(c, "NATS_URL") == f"nats://{nats_service}.{NAMESPACE}.svc:4222"
        assert env_value(c, "NOMNOM_STREAM_REPLICAS") == "3"
        assert env_value(c, "NOMNOM_STREAM") == "MESSAGES"
        assert env_of(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "nomnom-database", "key": "database-url"}
    assert one(documents, "Deployment", f"{RELEASE}-api")["spec"]["replicas"] == 2
    assert not by_kind(documents, "ScaledObject") and not by_kind(documents, "HorizontalPodAutoscaler")
    assert not by_kind(documents, "Ingress") and not by_kind(documents, "Job")
    assert set(by_kind(documents, "PodDisruptionBudget")) == {f"{RELEASE}-api", f"{RELEASE}-worker"}


def test_keda_scales_workers_on_the_consumer_backlog(rendered):
    documents = rendered["keda"]
    scaled = one(documents, "ScaledObject", f"{RELEASE}-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"name": f"{RELEASE}-worker"}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    # KEDA's nats-jetstream scaler parameters (all strings).
    assert set(metadata) == {
        "natsServerMonitoringEndpoint",
        "account",
        "stream",
        "consumer",
        "lagThreshold",
        "activationLagThreshold",
        "useHttps",
    }
    assert all(isinstance(v, str) for v in metadata.values())
    worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    assert metadata["stream"] == env_value(worker, "NOMNOM_STREAM") == "MESSAGES"
    assert metadata["consumer"] == env_value(worker, "NOMNOM_CONSUMER") == "workers"
    # The bundled cluster's headless service: KEDA prefixes the consumer leader's pod name.
    assert metadata["natsServerMonitoringEndpoint"] == f"{RELEASE}-nats-headless.{NAMESPACE}.svc.cluster.local:8222"
    assert metadata["account"] == "$G"
    assert metadata["lagThreshold"] == "2500"
    assert metadata["useHttps"] == "false"
    assert scaled["spec"]["minReplicaCount"] == 1 and scaled["spec"]["maxReplicaCount"] == 10
    assert f"{RELEASE}-worker" not in by_kind(documents, "HorizontalPodAutoscaler"), "KEDA, not an HPA"


def test_external_nats_with_creds_file_and_mutual_tls(rendered):
    documents = rendered["external-nats-creds"]
    for deployment in (f"{RELEASE}-api", f"{RELEASE}-worker"):
        d = one(documents, "Deployment", deployment)
        c = container(d)
        env = env_of(c)
        assert env_value(c, "NATS_URL") == EXTERNAL_NATS["externalNats"]["url"]
        assert env_value(c, "NOMNOM_STREAM_REPLICAS") == "1", "no bundled cluster: R1 unless stream.replicas says"
        assert not {"NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"} & set(env), "one auth method only"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        # NATS_CREDS names the file the creds Secret is mounted as.
        creds = env_value(c, "NATS_CREDS")
        assert mounts["nats-creds"]["readOnly"] is True
        (item,) = volumes["nats-creds"]["secret"]["items"]
        assert creds == f"{mounts['nats-creds']['mountPath']}/{item['path']}"
        assert volumes["nats-creds"]["secret"]["secretName"] == "nats-client"
        for variable, key in (("NATS_TLS_CA", "ca.crt"), ("NATS_TLS_CERT", "tls.crt"), ("NATS_TLS_KEY", "tls.key")):
            assert env_value(c, variable) == f"{mounts['nats-tls']['mountPath']}/{key}"
        assert env_value(c, "NATS_REQUIRE_TLS") == "true"
        assert volumes["nats-tls"]["secret"]["secretName"] == "nats-tls"
    api = one(documents, "Deployment", f"{RELEASE}-api")
    keys = env_value(container(api), "NOMNOM_API_KEYS_FILE")
    mounts = {m["name"]: m["mountPath"] for m in container(api)["volumeMounts"]}
    assert keys == f"{mounts['api-keys']}/api-keys"


def test_webhook_secrets_are_mounted_whole_so_rotation_reaches_the_files(rendered):
    api = one(rendered["github-webhooks"], "Deployment", f"{RELEASE}-api")
    c = container(api)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    assert mounts["webhook-secrets"]["mountPath"] == "/etc/nomnom/webhook-secrets"
    assert mounts["webhook-secrets"]["readOnly"] is True
    assert "subPath" not in mounts["webhook-secrets"], "a subPath mount is never updated"
    assert volumes["webhook-secrets"]["secret"] == {"secretName": "github-webhook", "defaultMode": 0o440}
    rule = env_value(c, "NOMNOM_WEBHOOKS")
    assert rule.split("secrets-file=")[1].startswith(mounts["webhook-secrets"]["mountPath"] + "/")
    defaults = container(one(rendered["defaults"], "Deployment", f"{RELEASE}-api"))
    assert "webhook-secrets" not in {m["name"] for m in defaults.get("volumeMounts", [])}


def test_external_nats_with_user_password_from_a_secret(rendered):
    documents = rendered["external-nats-user-password-keda"]
    c = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    env = env_of(c)
    assert env["NATS_USER"]["valueFrom"]["secretKeyRef"] == {"name": "nats-client", "key": "user"}
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "nats-client", "key": "password"}
    assert "volumeMounts" not in c, "nothing to mount"
    (trigger,) = one(documents, "ScaledObject", f"{RELEASE}-worker")["spec"]["triggers"]
    assert trigger["metadata"]["natsServerMonitoringEndpoint"] == "nats.nats:8222"
    assert trigger["metadata"]["account"] == "NOMNOM"


def permissions_conf() -> dict[str, dict]:
    """The permission sets of deploy/nats/permissions.conf (NATS config whose values are
    JSON), which system-tests/tests/nats_security.rs runs against a real server."""
    text = (ROOT / "deploy" / "nats" / "permissions.conf").read_text()
    decoder = json.JSONDecoder()
    found = {}
    for match in re.finditer(r"^(NOMNOM_\w+_PERMISSIONS)\s*=\s*", text, re.M):
        found[match.group(1)], _ = decoder.raw_decode(text, match.end())
    return found


def test_the_helm_permissions_are_the_tested_ones():
    users = {
        u["user"]: u for u in VALUE_SETS["per-component-nats-users"]["nats"]["config"]["merge"]["authorization"]["users"]
    }
    conf = permissions_conf()
    assert set(conf) == {"NOMNOM_API_PERMISSIONS", "NOMNOM_WORKER_PERMISSIONS"}
    assert users["nats-api"]["permissions"] == conf["NOMNOM_API_PERMISSIONS"]
    assert users["worker"]["permissions"] == conf["NOMNOM_WORKER_PERMISSIONS"]
    # Least privilege, in the terms that matter: only the worker consumes and acks, only
    # nats-api publishes ingest messages, neither may delete anything.
    api_pub = users["nats-api"]["permissions"]["publish"]["allow"]
    worker_pub = users["worker"]["permissions"]["publish"]["allow"]
    assert "messages.ingest.>" in api_pub and not any(s.startswith("messages.") for s in worker_pub)
    assert not any(".CONSUMER." in s or s.startswith("$JS.ACK") for s in api_pub)
    assert not any(".DELETE.MESSAGES" in s or s.startswith("$JS.API.STREAM.DELETE") for s in api_pub + worker_pub)


def test_each_component_connects_as_its_own_nats_user(rendered):
    values = VALUE_SETS["per-component-nats-users"]
    documents = rendered["per-component-nats-users"]
    secrets = {"api": "nomnom-nats-api", "worker": "nomnom-nats-worker"}
    for component, secret in secrets.items():
        env = env_of(container(one(documents, "Deployment", f"{RELEASE}-{component}")))
        assert env["NATS_USER"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "user"}
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "password"}
    # The NATS pods take each user's password from the Secret that component reads.
    nats_env = values["nats"]["container"]["env"]
    for user in values["nats"]["config"]["merge"]["authorization"]["users"]:
        (variable,) = re.fullmatch(r"<< \$(\w+) >>", user["password"]).groups()
        component = "api" if user["user"] == "nats-api" else "worker"
        assert nats_env[variable]["valueFrom"]["secretKeyRef"] == {"name": secrets[component], "key": "password"}


def test_nats_dependency_disabled_and_migration_hook(rendered):
    documents = rendered["nats-dependency-disabled"]
    for deployment in (f"{RELEASE}-api", f"{RELEASE}-worker"):
        c = container(one(documents, "Deployment", deployment))
        assert env_value(c, "NATS_URL") == "nats://nats.messaging.svc:4222"
        assert env_value(c, "NOMNOM_STREAM_REPLICAS") == "3"
        assert env_value(c, "NOMNOM_STREAM_MAX_BYTES") == "10737418240", "no float exponent"
    job = one(documents, "Job", f"{RELEASE}-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    c = container(job)
    assert c["args"] == ["--migrate-only"]
    worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    assert c["image"] == worker["image"]
    assert set(env_of(c)) >= {"DATABASE_URL"} and "NATS_URL" not in env_of(c), "migrations need no NATS"
    # --migrate-only is a real flag of the worker, and migrations take the advisory lock.
    flags = (ROOT / "runtime/src/worker/config.rs").read_text()
    assert re.search(r"#\[arg\(long\)\]\s*pub migrate_only: bool", flags)
    assert "pg_advisory_xact_lock" in (ROOT / "runtime/src/worker/migrate.rs").read_text()


def test_ingress_and_autoscalers(rendered):
    documents = rendered["ingress-hpa"]
    ingress = one(documents, "Ingress", f"{RELEASE}-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["ingest.example.com"], "secretName": "ingest-tls"}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ingest.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = one(documents, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    hpas = by_kind(documents, "HorizontalPodAutoscaler")
    api_hpa = hpas[f"{RELEASE}-api"]
    assert api_hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{RELEASE}-api"}
    assert (api_hpa["spec"]["minReplicas"], api_hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpas[f"{RELEASE}-worker"]["spec"]["metrics"][0]["resource"]["name"] == "cpu", "HPA fallback without KEDA"
    api = container(one(documents, "Deployment", f"{RELEASE}-api"))
    assert env_value(api, "NOMNOM_MAX_BODY_BYTES") == "1048576"
    assert env_value(api, "NOMNOM_SHUTDOWN_GRACE") == "20s"
    worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    assert env_value(worker, "NOMNOM_ACK_WAIT") == "60s"


def test_api_drains_before_it_stops(rendered):
    deployment = one(rendered["defaults"], "Deployment", f"{RELEASE}-api")
    spec = deployment["spec"]["template"]["spec"]
    sleep = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = 25  # NOMNOM_SHUTDOWN_GRACE default (runtime/src/defaults.rs API_SHUTDOWN_GRACE)
    assert "API_SHUTDOWN_GRACE: Duration = Duration::from_secs(25)" in (ROOT / "runtime/src/defaults.rs").read_text()
    assert spec["terminationGracePeriodSeconds"] > sleep + grace


def test_service_monitors_only_when_the_crd_is_served(chart):
    assert not by_kind(manifests(render(chart)), "ServiceMonitor")
    documents = manifests(render(chart, api_versions=[SERVICE_MONITOR_API]))
    monitors = by_kind(documents, "ServiceMonitor")
    assert set(monitors) == {f"{RELEASE}-api", f"{RELEASE}-worker"}
    services = by_kind(documents, "Service")
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        selected = [s for s in services.values() if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1
        assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    disabled = manifests(render(chart, {"metrics": {"serviceMonitor": {"enabled": False}}}, api_versions=[SERVICE_MONITOR_API]))
    assert not by_kind(disabled, "ServiceMonitor")


def test_notes_tell_how_to_try_it(chart):
    notes = render(chart)[f"{RELEASE}/templates/NOTES.txt"]
    assert f"port-forward service/{RELEASE}-api 8080:8080" in notes
    assert "curl -X POST \"$NOMNOM_URL/api/ingest/message/order\"" in notes
    assert "/api/ingest/message/{entity}" in routes("nats-api/src/lib.rs")
    assert "3 replica(s)" in notes
    with_ingress = render(chart, VALUE_SETS["ingress-hpa"])[f"{RELEASE}/templates/NOTES.txt"]
    assert "export NOMNOM_URL=https://ingest.example.com" in with_ingress


def test_values_file_and_rendering_agree_on_defaults(chart):
    values = chart.values
    documents = manifests(render(chart))
    worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
    assert env_value(worker, "NOMNOM_CONSUMER") == values["worker"]["consumer"]
    assert env_value(worker, "NOMNOM_BATCH_SIZE") == str(values["worker"]["batchSize"])
    assert worker["image"] == f"{values['worker']['image']['repository']}:{chart.metadata['appVersion']}"
    # The defaults in values.yaml are the binaries' defaults (runtime/src/defaults.rs).
    defaults = (ROOT / "runtime/src/defaults.rs").read_text()
    assert f'STREAM_NAME: &str = "{values["stream"]["name"]}"' in defaults
    assert f'WORKER_CONSUMER: &str = "{values["worker"]["consumer"]}"' in defaults
    assert f"WORKER_BATCH_SIZE: usize = {values['worker']['batchSize']}" in defaults
    assert values["stream"]["replicas"] is None, "derived from the NATS setup unless set"


def test_console_is_off_by_default_and_reads_the_workers_consumer(chart):
    """The console is opt-in (api.console), and nats-api is told the workers' consumer, so
    the console's lag figures are of the consumer the workers really use."""
    for values, console in (({}, "false"), ({"api": {"console": True}, "worker": {"consumer": "orders-workers"}}, "true")):
        documents = manifests(render(chart, values))
        api = container(one(documents, "Deployment", f"{RELEASE}-api"))
        worker = container(one(documents, "Deployment", f"{RELEASE}-worker"))
        assert env_value(api, "NOMNOM_CONSOLE") == console
        assert env_value(api, "NOMNOM_CONSUMER") == env_value(worker, "NOMNOM_CONSUMER")
        assert env_value(worker, "NOMNOM_CONSUMER") == values.get("worker", {}).get("consumer", "workers")
