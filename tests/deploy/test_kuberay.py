"""The KubeRay example (examples/kuberay-rayservice.yaml), checked by what reads it in a cluster.

- The RayService against KubeRay's own schema of the resource (deploy/kuberay/, vendored from KubeRay 1.7),
  with every field the schema does not declare rejected, as the API server's pruning would silently drop it.
- Its Serve config by Ray Serve's own schema; the application's args are vary's settings.
- Its catalogue (the ConfigMap) by vary's catalogue reader, and each model's deployment options by Serve.
- What makes it deployable: credentials from a Secret only, autoscaling in Serve and in the worker group, a
  securityContext with fsGroup, a GPU per worker with the GPU taint tolerated, probes that outlast a slow
  start, a drain before stopping, and grace periods of at least the longest request.
- Its PodMonitor relabels Ray's export as deploy/prometheus/prometheus.yml does, and selects these pods.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.tools import ROOT
from vary.settings import Settings

EXAMPLE = ROOT / "examples" / "kuberay-rayservice.yaml"
SCHEMA = json.loads((ROOT / "deploy" / "kuberay" / "rayservice-v1.schema.json").read_text())
# Names of settings whose values are credentials: they must come from a Secret, never a literal.
SECRET_NAMES = ("SECRET", "PASSWORD", "TOKEN", "DATABASE_URL", "KEY")


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected: every object that declares its properties, and does not
    preserve unknown fields, gets additionalProperties: false."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


VALIDATOR = jsonschema.Draft7Validator(strict(SCHEMA))


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(EXAMPLE.read_text())}


def service() -> dict[str, Any]:
    return documents()["RayService"]


def pods(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    found = {"head": cluster["headGroupSpec"]["template"]}
    found.update({group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]})
    return found


def errors(document: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(document)]


def test_the_rayservice_is_valid_against_kuberays_schema_with_unknown_fields_rejected() -> None:
    assert errors(service()) == []


@pytest.mark.parametrize(
    "path",
    [
        ("spec", "bogusField"),
        ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "minReplica"),  # a typo of minReplicas
        ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "envv"),
        ("spec", "rayClusterConfig", "autoscalerOptions", "idleTimeout"),
    ],
)
def test_the_schema_check_is_live(path: tuple[Any, ...]) -> None:
    broken = copy.deepcopy(service())
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = 1
    assert any(str(path[-1]) in error for error in errors(broken)), errors(broken)
    wrong_type = copy.deepcopy(service())
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert errors(wrong_type)


def test_its_serve_config_and_catalogue_are_what_ray_serve_and_vary_accept(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve")
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from vary.cluster.deployments import ModelReplica, _with_options, model_options
    from vary.service.catalogue import read_catalogue

    config = ServeDeploySchema.model_validate(yaml.safe_load(service()["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "vary.cluster.deployments:build"
    settings = Settings(**app.args)  # vary's own names, as `build` reads them
    assert settings.catalogue == Path("/etc/vary/catalogue.toml")
    mounts = {m["mountPath"]: m["name"] for m in pods(service())["head"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/etc/vary"] == "catalogue"

    (tmp_path / "catalogue.toml").write_text(documents()["ConfigMap"]["data"]["catalogue.toml"])
    catalogue = read_catalogue(tmp_path / "catalogue.toml")
    (model,) = catalogue.models
    options = model_options(model, settings, has_gpus=True)
    _with_options(serve.deployment(name="model")(ModelReplica), options, "the example")  # Serve's own check
    scaling = options["autoscaling_config"]
    # Sized for a model that loads for minutes: scale up soon, down late, never to zero (a cold start is minutes).
    assert scaling["min_replicas"] >= 1 and scaling["max_replicas"] > scaling["min_replicas"]
    assert scaling["downscale_delay_s"] >= 600 and scaling["upscale_delay_s"] <= 60
    assert scaling["target_ongoing_requests"] <= options["max_ongoing_requests"]
    assert options["ray_actor_options"]["num_gpus"] == 1
    (group,) = service()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["maxReplicas"] >= scaling["max_replicas"]  # a GPU worker for every replica Serve may ask for


def test_credentials_come_from_secrets_and_state_from_postgres_and_s3() -> None:
    for name, pod in pods(service()).items():
        (container,) = pod["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        for variable in ("VARY_DATABASE_URL", "VARY_SIGNING_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[variable]["valueFrom"], (name, variable)
        literal = [item["name"] for item in env.values() if "value" in item]
        assert not [v for v in literal if any(word in v for word in SECRET_NAMES)], literal
        assert env["VARY_STORAGE_URL"]["value"].startswith("s3://")
        # Every VARY_* variable is one of vary's settings.
        fields = {f"VARY_{field.upper()}" for field in Settings.model_fields}
        assert {v for v in env if v.startswith("VARY_")} <= fields
        # No shared volume for state: the data dir holds the usage spool only.
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        assert "emptyDir" in volumes["data"]


def test_autoscaling_security_gpus_probes_and_graceful_shutdown() -> None:
    from vary.cluster.deployments import REPLICA_ATTEMPTS, longest_request_seconds

    spec = service()["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] < group["maxReplicas"]
    for name, pod in pods(service()).items():
        context = pod["spec"]["securityContext"]
        assert context["fsGroup"] == 10001 and context["runAsUser"] == 10001 and context["runAsNonRoot"] is True
        (container,) = pod["spec"]["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container), name
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a slow image pull and Ray start
        assert {"name": "metrics", "containerPort": 8080} in container["ports"]
    worker = pods(service())["gpu"]["spec"]
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    # Liveness never depends on Serve: a model loading for minutes must not restart its pod.
    assert "8000" not in " ".join(container["livenessProbe"]["exec"]["command"])
    assert "/-/healthz" in " ".join(container["readinessProbe"]["exec"]["command"])
    # The drain: Ray drains the node, the proxy's health check fails, replicas finish their attempts.
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert "ray drain-node" in pre_stop and "ServeReplica" in pre_stop
    settings = Settings()
    one_attempt = longest_request_seconds(settings)
    assert worker["terminationGracePeriodSeconds"] >= one_attempt
    deadline = int(pre_stop.split("--deadline-remaining-seconds")[1].split()[0].rstrip(";"))
    assert one_attempt <= deadline <= worker["terminationGracePeriodSeconds"]
    # An upgrade's old cluster keeps serving at least its longest request (every attempt of it).
    assert spec["rayClusterDeletionDelaySeconds"] >= longest_request_seconds(settings, attempts=REPLICA_ATTEMPTS)
    # Serve judges the application over longer than a model's load.
    assert spec["deploymentUnhealthySecondThreshold"] >= 600


def test_the_first_admin_key_has_one_documented_command() -> None:
    header = EXAMPLE.read_text().split("apiVersion")[0]
    assert "vary keys create --name admin --admin" in header
    assert "-l app.kubernetes.io/name=vary,ray.io/node-type=head" in header
    for pod in pods(service()).values():
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "vary"


def test_the_podmonitor_relabels_as_the_scrape_config_and_selects_these_pods() -> None:
    monitor = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kuberay-podmonitor.yaml").read_text())
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in scrape["scrape_configs"] if job["job_name"] == "ray"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    (rule,) = endpoint["metricRelabelings"]
    (expected,) = job["metric_relabel_configs"]
    assert (rule["sourceLabels"], rule["regex"], rule["targetLabel"], rule["replacement"]) == (
        expected["source_labels"],
        expected["regex"],
        expected["target_label"],
        expected["replacement"],
    )
    selector = monitor["spec"]["selector"]["matchLabels"]
    for pod in pods(service()).values():
        assert selector.items() <= pod["metadata"]["labels"].items()
