"""The Helm chart, rendered by Helm's own engine and checked against Kubernetes' schemas.

helm-python-sdk wraps Helm's Go SDK (no helm binary, no cluster); kubernetes-validate
holds the API server's OpenAPI schemas, used in strict mode so a misspelt field fails.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed (pip install -e '.[test]')"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')"
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "runbookd"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
# A recent release that kubernetes-validate ships schemas for; lint targets it too.
KUBE_VERSION = "1.34.0"
RELEASE, NAMESPACE = "rb", "ops"
APP_COMPONENTS = {"api", "worker", "beat", "migrate"}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def production_values() -> dict[str, Any]:
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders for `values`, hooks included, NOTES excluded."""
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, got {sorted(names(docs, kind))}"
    return matches[0]


def names(docs: list[dict[str, Any]], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["kind"] == kind}


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield doc, doc["spec"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_valid_kubernetes(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def assert_lint_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


# --- default values: an evaluation install with bundled PostgreSQL and Redis ---


def test_default_values_render_valid_kubernetes_manifests(chart: Any) -> None:
    docs = render(chart)
    assert_valid_kubernetes(docs)
    assert names(docs, "Deployment") == {"rb-runbookd-api", "rb-runbookd-worker-default", "rb-runbookd-beat"}
    assert names(docs, "StatefulSet") == {"rb-runbookd-postgresql", "rb-runbookd-redis"}
    assert names(docs, "Job") == {"rb-runbookd-migrate"}
    assert names(docs, "PodDisruptionBudget") == {"rb-runbookd-api", "rb-runbookd-worker-default"}
    assert names(docs, "ServiceAccount") == {"rb-runbookd"}
    for kind in ("Ingress", "HorizontalPodAutoscaler", "NetworkPolicy", "DaemonSet"):
        assert names(docs, kind) == set(), f"{kind} is opt-in"
    for name in ("rb-runbookd-postgresql", "rb-runbookd-redis"):
        claim = find(docs, "StatefulSet", name)["spec"]["volumeClaimTemplates"][0]
        # The PVCs outlive the release; the uninstall docs find them by this label.
        assert claim["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_default_values_pass_helm_lint() -> None:
    assert_lint_clean(None)


def test_bundled_database_urls_are_assembled_from_generated_passwords(chart: Any) -> None:
    docs = render(chart)
    api = find(docs, "Deployment", "rb-runbookd-api")["spec"]["template"]
    env = env_of(api["spec"]["containers"][0])
    assert env["RUNBOOKD_POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "rb-runbookd-postgresql", "key": "password"}
    # Kubernetes expands $(VAR) from variables defined earlier in the list.
    assert list(env).index("RUNBOOKD_POSTGRES_PASSWORD") < list(env).index("RUNBOOKD_DATABASE_URL")
    assert env["RUNBOOKD_DATABASE_URL"]["value"] == (
        "postgresql+psycopg://runbookd:$(RUNBOOKD_POSTGRES_PASSWORD)@rb-runbookd-postgresql:5432/runbookd")
    assert env["RUNBOOKD_REDIS_URL"]["value"] == "redis://:$(RUNBOOKD_REDIS_PASSWORD)@rb-runbookd-redis:6379/0"
    assert env["RUNBOOKD_HOST"]["value"] == "0.0.0.0"
    password = find(docs, "Secret", "rb-runbookd-postgresql")
    assert len(password["data"]["password"]) > 20
    # The bundled database only exists once the release is installed, so the first migration runs after it.
    job = find(docs, "Job", "rb-runbookd-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_api_probes_and_service(chart: Any) -> None:
    docs = render(chart)
    container = find(docs, "Deployment", "rb-runbookd-api")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["api"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    service = find(docs, "Service", "rb-runbookd-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"


def test_beat_is_one_replica_replaced_with_recreate(chart: Any) -> None:
    beat = find(render(chart), "Deployment", "rb-runbookd-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert beat["spec"]["template"]["spec"]["containers"][0]["args"] == ["beat"]


def test_migration_job_is_a_helm_hook(chart: Any) -> None:
    job = find(render(chart), "Job", "rb-runbookd-migrate")
    annotations = job["metadata"]["annotations"]
    assert "pre-upgrade" in annotations["helm.sh/hook"]
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# --- production-like values: external services, two pools, node pool, ingress, HPA ---


def test_production_values_render_valid_kubernetes_manifests(chart: Any, production_values: dict) -> None:
    docs = render(chart, production_values)
    assert_valid_kubernetes(docs)
    assert names(docs, "StatefulSet") == set(), "external PostgreSQL and Redis: nothing bundled"
    assert names(docs, "Deployment") == {
        "rb-runbookd-api", "rb-runbookd-worker-default", "rb-runbookd-worker-heavy", "rb-runbookd-beat"}
    assert names(docs, "DaemonSet") == {"rb-runbookd-worker-node"}
    assert names(docs, "Ingress") == {"rb-runbookd-api"}
    assert names(docs, "HorizontalPodAutoscaler") == {"rb-runbookd-api"}
    assert names(docs, "PodDisruptionBudget") == {
        "rb-runbookd-api", "rb-runbookd-worker-default", "rb-runbookd-worker-heavy"}
    assert names(docs, "NetworkPolicy") == {"rb-runbookd-api", "rb-runbookd-no-ingress"}


def test_production_values_pass_helm_lint(production_values: dict) -> None:
    assert_lint_clean(production_values)


def test_production_api_scales_with_hpa_behind_ingress(chart: Any, production_values: dict) -> None:
    docs = render(chart, production_values)
    api = find(docs, "Deployment", "rb-runbookd-api")
    assert "replicas" not in api["spec"], "the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler", "rb-runbookd-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rb-runbookd-api"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    ingress = find(docs, "Ingress", "rb-runbookd-api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "rb-runbookd-api", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "runbookd-tls"


def test_production_worker_pools_consume_their_queues(chart: Any, production_values: dict) -> None:
    docs = render(chart, production_values)
    heavy = find(docs, "Deployment", "rb-runbookd-worker-heavy")
    assert heavy["spec"]["replicas"] == 2
    pod = heavy["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["worker", "--queues", "heavy,captures", "--concurrency", "1"]
    assert pod["nodeSelector"] == {"runbookd.io/heavy": "true"}
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "4Gi"}
    selector = heavy["spec"]["selector"]["matchLabels"]
    assert selector["runbookd.io/worker-pool"] == "heavy"
    default = find(docs, "Deployment", "rb-runbookd-worker-default")
    assert default["spec"]["selector"]["matchLabels"]["runbookd.io/worker-pool"] == "default"
    pdb = find(docs, "PodDisruptionBudget", "rb-runbookd-worker-heavy")
    assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_production_connections_come_from_existing_secrets(chart: Any, production_values: dict) -> None:
    docs = render(chart, production_values)
    for workload, pod in pod_templates(docs):
        env = env_of(pod["spec"]["containers"][0])
        assert env["RUNBOOKD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "runbookd-connections", "key": "database-url"}, workload["metadata"]["name"]
        if workload["kind"] != "Job":
            assert env["RUNBOOKD_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": "runbookd-connections", "key": "redis-url"}
            assert env["RUNBOOKD_SLACK_SIGNING_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "runbookd-chat"
    secret = find(docs, "Secret", "rb-runbookd")
    assert secret["data"] == {}, "nothing secret is copied into the chart's Secret when existing ones are named"
    job = find(docs, "Job", "rb-runbookd-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_node_pool_profiles_only_when_asked(chart: Any, production_values: dict) -> None:
    docs = render(chart, production_values)
    node = find(docs, "DaemonSet", "rb-runbookd-worker-node")["spec"]["template"]["spec"]
    worker = node["containers"][0]
    assert node["hostPID"] is True
    assert worker["securityContext"]["capabilities"] == {"add": ["SYS_PTRACE"], "drop": ["ALL"]}
    assert worker["args"][:3] == ["worker", "--queues", "node-$(RUNBOOKD_NODE_NAME)"]
    assert env_of(worker)["RUNBOOKD_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert node["nodeSelector"] == {"runbookd.io/debuggable": "true"}

    quiet = copy.deepcopy(production_values)
    quiet["workers"]["nodePool"]["profiling"] = False
    quiet["workers"]["nodePool"]["extraQueues"] = ["local"]
    node = find(render(chart, quiet), "DaemonSet", "rb-runbookd-worker-node")["spec"]["template"]["spec"]
    assert "hostPID" not in node
    assert node["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert node["containers"][0]["args"][2] == "node-$(RUNBOOKD_NODE_NAME),local"


# --- properties of every configuration ---


@pytest.fixture(params=["default", "production"])
def any_docs(request: pytest.FixtureRequest, chart: Any, production_values: dict) -> list[dict[str, Any]]:
    return render(chart, production_values if request.param == "production" else None)


def test_every_pod_runs_non_root_on_a_read_only_root(any_docs: list[dict[str, Any]]) -> None:
    for workload, pod in pod_templates(any_docs):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, where
        assert pod["spec"]["automountServiceAccountToken"] is False, where
        for container in containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "privileged" not in security, where
            assert "resources" in container, where
            if workload["kind"] != "DaemonSet":
                assert "add" not in security["capabilities"], where
        mounts = {m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
        if workload["metadata"]["labels"].get("app.kubernetes.io/component") in APP_COMPONENTS:
            assert "/var/lib/runbookd" in mounts, f"{where}: RUNBOOKD_HOME must be writable"
        if workload["kind"] != "DaemonSet":
            assert "hostPID" not in pod["spec"], where


def test_every_resource_carries_the_standard_labels(any_docs: list[dict[str, Any]]) -> None:
    for doc in any_docs:
        labels = doc["metadata"]["labels"]
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/version"):
            assert key in labels, f"{doc['kind']} {doc['metadata']['name']} lacks {key}"


def test_app_pods_restart_when_config_or_secrets_change(chart: Any) -> None:
    def checksums(values: dict[str, Any] | None) -> dict[str, dict[str, str]]:
        sums = {}
        for workload, pod in pod_templates(render(chart, values)):
            if workload["metadata"]["labels"]["app.kubernetes.io/component"] in APP_COMPONENTS - {"migrate"}:
                annotations = pod["metadata"]["annotations"]
                sums[workload["metadata"]["name"]] = {k: v for k, v in annotations.items() if k.startswith("checksum/")}
        return sums

    base = checksums(None)
    assert set(base) == {"rb-runbookd-api", "rb-runbookd-worker-default", "rb-runbookd-beat"}
    assert all(set(sums) == {"checksum/config", "checksum/secret"} for sums in base.values())
    assert checksums(None) == base, "rendering twice must not roll the pods"
    config = checksums({"config": {"logLevel": "DEBUG"}})
    runbook = checksums({"runbooks": {"extra": {"id": "extra", "steps": []}}})
    secret = checksums({"secrets": {"slackSigningSecret": "s3cret"}})
    for name in base:
        assert config[name]["checksum/config"] != base[name]["checksum/config"]
        assert runbook[name]["checksum/config"] != base[name]["checksum/config"]
        assert secret[name]["checksum/secret"] != base[name]["checksum/secret"]
        assert secret[name]["checksum/config"] == base[name]["checksum/config"]


def test_runbooks_from_values_are_merged_over_the_shipped_ones(chart: Any) -> None:
    runbook = {"id": "disk-full", "title": "Disk full", "steps": [{"id": "df", "uses": "http.request"}]}
    docs = render(chart, {"runbooks": {"disk-full": runbook, "raw": "id: raw\nsteps: []\n"}})
    assert_valid_kubernetes(docs)
    configmap = find(docs, "ConfigMap", "rb-runbookd-runbooks")
    assert yaml.safe_load(configmap["data"]["disk-full.yaml"]) == runbook
    assert yaml.safe_load(configmap["data"]["raw.yaml"]) == {"id": "raw", "steps": []}
    pod = find(docs, "Deployment", "rb-runbookd-worker-default")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    # Shipped first, values last: a values runbook with a shipped id replaces it.
    script = init["command"][-1]
    assert script.index("/app/runbooks") < script.index("/extra-runbooks")
    assert env_of(pod["containers"][0])["RUNBOOKD_RUNBOOKS_DIR"]["value"] == "/var/lib/runbookd-runbooks"
    # Without runbooks in values the image's own directory (RUNBOOKD_RUNBOOKS_DIR in the image) is used.
    plain = find(render(chart), "Deployment", "rb-runbookd-worker-default")["spec"]["template"]["spec"]
    assert "initContainers" not in plain
    assert "RUNBOOKD_RUNBOOKS_DIR" not in env_of(plain["containers"][0])


def test_inline_external_urls_reach_the_pre_install_migration(chart: Any) -> None:
    url = "postgresql+psycopg://u:p@db.example.com:5432/runbookd"
    docs = render(chart, {
        "postgresql": {"deploy": False, "external": {"url": url}},
        "redis": {"deploy": False, "external": {"url": "redis://cache.example.com:6379/0"}},
    })
    assert_valid_kubernetes(docs)
    secret = find(docs, "Secret", "rb-runbookd")
    assert set(secret["data"]) == {"database-url", "redis-url"}
    # The release's Secret does not exist yet when pre-install hooks run: the Job has a hook Secret of its own.
    hook_secret = find(docs, "Secret", "rb-runbookd-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    job = find(docs, "Job", "rb-runbookd-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["RUNBOOKD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "rb-runbookd-migrate", "key": "database-url"}
    api = env_of(find(docs, "Deployment", "rb-runbookd-api")["spec"]["template"]["spec"]["containers"][0])
    assert api["RUNBOOKD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "rb-runbookd", "key": "database-url"}


def test_network_policies_fence_the_bundled_services(chart: Any) -> None:
    docs = render(chart, {"networkPolicy": {"enabled": True}})
    assert_valid_kubernetes(docs)
    assert names(docs, "NetworkPolicy") == {
        "rb-runbookd-api", "rb-runbookd-no-ingress", "rb-runbookd-postgresql", "rb-runbookd-redis"}
    postgres = find(docs, "NetworkPolicy", "rb-runbookd-postgresql")["spec"]
    assert postgres["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert postgres["ingress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]


def test_optional_knobs_render_valid_manifests(chart: Any) -> None:
    docs = render(chart, {
        "extraEnv": [{"name": "RUNBOOKD_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}],
        "extraEnvFrom": [{"secretRef": {"name": "more-settings"}}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podLabels": {"team": "sre"}, "podAnnotations": {"prometheus.io/scrape": "true"},
        "serviceAccount": {"create": False, "name": "runbookd-irsa"},
        "dataVolume": {"existingClaim": "runbookd-data"},
        "config": {"extraEnv": {"RUNBOOKD_REDIS_PREFIX": "rbd:", "RUNBOOKD_MAX_BODY_BYTES": 2048}},
        "service": {"type": "LoadBalancer", "annotations": {"a": "b"}},
        "ingress": {"enabled": True},
        "beat": {"enabled": False}, "migrations": {"enabled": False},
        "api": {"podDisruptionBudget": {"enabled": False}, "autoscaling": {"enabled": True}},
        "workers": {"pools": {"default": None, "io": {"queues": ["io"]}}},
    })
    assert_valid_kubernetes(docs)
    assert names(docs, "ServiceAccount") == set()
    assert names(docs, "Job") == set()
    assert names(docs, "Deployment") == {"rb-runbookd-api", "rb-runbookd-worker-io"}
    assert names(docs, "PodDisruptionBudget") == set(), "a pool added in values has no PDB unless it asks"
    io = find(docs, "Deployment", "rb-runbookd-worker-io")
    pod = io["spec"]["template"]
    assert io["spec"]["replicas"] == 1
    assert pod["spec"]["containers"][0]["args"] == ["worker", "--queues", "io"]
    assert pod["spec"]["serviceAccountName"] == "runbookd-irsa"
    assert pod["metadata"]["labels"]["team"] == "sre"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "runbookd-data"}} in pod["spec"]["volumes"]
    config = find(docs, "ConfigMap", "rb-runbookd-config")["data"]
    assert config["RUNBOOKD_MAX_BODY_BYTES"] == "2048"


# --- invalid values fail clearly ---


@pytest.mark.parametrize(("values", "message"), [
    ({"api": {"replicas": "two"}}, "/api/replicas"),
    ({"beat": {"replicas": 2}}, "/beat/replicas"),
    ({"workers": {"pools": {"io": {"replicas": 2}}}}, "queues"),
    ({"workers": {"pools": {"default": {"queues": "runbookd"}}}}, "/workers/pools/default"),
    ({"workers": {"nodePool": {"profiling": "yes"}}}, "/workers/nodePool/profiling"),
    ({"api": {"replica": 2}}, "replica"),
    ({"postgresql": {"deploy": "false"}}, "/postgresql/deploy"),
])
def test_schema_rejects_invalid_values(chart: Any, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)
    report = helm.lint(CHART, values, kube_version=f"v{KUBE_VERSION}")
    assert any(message in error for error in report["errors"]), report


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The chart minus values.schema.json, as with `helm install --skip-schema-validation`."""
    copy_dir = tmp_path_factory.mktemp("chart") / "runbookd"
    shutil.copytree(CHART, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as loaded:
        yield loaded


@pytest.mark.parametrize(("values", "message"), [
    ({"beat": {"replicas": 2}}, "beat.replicas must be 0 or 1"),
    ({"postgresql": {"deploy": False}}, "postgresql.external.url"),
    ({"redis": {"deploy": False}}, "redis.external.url"),
])
def test_templates_fail_clearly_even_without_the_schema(chart_without_schema: Any, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart_without_schema.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


def test_external_services_need_a_url(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"postgresql\.external\.url"):
        chart.render({"postgresql": {"deploy": False}}, name=RELEASE, namespace=NAMESPACE)


# --- documentation and packaging ---


def _key_paths(text: str) -> Iterator[tuple[tuple[str, ...], bool]]:
    """(path, documented) for every mapping key of a block-style values.yaml, list items skipped."""
    stack: list[tuple[int, str]] = []
    documented = False
    list_indent: int | None = None  # inside a list item's mapping until a key dedents past it
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("-"):
            list_indent = indent if list_indent is None else min(list_indent, indent)
            documented = False
            continue
        if list_indent is not None:
            if indent > list_indent:
                continue
            list_indent = None
        match = re.match(r"([A-Za-z0-9_.-]+):", stripped)
        if not match:
            documented = False
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(1)))
        yield tuple(key for _, key in stack), documented
        documented = False


def test_every_values_field_is_documented() -> None:
    paths = list(_key_paths((CHART / "values.yaml").read_text()))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = {path for path, has_doc in paths if has_doc}

    def is_leaf(path: tuple[str, ...]) -> bool:
        node: Any = values
        for key in path:
            node = node[key]
        return not isinstance(node, dict) or not node

    undocumented = [
        ".".join(path) for path, _ in paths
        if is_leaf(path) and not any(path[:i] in documented for i in range(1, len(path) + 1))
    ]
    assert undocumented == [], "values without a helm-docs `# --` comment"
    table = (CHART / "README.md").read_text()
    missing = [".".join(path) for path in documented if f"| {'.'.join(path)} |" not in table]
    assert missing == [], "the values table in helm/runbookd/README.md is out of date"


def test_values_schema_accepts_the_defaults_and_the_production_file(chart: Any, production_values: dict) -> None:
    chart.validate_schema({})
    chart.validate_schema(production_values)


def test_dockerfile_matches_the_chart() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2, "multi-stage build"
    uid = re.search(r"^ARG UID=(\d+)", dockerfile, re.M)
    assert uid and int(uid.group(1)) == values["podSecurityContext"]["runAsUser"]
    assert re.search(r"^USER \$\{UID\}", dockerfile, re.M), "the image must not run as root"
    assert re.search(r"^COPY runbooks /app/runbooks$", dockerfile, re.M)
    assert "RUNBOOKD_RUNBOOKS_DIR=/app/runbooks" in dockerfile
    assert "RUNBOOKD_HOME=/var/lib/runbookd" in dockerfile
    assert re.search(r'^ENTRYPOINT \["runbookd"\]', dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    assert not {"server", "workers", "runbooks", "pyproject.toml", "README.md"} & set(ignored)
