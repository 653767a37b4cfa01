"""The ready-made deployments, checked by the tools that read them: the Dockerfile by
hadolint and by running its CMD and HEALTHCHECK as written, compose.yaml against the
compose specification, the Kubernetes objects against Kubernetes' schemas, the systemd
unit by systemd-analyze, the alert rules by promtool (with unit cases), and every metric
the alerts and the Grafana dashboard name against a real proxy's /-/metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.requirements import Requirement

from proxy.app import ADMIN
from proxy.demo import _curl_lines

from .processes import serve
from .redisserver import RedisServer
from .test_credentials import DEMO_CONFIG, ROOT, Sandbox, sandbox  # noqa: F401 (the fixture)

BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "vendor-auth-proxy.service"
FILE_REF = re.compile(r"\$\{file:([^}]+)\}")
METRIC = re.compile(r"\bproxy_[a-z_]+\b")


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instruction(name: str) -> list[str]:
    return [args for which, args in dockerfile() if which == name]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/kubernetes/ but the kustomization, by (kind, name)."""
    objects = {}
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


def proxy_container() -> dict[str, Any]:
    deployment = manifests()["Deployment", "authproxy"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def cluster_routes() -> str:
    text: str = manifests()["ConfigMap", "authproxy-routes"]["data"]["routes.toml"]
    return text


def unit_entries() -> dict[str, list[str]]:
    """The systemd unit's keys (section.Key) and their values, repeats kept."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def seconds(text: str) -> float:
    number = re.fullmatch(r"(\d+)s?", text)
    assert number is not None, text
    return float(number.group(1))


# -- the image ---------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    """hadolint, the Dockerfile linter, passes it without a single finding."""
    result = subprocess.run(
        [BIN / "hadolint", "--no-color", ROOT / "Dockerfile"], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_image_runs_as_a_numeric_user_and_carries_its_labels() -> None:
    """USER is numeric (runAsNonRoot can check it) and not root; the OCI labels name the
    image, its licence and a version whose default is pyproject.toml's."""
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) == 10001
    assert gid in ("", "10001")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"VERSION={version}" in instruction("ARG")
    labels = dict(
        re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', " ".join(instruction("LABEL")))
    )
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert {"title", "source", "description"} <= {k.rsplit(".", 1)[1] for k in labels}


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns leave ``path`` out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        or (pattern.startswith("**/") and fnmatch.fnmatch(parts[i], pattern[3:]))
        for pattern in patterns
        for i, prefix in enumerate(prefixes)
    )


def test_the_build_context_holds_what_the_image_needs_and_nothing_else() -> None:
    """.dockerignore keeps the virtualenv, git, caches, tests and benchmark results out,
    and leaves in every file the Dockerfile installs."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "routes.toml",
        "proxy/__main__.py",
        "deploy/docker/ready.py",
        "demo/routes.toml",
    ]
    assert [p for p in needed if ignored(p, patterns)] == []
    for path in needed:
        assert (ROOT / path).exists(), path
    unwanted = [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "bench/results/latest.json",
        "proxy/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/v",
        ".coverage",
        "vendor_auth_proxy.egg-info/PKG-INFO",
    ]
    assert [p for p in unwanted if not ignored(p, patterns)] == []


def test_constraints_pin_every_runtime_dependency_at_the_tested_version() -> None:
    """constraints.txt is what deploy/constraints.py makes of this environment: every
    package the proxy needs at run time, pinned to the version these tests run, each pin
    allowed by pyproject.toml; and the image installs it."""
    sys.path.insert(0, str(DEPLOY))
    try:
        import constraints  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(DEPLOY))
    pins = constraints.runtime_pins(ROOT / "pyproject.toml")
    written = (ROOT / "constraints.txt").read_text()
    assert written == constraints.render(pins), (
        "run: python deploy/constraints.py > constraints.txt"
    )
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        assert requirement.specifier.contains(pins[requirement.name.lower()]), text
    runs = instruction("RUN")
    assert any("pip install -r constraints.txt" in run for run in runs)
    assert any("pip install -c constraints.txt ." in run for run in runs)


def image_command(args: str) -> list[str]:
    """A JSON-form CMD or HEALTHCHECK command, with the image's paths mapped to this tree:
    the /usr/local/bin/proxy-ready the Dockerfile installs is deploy/docker/ready.py."""
    command: list[str] = json.loads(args)
    install = "install -m 0755 deploy/docker/ready.py /usr/local/bin/proxy-ready"
    assert any(install in run for run in instruction("RUN"))
    if command[0] == "proxy-ready":
        return [sys.executable, str(DEPLOY / "docker" / "ready.py"), *command[1:]]
    return command


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run(command: list[str], env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(*command, env=env, cwd=ROOT)
    return await asyncio.wait_for(process.wait(), 10)


async def settled(base: str) -> dict[str, Any]:
    """/-/ready's body once /-/health answers and each credential's first token request has
    ended, either way."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(15):
        while True:
            try:
                async with session.get(base + "/-/health") as health:
                    up = health.status == 200
                async with session.get(base + "/-/ready") as answer:
                    body: dict[str, Any] = await answer.json()
            except aiohttp.ClientConnectionError:
                up = False
            if up and all(a["ready"] or a["consecutive_failures"] for a in body["auth"].values()):
                return body
            await asyncio.sleep(0.1)


