"""The cluster definitions in clusters/: every YAML parses, the launcher configs pass Ray's own checks, and the
KubeRay manifests have what the CRDs require.

- Launcher configs (clusters/aws.yaml, clusters/gcp.yaml): validated against the cluster-config schema that ships
  inside the installed `ray` package (ray/autoscaler/ray-schema.json), and through the same
  `prepare_config` + `validate_config` that `ray up` runs (fills in the provider defaults; needs no cloud SDK).
- KubeRay manifests (clusters/kuberay/*.yaml): no KubeRay CRD is installed here, so RAYCLUSTER_SPEC below is a
  small hand-written JSON schema, NOT the CRD. It holds the fields the ray.io/v1 CRDs mark required (KubeRay
  1.x: headGroupSpec with its pod template; per worker group groupName and its pod template, and in older
  releases rayStartParams, minReplicas and maxReplicas; every container a name) plus what these manifests rely on
  (an image per container, nvidia.com/gpu limits on the workers, in-tree autoscaling, token auth).
"""
import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from search.cli import build_parser

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"
LAUNCHER = ["aws.yaml", "gcp.yaml"]
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"

_POD_TEMPLATE = {
    "type": "object", "required": ["spec"],
    "properties": {"spec": {
        "type": "object", "required": ["containers"],
        "properties": {"containers": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "required": ["name", "image"],
                      "properties": {"name": {"type": "string"}, "image": {"type": "string"},
                                     "resources": {"type": "object"}}}}}}},
}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
# The RayCluster spec (also RayJob.spec.rayClusterSpec): CRD-required fields and what this project needs.
RAYCLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "authOptions"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"const": True},
        "authOptions": {"type": "object", "required": ["mode"], "properties": {"mode": {"const": "token"}}},
        "headGroupSpec": {"type": "object", "required": ["rayStartParams", "template"],
                          "properties": {"rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE}},
        "workerGroupSpecs": {
            "type": "array", "minItems": 1,
            "items": {"type": "object",
                      "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                      "properties": {"groupName": {"type": "string"},
                                     "replicas": {"type": "integer", "minimum": 0},
                                     "minReplicas": {"type": "integer", "minimum": 0},
                                     "maxReplicas": {"type": "integer", "minimum": 1},
                                     "rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE}}},
    },
}
_OBJECT = {"apiVersion": {"const": "ray.io/v1"},
           "metadata": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}
RAYCLUSTER = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
              "properties": {**_OBJECT, "kind": {"const": "RayCluster"}, "spec": RAYCLUSTER_SPEC}}
RAYJOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
          "properties": {**_OBJECT, "kind": {"const": "RayJob"},
                         "spec": {"type": "object", "required": ["entrypoint", "rayClusterSpec", "backoffLimit"],
                                  "properties": {"entrypoint": {"type": "string"},
                                                 "runtimeEnvYAML": {"type": "string"},
                                                 "backoffLimit": {"type": "integer", "minimum": 1},
                                                 "submissionMode": {"enum": ["K8sJobMode", "HTTPMode"]},
                                                 "rayClusterSpec": RAYCLUSTER_SPEC}}}}
SEARCH_ENV = ("SEARCH_NAME", "SEARCH_DATA", "SEARCH_STORAGE", "SEARCH_ARGS")


def load(name: str):
    return yaml.safe_load((CLUSTERS / name).read_text())


def rayjob_parts() -> tuple[str, dict[str, str]]:
    """The RayJob's entrypoint and the env_vars of its runtime environment."""
    spec = load("kuberay/rayjob.yaml")["spec"]
    return spec["entrypoint"], yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]


