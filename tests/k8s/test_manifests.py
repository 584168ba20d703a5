"""The Kubernetes packaging, checked offline: kustomize builds, schema validation, security, schedules,
settings the code accepts, the deploy scripts and the image recipe."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from collector.topics import all_topics
from merger.__main__ import SCHEDULES, config_from_env
from settings import CollectorSettings, collector_settings
from storage.factory import StorageConfig
from tests.k8s.manifests import (
    K8S,
    KUBECTL,
    PROJECT_IMAGE,
    ROOT,
    SEED_SCHEDULES,
    build,
    container_env,
    find,
    pod_spec,
    project_workloads,
)

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

K8S_VERSION = "1.32.0"  # the cluster version the manifests target (kubectl here is v1.32)
COMPONENTS = ["gcs", "gcs-key", "servicemonitor", "grafana", "backfill"]
BUILDS = {
    "base": ("base", ()),
    "dev": ("overlays/dev", ()),
    "prod": ("overlays/prod", ()),
    "dev+all": ("overlays/dev", ("servicemonitor", "grafana", "backfill")),
    "prod+all": ("overlays/prod", ("servicemonitor", "grafana", "backfill")),
    "prod+gcs": ("overlays/prod", ("gcs",)),
    "prod+gcs-key": ("overlays/prod", ("gcs", "gcs-key", "backfill")),
}
CRD_GROUPS = ("monitoring.coreos.com/",)  # not in the Kubernetes schemas
SEED_CONFIG_NAMES = {"KAFKA_BROKERS", "KAFKA_TOPIC", "MINIO_ENDPOINT", "MINIO_BUCKET", "MINIO_SECURE"}
DUMMY_SECRETS = {"MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    overlay, components = BUILDS[request.param]
    return request.param, build(overlay, components)


def test_every_component_folder_is_built_by_some_test() -> None:
    on_disk = {p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml")}
    assert on_disk == set(COMPONENTS)
    assert on_disk <= {c for _, cs in BUILDS.values() for c in cs}


def test_every_resource_validates_against_the_kubernetes_schemas(built: tuple[str, list[dict[str, Any]]]) -> None:
    import kubernetes_validate

    name, resources = built
    assert resources, f"{name}: nothing rendered"
    for resource in resources:
        if resource["apiVersion"].startswith(CRD_GROUPS):
            continue
        where = f"{name}: {resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        assert resource["metadata"].get("namespace", "fms") == "fms", where


def test_secret_template_validates_and_holds_only_placeholders() -> None:
    import kubernetes_validate

    template = yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())
    kubernetes_validate.validate(template, K8S_VERSION, strict=True)
    assert set(template["stringData"]) == {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert set(template["stringData"].values()) == {"REPLACE_ME"}


def test_only_the_dev_overlay_ships_a_secret_and_it_is_marked_dev_only() -> None:
    for name, (overlay, components) in BUILDS.items():
        secrets = [r for r in build(overlay, components) if r["kind"] == "Secret"]
        if overlay == "overlays/dev":
            assert [s["metadata"]["name"] for s in secrets] == ["fms-secrets"]
            assert secrets[0]["metadata"]["labels"]["fms/dev-only"] == "true"
        else:
            assert not secrets, f"{name} would overwrite the operator's real Secret on every apply"


def test_every_pod_spec_is_locked_down(built: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = built
    workloads = [r for r in resources if pod_spec(r) is not None]
    assert len(project_workloads(resources)) >= 5, f"{name}: collector, 3 mergers and topic bootstrap expected"
    for resource in workloads:
        where = f"{name}: {resource['kind']}/{resource['metadata']['name']}"
        spec = pod_spec(resource)
        assert spec is not None
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        ours = resource in project_workloads(resources)
        if ours:
            assert pod.get("runAsUser") == 10001, where
            assert spec.get("serviceAccountName") == "fms", where
        for container in spec["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("privileged", False), where
            assert "limits" in container.get("resources", {}), where
            if ours:
                assert ctx.get("readOnlyRootFilesystem") is True, where
                assert ctx.get("runAsNonRoot") is True, where
                assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
                # Scratch space (temp files, merges) on an emptyDir since the root is read-only.
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], where


def test_cronjobs_run_the_seed_schedules_one_at_a_time(built: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = built
    cronjobs = {r["metadata"]["name"]: r for r in resources if r["kind"] == "CronJob"}
    assert {n: c["spec"]["schedule"] for n, c in cronjobs.items()} == SEED_SCHEDULES
    assert {f"batch-merger-{g.folder}": cron for g, cron in SCHEDULES.items()} == SEED_SCHEDULES
    timezone = find(resources, "ConfigMap", "fms-config")["data"]["PARTITION_TIMEZONE"]
    for job_name, cronjob in cronjobs.items():
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] > 0
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        assert spec["timeZone"] == timezone, f"{job_name}: keep timeZone equal to PARTITION_TIMEZONE"
        job = spec["jobTemplate"]["spec"]
        assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
        container = job["template"]["spec"]["containers"][0]
        grain = job_name.removeprefix("batch-merger-")
        assert container["command"] == ["python", "-m", "merger", grain]
        # The merger's whole-process budget stays below the memory limit.
        budget_mb = int(container_env(resources, container)["MERGER_MEMORY_MB"])
        assert budget_mb * 2**20 < _bytes(container["resources"]["limits"]["memory"]), job_name
        volumes = {v["name"]: v for v in job["template"]["spec"]["volumes"]}
        assert _bytes(volumes["tmp"]["emptyDir"]["sizeLimit"]) >= 2**30, f"{job_name}: scratch for merges"


def test_collector_deployment_probes_ports_and_graceful_termination(built: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = built
    deployment = find(resources, "Deployment", "realtime-collector")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["python", "-m", "collector"]
    env = container_env(resources, container)
    assert env["KAFKA_GROUP_ID"] == "fms-realtime-collector"
    default = CollectorSettings.model_fields["shutdown_timeout_seconds"].default
    shutdown = float(env.get("SHUTDOWN_TIMEOUT_SECONDS", default))
    assert spec["terminationGracePeriodSeconds"] > shutdown + 10, "the flush deadline must end before SIGKILL"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env.get("HTTP_PORT", "8080") == "8080"
    assert {p["containerPort"] for p in container["ports"]} == {8080}
    service = find(resources, "Service", "realtime-collector")
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = find(resources, "PodDisruptionBudget", "realtime-collector")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_topic_bootstrap_and_backfill_jobs(built: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = built
    job = find(resources, "Job", "topic-bootstrap")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    replication = "1" if "dev" in name else "3"
    assert command == ["python", "-m", "collector", "create-topics", "--replication", replication]
    backfill = [r for r in resources if r["kind"] == "Job" and r["metadata"]["name"] == "backfill-loader"]
    if "all" in name or "gcs-key" in name:
        spec = backfill[0]["spec"]
        assert spec["template"]["spec"]["restartPolicy"] == "OnFailure" and spec["backoffLimit"] > 0
        assert spec["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "backfill"]
    else:
        assert not backfill, "the backfill runs only when asked (deploy.sh --backfill)"


def test_configmap_uses_the_seed_names_and_the_code_accepts_it(built: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = built
    data = find(resources, "ConfigMap", "fms-config")["data"]
    assert "KAFKA_GROUP_ID" not in data, "the group id is per component"
    env = {**data, **DUMMY_SECRETS}
    if "gcs" in name:
        assert data["STORAGE_BACKEND"] == "gcs" and data["GCS_BUCKET"]
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)  # the key file exists only in the pod
    else:
        assert set(data) >= SEED_CONFIG_NAMES and data["STORAGE_BACKEND"] == "minio"
    for workload in project_workloads(resources):
        for container in pod_spec(workload)["containers"]:  # type: ignore[index]
            pod_env = {**container_env(resources, container), **DUMMY_SECRETS}
            pod_env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
            settings = collector_settings(pod_env)
            assert settings.kafka.kafka_brokers == data["KAFKA_BROKERS"]
            if container.get("command", [])[:3] == ["python", "-m", "merger"]:
                realtime = find(resources, "Deployment", "realtime-collector")
                collector_group = container_env(resources, pod_spec(realtime)["containers"][0])["KAFKA_GROUP_ID"]
                assert config_from_env(pod_env).group == collector_group, "markers follow the realtime group"
    assert StorageConfig.from_env(env).backend == data["STORAGE_BACKEND"]
    config_from_env(env)  # PARTITION_TIMEZONE, WEEK_START valid


def test_gcs_component_sets_workload_identity_or_mounts_the_key() -> None:
    resources = build("overlays/prod", ("gcs",))
    account = find(resources, "ServiceAccount", "fms")
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]
    resources = build("overlays/prod", ("gcs", "gcs-key"))
    data = find(resources, "ConfigMap", "fms-config")["data"]
    for workload in project_workloads(resources):
        if workload["metadata"]["name"] == "topic-bootstrap":
            continue
        spec = pod_spec(workload)
        assert spec is not None
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert data["GOOGLE_APPLICATION_CREDENTIALS"].rsplit("/", 1)[0] in mounts, workload["metadata"]["name"]


def test_dev_overlay_brings_kafka_in_kraft_mode_and_minio_with_its_console() -> None:
    resources = build("overlays/dev")
    kafka = find(resources, "StatefulSet", "kafka")
    env = {e["name"]: e.get("value") for e in pod_spec(kafka)["containers"][0]["env"]}  # type: ignore[index]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert find(resources, "Service", "kafka")["spec"]["ports"][0]["port"] == 9092
    assert {p["port"] for p in find(resources, "Service", "minio")["spec"]["ports"]} == {9000, 9001}
    data = find(resources, "ConfigMap", "fms-config")["data"]
    assert data["KAFKA_BROKERS"] == "kafka:9092" and data["MINIO_ENDPOINT"] == "minio:9000"


def test_prod_overlay_uses_external_services_and_more_collectors() -> None:
    resources = build("overlays/prod")
    assert not [r for r in resources if r["kind"] in ("StatefulSet", "PersistentVolumeClaim")]
    assert find(resources, "Deployment", "realtime-collector")["spec"]["replicas"] > 1
    smallest = min(t.partitions for t in all_topics() if not t.name.endswith(".dlq") and "alarm" not in t.name)
    assert find(resources, "Deployment", "realtime-collector")["spec"]["replicas"] <= smallest


def test_grafana_dashboard_charts_metrics_the_collector_exports() -> None:
    from collector.metrics import REGISTRY

    suffix = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {m.name + s for m in REGISTRY.collect() for s in suffix.get(m.type, [""])}
    resources = build("overlays/prod", ("grafana",))
    config_map = find(resources, "ConfigMap", "fms-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(next(iter(config_map["data"].values())))
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"\b(?:fms_|kafka_lag)[a-z_]+", queries))
    assert used <= exported, f"not exported by the collector: {sorted(used - exported)}"
    wanted = {"fms_messages_consumed_total", "fms_rows_written_total", "fms_dlq_records_total", "fms_alarms_total",
              "kafka_lag_max", "fms_newest_stored_event_timestamp_seconds", "fms_flush_latency_seconds_bucket",
              "fms_buffered_bytes", "fms_storage_up"}
    assert wanted <= used


def test_dockerfile_is_slim_non_root_and_installs_no_test_extras() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"python:3\.11[.\d]*-slim", text)
    assert "USER 10001" in text
    assert "PYTHONUNBUFFERED=1" in text and "RUST_BACKTRACE=0" in text
    assert "[test]" not in text and "requirements.lock" in text
    assert "tests" in (ROOT / ".dockerignore").read_text().split()


# -- deploy scripts ------------------------------------------------------------------------------


def _deploy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_deploy_sh_dry_run_prints_the_manifests_and_the_commands(overlay: str) -> None:
    done = _deploy(overlay, "--dry-run", env={"REGISTRY": "registry.example/fms", "TAG": "1.2.3"})
    assert done.returncode == 0, done.stderr
    resources = [d for d in yaml.safe_load_all(done.stdout) if d]  # commands are YAML comments
    deployment = find(resources, "Deployment", "realtime-collector")
    image = f"registry.example/fms/{PROJECT_IMAGE}:1.2.3"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    for command in (f"docker build -t {image}", f"docker push {image}", "kubectl apply -k",
                    "kubectl -n fms rollout status deployment/realtime-collector",
                    "kubectl -n fms logs -f deployment/realtime-collector",
                    "create job --from=cronjob/batch-merger-hour manual-merge-hour",
                    "port-forward svc/minio 9001:9001"):
        assert command in done.stdout, command


def test_deploy_sh_with_an_image_and_components_needs_no_docker() -> None:
    done = _deploy("prod", "--dry-run", "--backfill",
                   env={"IMAGE": "localhost:5000/fms:7", "COMPONENTS": "gcs,grafana", "DOCKER": "no-such-docker"})
    assert done.returncode == 0, done.stderr
    assert "docker build" not in done.stdout
    resources = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert find(resources, "Job", "backfill-loader")["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "localhost:5000/fms:7"
    assert find(resources, "ConfigMap", "fms-config")["data"]["STORAGE_BACKEND"] == "gcs"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"KUBECTL": "no-such-kubectl"}, [], "kubectl not found"),
        ({"DOCKER": "no-such-docker"}, ["dev"], "docker not found"),
        ({}, ["staging"], "unknown argument 'staging'"),
        ({"COMPONENTS": "nope"}, ["--dry-run"], "component k8s/components/nope not found"),
    ],
)
def test_deploy_sh_fails_with_one_clear_line(env: dict[str, str], args: list[str], message: str) -> None:
    done = _deploy(*args, env=env)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"deploy.sh: error: {done.stderr.split('error: ', 1)[1].strip()}"]
    assert message in done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_deploy_sh_is_shellcheck_clean() -> None:
    done = subprocess.run(["shellcheck", str(ROOT / "deploy.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_deploy_bat_takes_the_same_steps_as_deploy_sh() -> None:
    sh = (ROOT / "deploy.sh").read_text()
    raw = (ROOT / "deploy.bat").read_bytes()
    assert b"\r\n" in raw and raw.count(b"\n") == raw.count(b"\r\n"), "cmd.exe needs CRLF line endings"
    bat = raw.decode()
    steps = ["kustomize", "apply -k", "rollout status deployment/realtime-collector", "delete job topic-bootstrap",
             "delete job backfill-loader", "get secret fms-secrets", "build -t", "push", "kind load docker-image",
             "minikube image load", "logs -f deployment/realtime-collector",
             "create job --from=cronjob/batch-merger-hour manual-merge-hour", "port-forward svc/minio 9001:9001",
             "--dry-run", "--backfill", "../overlays/", "../components/", "newName:", "newTag:"]
    for step in steps:
        assert step in sh, f"deploy.sh: {step}"
        assert step in bat, f"deploy.bat: {step}"
    for overlay in ("dev", "prod"):
        assert f'"{overlay}"' in bat.lower() and overlay in sh
    sh_vars = set(re.findall(r"\$\{?([A-Z_]+)", sh)) & {"IMAGE", "REGISTRY", "TAG", "COMPONENTS", "ROLLOUT_TIMEOUT",
                                                         "KUBECTL", "DOCKER"}
    bat_vars = set(re.findall(r"defined ([A-Z_]+)", bat)) | set(re.findall(r"%([A-Z_]+)%", bat))
    assert sh_vars == {"IMAGE", "REGISTRY", "TAG", "COMPONENTS", "ROLLOUT_TIMEOUT", "KUBECTL", "DOCKER"}
    assert sh_vars <= bat_vars
    errors = ["kubectl not found", "docker not found", "unknown argument", "fms-secrets not found"]
    assert all(e in sh and e in bat for e in errors)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity.removesuffix(unit)) * factor)
    return int(quantity)
