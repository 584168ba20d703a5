"""Building the kustomize overlays offline (``kubectl kustomize``) for the manifest tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBECTL = shutil.which("kubectl")
PROJECT_IMAGE = "fms-iot-collector"
SEED_SCHEDULES = {"batch-merger-hour": "1 * * * *", "batch-merger-day": "5 0 * * *", "batch-merger-week": "10 0 * * 1"}


def build(overlay: str, components: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The resources of ``k8s/<overlay>`` plus ``k8s/components/<c>`` as kustomize renders them."""
    assert KUBECTL is not None
    if not components:
        return _render(K8S / overlay)
    # kustomize takes only relative paths; a throwaway kustomization next to the overlays.
    with tempfile.TemporaryDirectory(prefix=".test-", dir=K8S) as tmp:
        rel = os.path.relpath(K8S, tmp)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"{rel}/{overlay}"],
            "components": [f"{rel}/components/{c}" for c in components],
        }
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return _render(Path(tmp))


def _render(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one resource of ``kind`` named ``name``."""
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload (None for other kinds)."""
    spec = resource.get("spec", {})
    if resource["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return spec["template"]["spec"]
    if resource["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return None


def project_workloads(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Workloads running the project's image."""
    out = []
    for r in resources:
        spec = pod_spec(r)
        if spec and any(c["image"].split(":")[0].endswith(PROJECT_IMAGE) for c in spec["containers"]):
            out.append(r)
    return out


def container_env(resources: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and literal ``env`` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(resources, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env