def test_every_yaml_parses():
    files = sorted(CLUSTERS.rglob("*.yaml"))
    assert {f.relative_to(CLUSTERS).as_posix() for f in files} >= {
        "aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"}
    for f in files:
        documents = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), f


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_schema(name):
    config = load(name)
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does before touching the cloud


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_cpu_head_autoscaling_gpu_workers(name):
    config = load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "no trial may be scheduled on the head"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpu_types = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert len(gpu_types) >= 2
    for node_type in gpu_types.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"] <= config["max_workers"]
        # Each GPU carries enough CPUs for 4 trials at --gpus-per-trial 0.25 --cpus-per-trial 1.
        assert node_type["resources"]["CPU"] >= 4 * node_type["resources"]["GPU"]


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_installs_project_with_token_auth(name):
    config = load(name)
    assert config["file_mounts"]["~/gru4rec"] == "."
    assert ".gitignore" in config["rsync_filter"]  # never sync .venv/ to the nodes
    assert any("pip install" in c and "-e ~/gru4rec" in c for c in config["setup_commands"])
    assert any("optuna-dashboard" in c for c in config["head_setup_commands"])
    assert "~/.gru4rec-ray-auth" in config["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in config[key]), key
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-") and image.endswith("-gpu")


def test_launcher_storage_is_object_storage_reachable_by_workers():
    aws, gcp = load("aws.yaml"), load("gcp.yaml")
    for node_type in (v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]):
        assert "IamInstanceProfile" in node_type["node_config"]  # workers write checkpoints to S3
    for node_type in (v for k, v in gcp["available_node_types"].items() if k != gcp["head_node_type"]):
        accounts = node_type["node_config"]["serviceAccounts"]
        assert any("cloud-platform" in scope for a in accounts for scope in a["scopes"])


@pytest.mark.parametrize("name,schema", [("kuberay/raycluster.yaml", RAYCLUSTER), ("kuberay/rayjob.yaml", RAYJOB)])
def test_kuberay_manifest_has_required_fields(name, schema):
    manifest = load(name)
    jsonschema.validate(manifest, schema)
    spec = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no trial may be scheduled on the head"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            limits = container["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert int(limits["cpu"]) >= 4 * int(limits["nvidia.com/gpu"])


def test_rayjob_resumes_from_durable_storage_on_retry():
    entrypoint, env = rayjob_parts()
    assert set(SEARCH_ENV) <= set(env)
    assert re.match(r"^(s3|gs)://", env["SEARCH_STORAGE"])
    # One shell word for the submitter's `ray job submit -- <entrypoint>`: bash -c 'SCRIPT'.
    words = shlex.split(entrypoint)
    assert words[:2] == ["bash", "-c"] and len(words) == 3
    script = words[2]
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert re.search(r'if gru4rec-search status "\$SEARCH_NAME" --storage "\$SEARCH_STORAGE"', script)
    assert 'gru4rec-search resume "$SEARCH_NAME" --storage "$SEARCH_STORAGE"' in script
    assert "gru4rec-search run " in script and "--address auto" in script


def test_rayjob_search_args_are_accepted_by_the_cli():
    _, env = rayjob_parts()
    args = build_parser().parse_args(["run", "--name", "x", "--train", "a", "--valid", "b", "--train-full", "c",
                                      "--test", "d", "--address", "auto", *shlex.split(env["SEARCH_ARGS"])])
    assert args.trials == 200 and args.gpus_per_trial == 0.25 and args.max_concurrent


def test_kuberay_image_is_built_on_the_same_ray():
    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in dockerfile
    assert "pip install --no-cache-dir -e ." in dockerfile  # editable: search/ finds spaces/ next to it


def test_no_secrets_and_marked_placeholders():
    patterns = [r"AKIA[0-9A-Z]{16}", r"(?i)aws_secret_access_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}", r'"private_key"', r"(?i)password\s*[:=]"]
    for f in sorted(CLUSTERS.rglob("*")):
        if f.is_file():
            text = f.read_text()
            for pattern in patterns:
                assert not re.search(pattern, text), f"{f}: {pattern}"
    for name in [*LAUNCHER, "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]:
        assert "REPLACE_ME" in (CLUSTERS / name).read_text(), name  # what the user must fill in is marked


def test_readme_covers_the_issue():
    readme = (CLUSTERS / "README.md").read_text()
    for needle in ["ray up -y clusters/aws.yaml", "ray up -y clusters/gcp.yaml", "ray job submit", "--working-dir",
                   "kubectl apply -f clusters/kuberay/raycluster.yaml", "kubectl apply -f clusters/kuberay/rayjob.yaml",
                   "8265", "optuna-dashboard", "--gpus-per-trial", "GPU-hours", "--storage s3://", "--storage gs://",
                   "--address auto", "gru4rec-search resume"]:
        assert needle in readme, needle