async def test_the_image_command_and_health_check_work_as_written(
    sandbox: Sandbox,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The Dockerfile's CMD serves on $PROXY_PORT with the config at $PROXY_CONFIG, and
    its HEALTHCHECK passes once the tokens are there; against a proxy whose token endpoint
    fails, the check fails while /-/health still says ok."""
    (cmd,) = instruction("CMD")
    (check,) = instruction("HEALTHCHECK")
    assert "/-/ready" in (DEPLOY / "docker" / "ready.py").read_text()
    env_lines = " ".join(instruction("ENV"))
    assert "PROXY_PORT=8080" in env_lines
    assert "PROXY_CONFIG=/etc/proxy/routes.toml" in env_lines
    good = tmp_path / "good.toml"
    good.write_text(DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", sandbox.url))
    bad = tmp_path / "bad.toml"
    bad.write_text(
        DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", "http://127.0.0.1:9")
    )
    for config, ready in ((good, True), (bad, False)):
        port = free_port()
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PROXY_PORT": str(port),
            "PROXY_CONFIG": str(config),
        }
        server = await asyncio.create_subprocess_exec(
            *image_command(cmd), env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )
        try:
            health = image_command(check.rsplit("CMD", 1)[1].strip())
            # Settled: every token in hand, or every credential's first fetch failed.
            body = await settled(f"http://127.0.0.1:{port}")
            assert (body["status"] == "ready") is ready, body
            assert await run(health, env) == (0 if ready else 1)
        finally:
            server.terminate()
            await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                server.send_signal(signal.SIGINT)  # skips the 5 s drain: no balancer here
            await server.wait()


# -- compose -----------------------------------------------------------------------------


def test_compose_yaml_follows_the_compose_specification() -> None:
    """compose.yaml validates against the compose specification's schema."""
    result = subprocess.run(
        [
            BIN / "check-jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            ROOT / "compose.yaml",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_gives_the_demo_on_one_port() -> None:
    """`docker compose up` starts the sandbox and the proxies from this image, hardened as
    in Kubernetes, healthy only when ready, given the drain and grace to stop in; its
    header prints the demo's own curl lines for the port it publishes."""
    text = (ROOT / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    for line in _curl_lines("http://127.0.0.1:8080"):
        assert f"#   {line}" in text, line
    assert services["lb"]["ports"] == ["127.0.0.1:${DEMO_PORT:-8080}:8080"]
    assert {
        name: services["lb"]["depends_on"][name]["condition"] for name in ("proxy-1", "proxy-2")
    } == {
        "proxy-1": "service_healthy",
        "proxy-2": "service_healthy",
    }
    for name in ("sandbox", "proxy-1", "proxy-2"):
        service = services[name]
        assert service["build"] == "."
        assert (ROOT / "Dockerfile").exists()
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        for volume in service.get("volumes", []):
            assert (ROOT / volume.split(":")[0]).exists(), volume
    proxy = services["proxy-1"]
    assert proxy["healthcheck"]["test"] == [
        "CMD",
        *json.loads(instruction("HEALTHCHECK")[0].rsplit("CMD", 1)[1]),
    ]
    assert (
        proxy["environment"]["PROXY_PORT"] == proxy["command"][proxy["command"].index("--port") + 1]
    )
    assert seconds(proxy["stop_grace_period"]) >= 5 + 20
    sandbox_command = services["sandbox"]["command"]
    assert sandbox_command[:4] == ["python", "-m", "proxy", "sandbox"]
    assert f":{sandbox_command[sandbox_command.index('--port') + 1]}/-/sandbox/health" in str(
        services["sandbox"]["healthcheck"]["test"]
    )


async def test_the_compose_sandbox_health_check_works_as_written() -> None:
    """The sandbox service's health check, run as compose runs it, passes against the
    sandbox it starts (its port mapped to a free one)."""
    sandbox_service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["sandbox"]
    command = sandbox_service["command"]
    port = str(free_port())
    command[command.index("--port") + 1] = port
    check = [part.replace(":9000/", f":{port}/") for part in sandbox_service["healthcheck"]["test"]]
    assert check[0] == "CMD"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        outcomes = []
        for _ in range(50):
            outcomes.append(await run(check[1:], env))
            if outcomes[-1] == 0:
                break
            await asyncio.sleep(0.1)
        assert outcomes[-1] == 0, outcomes
    finally:
        server.terminate()
        await server.wait()


# -- Kubernetes --------------------------------------------------------------------------


def test_every_kubernetes_object_validates_against_the_kubernetes_schema() -> None:
    """Each object validates strictly (no unknown field) against Kubernetes' own schema,
    and the kustomization lists every manifest."""
    objects = manifests()
    assert {kind for kind, _ in objects} >= {"Deployment", "Service", "ConfigMap", "Secret"}
    for document in objects.values():
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_the_deployment_probes_and_hardening_match_the_proxy() -> None:
    """Two replicas; readiness on /-/ready, liveness and start-up on /-/health, all on
    the container port the config listens on; non-root 10001, read-only root, no
    capabilities; requests and limits; the config and secrets mounted where the command
    and routes.toml look; the Service targeting that port."""
    objects = manifests()
    deployment = objects["Deployment", "authproxy"]
    pod = deployment["spec"]["template"]["spec"]
    container = proxy_container()
    assert deployment["spec"]["replicas"] == 2
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"].rpartition(":")[2] == version
    (port,) = container["ports"]
    server_port = re.search(r"^port = (\d+)$", cluster_routes(), re.M)
    assert server_port is not None
    assert int(server_port.group(1)) == port["containerPort"]
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"] for kind in ("readiness", "liveness", "startup")
    }
    assert {k: v["path"] for k, v in probes.items()} == {
        "readiness": "/-/ready",
        "liveness": "/-/health",
        "startup": "/-/health",
    }
    assert all(v["port"] == port["name"] for v in probes.values())
    assert {"/-/ready", "/-/health"} <= set(ADMIN)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["routes"]["configMap"]["name"] == "authproxy-routes"
    config_arg = container["command"][container["command"].index("--config") + 1]
    assert config_arg == f"{mounts['routes']}/routes.toml"
    assert volumes["credentials"]["secret"]["secretName"] == "authproxy-credentials"
    assert mounts["tmp"] == "/tmp"
    assert "emptyDir" in volumes["tmp"]
    references = {Path(p) for p in FILE_REF.findall(cluster_routes())}
    assert {p.parent for p in references} == {Path(mounts["credentials"])}
    secret = objects["Secret", "authproxy-credentials"]
    assert {p.name for p in references} == set(secret["stringData"])
    service = objects["Service", "authproxy"]
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_cluster_config_passes_check_and_fits_the_termination_grace(tmp_path: Path) -> None:
    """The ConfigMap's routes.toml, with the Secret's files in place and the Deployment's
    environment, passes `python -m proxy check`; its drain_delay + shutdown_grace fit in
    terminationGracePeriodSeconds."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    mount = Path(FILE_REF.findall(cluster_routes())[0]).parent
    for name in manifests()["Secret", "authproxy-credentials"]["stringData"]:
        (secrets / name).write_text(f"dummy-{name}\n")
    config = tmp_path / "routes.toml"
    config.write_text(cluster_routes().replace(f"{mount}/", f"{secrets}/"))
    env = {e["name"]: e["value"] for e in proxy_container().get("env", [])}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    server = tomllib.loads(cluster_routes())["server"]
    pod = manifests()["Deployment", "authproxy"]["spec"]["template"]["spec"]
    assert (server["drain_delay"], server["shutdown_grace"]) == (5, 20)
    assert (
        pod["terminationGracePeriodSeconds"] >= server["drain_delay"] + server["shutdown_grace"] + 5
    )


# -- systemd -----------------------------------------------------------------------------


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing in the unit (its interpreter path pointed at
    this environment's, which verify requires to exist)."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/vendor-auth-proxy/bin/python", sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, cwd=tmp_path
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_unit_waits_for_readiness_reloads_and_stops_in_time() -> None:
    """Type=notify, reload by SIGHUP, a file limit, a stop timeout that covers drain and
    grace, a sandboxed non-root service, and credentials named as the Secret's."""
    entries = unit_entries()
    assert entries["Service.Type"] == ["notify"]
    assert entries["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert entries["Service.LimitNOFILE"] == ["65536"]
    assert seconds(entries["Service.TimeoutStopSec"][0]) >= 5 + 20 + 5
    assert entries["Service.KillMode"] == ["mixed"]
    for key in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert entries[f"Service.{key}"] == ["yes"], key
    assert entries["Service.ProtectSystem"] == ["strict"]
    assert entries["Service.CapabilityBoundingSet"] == [""]
    exec_start = shlex.split(entries["Service.ExecStart"][0])
    assert exec_start[1:4] == ["-m", "proxy", "serve"]
    credentials = {value.partition(":")[0] for value in entries["Service.LoadCredential"]}
    assert credentials == set(manifests()["Secret", "authproxy-credentials"]["stringData"])


# -- Prometheus and Grafana ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]]
)
def test_promtool_accepts_the_alert_rules_and_their_cases(argv: list[str]) -> None:
    """promtool checks the rules, and runs the cases in which each alert fires on the
    series that should raise it and none fires on a healthy proxy."""
    result = subprocess.run(
        ["promtool", *argv], capture_output=True, text=True, cwd=DEPLOY / "prometheus"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_what_an_operator_must_hear_of() -> None:
    """Token fetches failing, the state backend down, a high 5xx share, upstream 429s,
    rate-limit rejections and an instance down each have an alert."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    by_metric = " ".join(rule["expr"] for rule in rules)
    for needle in (
        'proxy_token_fetches_total{outcome!="ok"}',
        "proxy_state_up == 0",
        'status_class="5xx"',
        "proxy_upstream_retries_total",
        "proxy_limiter_rejections_total",
        "up{",
    ):
        assert needle in by_metric, needle


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "proxy.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert dashboard["uid"]
    assert len(queries) > 15
    return queries


async def test_every_metric_named_in_alerts_and_dashboard_is_exported(
    sandbox: Sandbox,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    """Each proxy_* name in alerts.yml and in the Grafana dashboard's queries is a series
    (or family) in the /-/metrics of a real proxy with Redis state serving the demo."""
    text = DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", sandbox.url)
    proxy = await serve(text, {"STATE_BACKEND": "redis", "REDIS_URL": redis_server.url})
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/travtus/messages/", "/travis/api/v1/road-events", "/nowhere"):
                async with session.get(proxy.url + path) as answer:
                    await answer.read()
            async with session.get(proxy.url + "/-/metrics") as answer:
                exposition = await answer.text()
    finally:
        await proxy.stop()
    exported = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            exported.update(name + s for s in suffixes.get(kind, []))
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    named = set(METRIC.findall((DEPLOY / "prometheus" / "alerts.yml").read_text()))
    named |= {name for query in dashboard_queries() for name in METRIC.findall(query)}
    assert len(named) > 15
    assert sorted(named - exported) == []


def test_the_grafana_dashboard_is_importable() -> None:
    """proxy.json is a dashboard Grafana imports: a title and uid, panels on the grid,
    each query against the chosen Prometheus data source."""
    dashboard = json.loads((DEPLOY / "grafana" / "proxy.json").read_text())
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 30
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[0] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert "$job" in target["expr"]
            assert "$instance" in target["expr"]
    dashboard_queries()
