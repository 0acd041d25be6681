"""The deployment files and the operations guide run real commands.

Every command in ``devops/Dockerfile``, ``devops/docker-compose.yml``,
``devops/k8s/*.yaml``, ``README.md`` and ``DISTRIBUTED.md`` that runs ``celery`` must
name the real app module and only options that ``celery -A pyworkflow.celery.app
<subcommand> --help`` lists. The files must also keep what the runtime relies on:
exec-form commands (so SIGTERM reaches Celery), workers on both queues, exactly one
beat, health checks, settings that ``Settings.from_env()`` accepts, and the same
commands everywhere.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyworkflow.celery.settings import STEP_QUEUE, WORKFLOW_QUEUE, Settings

ROOT = Path(__file__).resolve().parents[1]
DEVOPS = ROOT / "devops"
DOCKERFILE = DEVOPS / "Dockerfile"
COMPOSE = DEVOPS / "docker-compose.yml"
K8S_WORKER = DEVOPS / "k8s" / "worker.yaml"
K8S_BEAT = DEVOPS / "k8s" / "beat.yaml"
README = ROOT / "README.md"
GUIDE = ROOT / "DISTRIBUTED.md"

APP = "pyworkflow.celery.app"
QUEUES = {WORKFLOW_QUEUE, STEP_QUEUE}
WORKER = ["celery", "-A", APP, "worker", "--loglevel=info", "-Q", f"{WORKFLOW_QUEUE},{STEP_QUEUE}"]
BEAT = ["celery", "-A", APP, "beat", "--loglevel=info"]
FLOWER = ["celery", "-A", APP, "flower", "--port=5555"]
CANONICAL = {"worker": WORKER, "beat": BEAT, "flower": FLOWER}
METRICS_PORT = "9191"
DASHBOARD_PORT = "8787"

#: Options of the ``celery`` group itself that take a separate value.
GLOBAL_WITH_VALUE = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"}
#: Options of ``celery inspect`` that take a separate value.
INSPECT_WITH_VALUE = {"-t", "--timeout", "-d", "--destination"}
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}


# -- reading the files ---------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command line a deployment file or a document runs."""

    where: str
    argv: tuple[str, ...]
    exec_form: bool  # given as a list of arguments, not as a string for a shell
    main: bool  # the container's own process (not a health check, not a doc example)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined and comments
    dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerfile_exec(keyword: str) -> tuple[list[str] | None, str | None]:
    """The last ``keyword`` (CMD or ENTRYPOINT): its JSON array, or its shell string."""
    found = [rest for key, rest in dockerfile_instructions() if key == keyword]
    if not found:
        return None, None
    raw = found[-1]
    try:
        value = json.loads(raw)
    except ValueError:
        return None, raw
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value, None
    return None, raw


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file without services"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r} (has {sorted(services)})"
    return services[name]  # type: ignore[no-any-return]


@functools.cache
def k8s_documents(path: Path) -> tuple[dict[str, Any], ...]:
    docs = tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), f"{path.name}: not a manifest"
        assert doc.get("metadata", {}).get("name"), f"{path.name}: a {doc['kind']} without metadata.name"
    return docs


def all_k8s_documents() -> list[dict[str, Any]]:
    return [*k8s_documents(K8S_WORKER), *k8s_documents(K8S_BEAT)]


def deployment(path: Path) -> dict[str, Any]:
    found = [d for d in k8s_documents(path) if d["kind"] == "Deployment"]
    assert len(found) == 1, f"{path.name} must hold exactly one Deployment, found {len(found)}"
    return found[0]


def containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return dep["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def shell_script(argv: list[str]) -> str | None:
    """The script of ``sh -c SCRIPT``, else ``None``."""
    if len(argv) >= 3 and argv[0] in SHELLS and argv[1] == "-c":
        return argv[2]
    return None


def healthcheck_command(where: str, test: Any) -> Command:
    """A compose ``healthcheck.test``: ``[CMD, ...]``, ``[CMD-SHELL, script]`` or a string."""
    if isinstance(test, list) and test and test[0] == "CMD":
        return Command(where, tuple(test[1:]), exec_form=True, main=False)
    if isinstance(test, list) and test and test[0] == "CMD-SHELL":
        assert len(test) == 2, f"{where}: CMD-SHELL takes exactly one script"
        test = test[1]
    assert isinstance(test, str), f"{where}: unexpected healthcheck test {test!r}"
    # compose turns `$$` into `$` (the container's shell then expands it)
    return Command(where, tuple(shlex.split(test.replace("$$", "$"))), exec_form=False, main=False)


def probe_command(where: str, probe: dict[str, Any]) -> Command:
    argv = probe.get("exec", {}).get("command")
    assert isinstance(argv, list) and argv, f"{where}: an exec probe needs a command list"
    script = shell_script(argv)
    if script is not None:
        return Command(where, tuple(shlex.split(script)), exec_form=False, main=False)
    return Command(where, tuple(argv), exec_form=True, main=False)


def deployment_commands() -> list[Command]:
    """Every command the deployment files run, health checks included."""
    out: list[Command] = []
    entrypoint, entrypoint_shell = dockerfile_exec("ENTRYPOINT")
    cmd, cmd_shell = dockerfile_exec("CMD")
    if entrypoint_shell is not None:
        out.append(Command("Dockerfile ENTRYPOINT", tuple(shlex.split(entrypoint_shell)), False, True))
    if cmd_shell is not None:
        out.append(Command("Dockerfile CMD", tuple(shlex.split(cmd_shell)), False, True))
    if entrypoint is not None or cmd is not None:
        out.append(Command("Dockerfile ENTRYPOINT+CMD", tuple((entrypoint or []) + (cmd or [])), True, True))

    for name, svc in compose()["services"].items():
        for key in ("entrypoint", "command"):
            value = svc.get(key)
            if isinstance(value, list):
                out.append(Command(f"compose {name}.{key}", tuple(map(str, value)), True, True))
            elif isinstance(value, str):
                out.append(Command(f"compose {name}.{key}", tuple(shlex.split(value)), False, True))
        test = svc.get("healthcheck", {}).get("test")
        if test is not None:
            out.append(healthcheck_command(f"compose {name}.healthcheck", test))

    for path in (K8S_WORKER, K8S_BEAT):
        for doc in k8s_documents(path):
            if doc["kind"] != "Deployment":
                continue
            for c in containers(doc):
                where = f"{path.name} {doc['metadata']['name']}/{c['name']}"
                command, args = c.get("command", []), c.get("args", [])
                listed = isinstance(command, list) and isinstance(args, list)
                out.append(Command(f"{where} command+args", tuple(map(str, [*command, *args])), listed, True))
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe in c:
                        out.append(probe_command(f"{where} {probe}", c[probe]))
    return out


BASH_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_commands(path: Path) -> list[Command]:
    """The ``celery`` command lines in a Markdown file's ``bash`` blocks."""
    out: list[Command] = []
    for b, block in enumerate(BASH_BLOCK.findall(path.read_text()), 1):
        text = re.sub(r"\\\n\s*", " ", block)  # join continued lines
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip().removeprefix("$ ")
            if not line or line.startswith("#") or "celery" not in line:
                continue
            try:
                argv = shlex.split(line, comments=True)
            except ValueError:
                continue
            # `FOO=bar celery ...`, `exec celery ...`: the command starts at `celery`
            while argv and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]) or argv[0] == "exec"):
                argv = argv[1:]
            if argv[:1] == ["celery"] and "-A" in argv:
                out.append(Command(f"{path.name} bash block {b} line {n}", tuple(argv), exec_form=True, main=False))
    return out


# -- understanding a celery command line ---------------------------------------------


@dataclass(frozen=True)
class CeleryCall:
    app: str | None
    global_options: tuple[str, ...]
    sub: str
    args: tuple[str, ...]

    def options(self) -> list[str]:
        """The options after the subcommand, without their values (``--port=1`` -> ``--port``)."""
        return [a.split("=", 1)[0] for a in self.args if a.startswith("-") and a != "--"]

    def value(self, *names: str) -> str | None:
        for i, arg in enumerate(self.args):
            name, eq, value = arg.partition("=")
            if name in names:
                if eq:
                    return value
                if i + 1 < len(self.args):
                    return self.args[i + 1]
        return None


def parse_celery(argv: tuple[str, ...]) -> CeleryCall | None:
    """``celery [global options] SUBCOMMAND [args]`` (or ``python -m celery ...``)."""
    if argv[:1] == ("celery",):
        rest = list(argv[1:])
    elif len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ("-m", "celery"):
        rest = list(argv[3:])
    else:
        return None
    app, globals_, i = None, [], 0
    while i < len(rest) and rest[i].startswith("-"):
        name, eq, value = rest[i].partition("=")
        globals_.append(name)
        if name in GLOBAL_WITH_VALUE and not eq:
            i += 1
            assert i < len(rest), f"{name} without a value in {argv}"
            value = rest[i]
        if name in ("-A", "--app"):
            app = value
        i += 1
    assert i < len(rest), f"no subcommand in {' '.join(argv)}"
    return CeleryCall(app, tuple(globals_), rest[i], tuple(rest[i + 1 :]))


def _env() -> dict[str, str]:
    # The help output must not depend on the settings of whoever runs the suite.
    return {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}


@functools.cache
def celery_help(*sub: str) -> str:
    """``python -m celery -A pyworkflow.celery.app <sub...> --help``, run once per subcommand.

    Flower hands its arguments to Tornado, so its own options are listed by
    ``flower -- --help``.
    """
    args = [sys.executable, "-m", "celery", "-A", APP, *sub]
    args += ["--", "--help"] if sub == ("flower",) else ["--help"]
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args[1:])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@functools.cache
def module_imports(module: str) -> bool:
    """``importlib.import_module(module)`` succeeds, in a fresh interpreter: importing the
    app here would make it the process's installed app and change what ``start()`` sends
    with in the other tests."""
    code = f"import importlib; importlib.import_module({module!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"import {module} failed:\n{proc.stderr}"
    return True


def listed(option: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


@functools.cache
def inspect_methods() -> frozenset[str]:
    """The methods ``celery inspect --list`` names (``ping``, ``active`` …)."""
    args = [sys.executable, "-m", "celery", "-A", APP, "inspect", "--list"]
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"celery inspect --list failed:\n{proc.stderr}"
    return frozenset(re.findall(r"^\s{2}([a-z_]+)\b", proc.stdout, re.MULTILINE))


def check_celery_command(command: Command) -> CeleryCall:
    call = parse_celery(command.argv)
    assert call is not None, f"{command.where}: not a celery command: {command.argv}"
    assert call.app == APP, f"{command.where}: -A names {call.app!r}, the app is {APP!r}"
    assert module_imports(call.app), f"{command.where}: -A {call.app} does not import"

    top = celery_help()
    for option in call.global_options:
        assert listed(option, top), f"{command.where}: `celery {option}` is not a celery option"
    assert re.search(rf"^\s+{re.escape(call.sub)}\s", top, re.MULTILINE), (
        f"{command.where}: `celery {call.sub}` is not a celery subcommand"
    )
    if call.sub == "flower" and importlib.util.find_spec("flower") is None:
        pytest.skip("flower is not installed: `pip install flower` (it belongs in the test extra)")

    text = celery_help(call.sub)
    for option in call.options():
        assert listed(option, text), (
            f"{command.where}: {option} is not an option of `celery {call.sub}` "
            f"(see `celery -A {APP} {call.sub} --help`)"
        )
    level = call.value("-l", "--loglevel")
    if level is not None:
        choices = re.search(r"--loglevel \[([A-Z|]+)\]", text)
        assert choices and level.upper() in choices.group(1).split("|"), f"{command.where}: bad log level {level!r}"
    if call.sub == "inspect":
        positional = [
            a
            for i, a in enumerate(call.args)
            if not a.startswith("-") and not (i and call.args[i - 1] in INSPECT_WITH_VALUE)
        ]
        assert positional, f"{command.where}: `celery inspect` without a method"
        assert positional[0] in inspect_methods(), f"{command.where}: `inspect {positional[0]}` does not exist"
    return call


def celery_commands() -> list[Command]:
    try:
        commands = [c for c in deployment_commands() if parse_celery(c.argv) is not None]
    except FileNotFoundError:
        return []  # test_files_exist names what is missing
    for doc in (README, GUIDE):
        if doc.exists():
            commands += doc_commands(doc)
    return commands


def _ids(commands: list[Command]) -> list[str]:
    return [f"{c.where}: {' '.join(c.argv)}" for c in commands]


# -- the commands --------------------------------------------------------------------


def test_files_exist() -> None:
    for path in (DOCKERFILE, COMPOSE, K8S_WORKER, K8S_BEAT, GUIDE):
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


CELERY_COMMANDS = celery_commands()


@pytest.mark.parametrize("command", CELERY_COMMANDS, ids=_ids(CELERY_COMMANDS))
def test_celery_command_names_real_app_and_options(command: Command) -> None:
    check_celery_command(command)


def test_every_main_command_is_exec_form() -> None:
    """Exec form makes Celery PID 1: SIGTERM reaches it and starts a warm shutdown."""
    mains = [c for c in deployment_commands() if c.main]
    assert mains
    for command in mains:
        assert command.exec_form, f"{command.where} is a shell string; write it as a list: {command.argv}"
        assert command.argv[0] not in SHELLS, f"{command.where} runs a shell, which would swallow SIGTERM"


def test_health_checks_are_lists() -> None:
    for name in ("redis", "postgres", "worker"):
        test = service(name).get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"compose {name}: healthcheck {test!r}"
    for c in containers(deployment(K8S_WORKER)):
        for probe in ("livenessProbe", "readinessProbe"):
            assert isinstance(c[probe]["exec"]["command"], list)


def test_commands_are_the_same_everywhere() -> None:
    cmd, shell = dockerfile_exec("CMD")
    entrypoint, _ = dockerfile_exec("ENTRYPOINT")
    assert shell is None and cmd is not None, "the Dockerfile needs an exec-form CMD"
    assert (entrypoint or []) + cmd == WORKER, "the image's default command must be the worker command"
    for name, expected in CANONICAL.items():
        assert service(name)["command"] == expected, f"compose {name}.command differs from {' '.join(expected)}"
    for path, expected in ((K8S_WORKER, WORKER), (K8S_BEAT, BEAT)):
        (c,) = containers(deployment(path))
        assert [*c.get("command", []), *c.get("args", [])] == expected, f"{path.name}: command differs"


def test_workers_consume_both_queues() -> None:
    worker_commands = [
        c for c in deployment_commands() if c.main and (call := parse_celery(c.argv)) and call.sub == "worker"
    ]
    assert len(worker_commands) == 3, [c.where for c in worker_commands]  # Dockerfile, compose, k8s
    for command in worker_commands:
        call = parse_celery(command.argv)
        assert call is not None
        queues = call.value("-Q", "--queues")
        assert queues is not None, f"{command.where}: no -Q; the worker must consume {sorted(QUEUES)}"
        assert set(queues.split(",")) == QUEUES, f"{command.where}: consumes {queues}, not {sorted(QUEUES)}"


# -- the Dockerfile ------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    keys = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim"), instructions[0]
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    users = [rest for key, rest in instructions if key == "USER"]
    assert users, "the image must not run as root: add USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    assert keys.index("USER") < keys.index("CMD")
    runs = " ".join(rest for key, rest in instructions if key == "RUN")
    (extras,) = re.findall(r'pip install "\.\[([a-z,]+)\]"', runs) or [""]
    assert {"redis", "postgres", "metrics", "web"} <= set(extras.split(",")), (
        "install the package with its redis, postgres, metrics and web (dashboard) extras"
    )
    assert "flower" in runs, "install flower in the image"
    exposed = {port for key, rest in instructions if key == "EXPOSE" for port in rest.split()}
    assert {"5555", METRICS_PORT, DASHBOARD_PORT} <= exposed, exposed
    for key, rest in instructions:
        if key in ("COPY", "ADD"):
            sources = [a for a in shlex.split(rest) if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{key} {source}: no such path in the build context (the repo root)"


# -- docker-compose.yml --------------------------------------------------------------


def _seconds(duration: str | int) -> float:
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (what a bare ``up`` uses)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def test_compose_top_level() -> None:
    data = compose()
    assert "version" not in data, "the compose spec ignores `version:`; leave it out"
    assert set(data) <= {"name", "services", "volumes", "networks", "configs", "secrets"} | {
        k for k in data if k.startswith("x-")
    }
    assert {"redis", "postgres", "worker", "beat", "flower"} <= set(data["services"])


def test_compose_backing_services() -> None:
    redis, postgres = service("redis"), service("postgres")
    assert redis["image"] == "redis:7-alpine"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert postgres["image"] == "postgres:16-alpine"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    env = _environment(postgres)
    assert env.get("POSTGRES_HOST_AUTH_METHOD") == "trust" or env.get("POSTGRES_PASSWORD"), (
        "postgres needs a password (POSTGRES_PASSWORD) or trust auth"
    )


def test_compose_worker() -> None:
    worker = service("worker")
    assert worker.get("build"), "the worker is built from devops/Dockerfile"
    build = worker["build"]
    context = DEVOPS / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
    assert dockerfile.resolve() == DOCKERFILE.resolve(), f"the worker builds {dockerfile}, not {DOCKERFILE}"
    assert worker["deploy"]["replicas"] == 3
    assert "container_name" not in worker, "a fixed container_name cannot be replicated"
    for dependency in ("redis", "postgres"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy", dependency
    (ping,) = [c for c in deployment_commands() if c.where == "compose worker.healthcheck"]
    call = check_celery_command(ping)
    assert call.sub == "inspect" and "ping" in call.args
    assert call.value("-d", "--destination") == "celery@$HOSTNAME", "ping this container's own worker"
    assert _seconds(worker["healthcheck"]["timeout"]) > float(call.value("-t", "--timeout") or 1.0)
    assert _seconds(worker["stop_grace_period"]) >= 60, "give the warm shutdown time to finish running steps"
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"

    env = {k: _interpolate(v) for k, v in _environment(worker).items()}
    assert env["PYWORKFLOW_METRICS_PORT"] == METRICS_PORT, "each worker serves its metrics"
    assert env["PYWORKFLOW_BROKER_URL"] == "redis://redis:6379/0"
    assert re.fullmatch(r"postgresql://[^@/]+@postgres(:5432)?/\w+", env["PYWORKFLOW_STORAGE_URL"])
    assert env["PYWORKFLOW_IMPORTS"].strip()


def test_compose_beat_and_flower() -> None:
    beat = service("beat")
    assert beat.get("deploy", {}).get("replicas") == 1, "exactly one beat"
    assert "scale" not in beat
    assert beat["depends_on"]["redis"]["condition"] == "service_healthy"
    flower = service("flower")
    assert any(str(p).split(":")[-1] == "5555" for p in flower["ports"]), flower["ports"]


def test_compose_dashboard() -> None:
    """``pyworkflow dashboard`` on all of its container's interfaces, which the command
    refuses without a token: an opt-in profile whose token comes from the shell."""
    dashboard = service("dashboard")
    assert dashboard["profiles"] == ["dashboard"], "a bare `up` starts no dashboard that would need a token"
    command = dashboard["command"]
    assert command[:2] == ["pyworkflow", "dashboard"], command
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options == {"--host": "0.0.0.0", "--port": DASHBOARD_PORT}, options
    helped = subprocess.run(
        [str(Path(sys.executable).parent / "pyworkflow"), "dashboard", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and all(flag in helped.stdout for flag in options), helped.stdout
    token = _environment(dashboard)["PYWORKFLOW_DASHBOARD_TOKEN"]
    assert token == "${PYWORKFLOW_DASHBOARD_TOKEN:-}", "never a token written in the file"
    assert any(str(p).split(":")[-1] == DASHBOARD_PORT for p in dashboard["ports"]), dashboard["ports"]
    storage_url = _environment(service("worker"))["PYWORKFLOW_STORAGE_URL"]
    assert _environment(dashboard)["PYWORKFLOW_STORAGE_URL"] == storage_url


def test_compose_settings_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the containers get passes ``Settings.from_env()`` (the app checks it at import)."""
    for name in ("worker", "beat", "flower", "dashboard"):
        for key in list(os.environ):
            if key.startswith("PYWORKFLOW_"):
                monkeypatch.delenv(key)
        for key, value in _environment(service(name)).items():
            monkeypatch.setenv(key, _interpolate(value))
        settings = Settings.from_env()
        assert settings.broker_url.startswith("redis://")


# -- Kubernetes ----------------------------------------------------------------------


def _check_deployment_shape(dep: dict[str, Any]) -> None:
    assert dep["apiVersion"] == "apps/v1"
    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), "the selector must match the pod template's labels"
    pod = dep["spec"]["template"]["spec"]
    assert pod.get("securityContext", {}).get("runAsNonRoot") is True
    for c in pod["containers"]:
        assert c.get("image"), f"container {c['name']} without an image"
        assert isinstance(c.get("command"), list) and isinstance(c.get("args", []), list)


def _env_sources(dep: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """(ConfigMaps used, Secrets used, variable names set) by a Deployment's containers."""
    config_maps, secrets, names = set(), set(), set()
    for c in containers(dep):
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                config_maps.add(source["configMapRef"]["name"])
            if "secretRef" in source:
                secrets.add(source["secretRef"]["name"])
        for var in c.get("env", []):
            names.add(var["name"])
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
            if "configMapKeyRef" in ref:
                config_maps.add(ref["configMapKeyRef"]["name"])
    return config_maps, secrets, names


def _config_maps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in all_k8s_documents() if d["kind"] == "ConfigMap"}


def test_k8s_worker() -> None:
    dep = deployment(K8S_WORKER)
    _check_deployment_shape(dep)
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60, "give the warm shutdown time to finish running steps"
    (c,) = pod["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert probe in c, f"the worker needs a {probe}"
        command = probe_command(probe, c[probe])
        call = check_celery_command(command)
        assert call.sub == "inspect" and "ping" in call.args, f"{probe} must run `celery inspect ping`"
        assert call.value("-d", "--destination") == "celery@$HOSTNAME", f"{probe} must ping this pod's worker"
        assert c[probe].get("timeoutSeconds", 1) > float(call.value("-t", "--timeout") or 1.0)
    config_maps, secrets, names = _env_sources(dep)
    assert config_maps and config_maps <= set(_config_maps()), f"ConfigMaps {config_maps} are not defined"
    assert secrets, "the URLs carrying passwords come from a Secret"
    variables = names | {k for name in config_maps for k in _config_maps()[name]}
    assert {"PYWORKFLOW_BROKER_URL", "PYWORKFLOW_STORAGE_URL", "PYWORKFLOW_IMPORTS"} <= variables
    served = {_config_maps()[name].get("PYWORKFLOW_METRICS_PORT") for name in config_maps} - {None}
    assert served == {METRICS_PORT}, "each worker serves its metrics"
    assert {"name": "metrics", "containerPort": int(METRICS_PORT)} in c.get("ports", [])
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == METRICS_PORT


def test_k8s_beat() -> None:
    dep = deployment(K8S_BEAT)
    _check_deployment_shape(dep)
    assert dep["spec"]["replicas"] == 1, "exactly one beat"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "never two beats during a rollout"
    config_maps, _, names = _env_sources(dep)
    assert config_maps <= set(_config_maps())
    assert "PYWORKFLOW_BROKER_URL" in names | {k for name in config_maps for k in _config_maps()[name]}


def test_k8s_settings_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PYWORKFLOW_"):
            monkeypatch.delenv(key)
    for data in _config_maps().values():
        for key, value in data.items():
            assert isinstance(value, str), f"ConfigMap values are strings: quote {key}"
            monkeypatch.setenv(key, value)
    Settings.from_env()


URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")


def test_no_password_in_plain_text() -> None:
    for doc in all_k8s_documents():
        assert doc["kind"] != "Secret" or not (doc.get("data") or doc.get("stringData")), (
            "do not commit a Secret with values; create it with kubectl"
        )
        for value in _walk_strings(doc):
            assert not URL_WITH_PASSWORD.search(value), f"{doc['metadata']['name']}: a URL with a password: {value}"
        if doc["kind"] == "Deployment":
            for c in containers(doc):
                for var in c.get("env", []):
                    if re.search(r"PASSWORD|SECRET|TOKEN|_URL$", var["name"]):
                        assert "value" not in var, f"{var['name']} must come from a Secret (valueFrom.secretKeyRef)"


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)


def test_imports_module_exists() -> None:
    modules = {_environment(service("worker"))["PYWORKFLOW_IMPORTS"]}
    modules |= {data["PYWORKFLOW_IMPORTS"] for data in _config_maps().values() if "PYWORKFLOW_IMPORTS" in data}
    for module in sorted(modules):
        for name in module.split(","):
            path = ROOT / Path(*name.strip().split(".")).with_suffix(".py")
            if not path.exists():
                pytest.skip(f"PYWORKFLOW_IMPORTS names {name}, whose file {path.relative_to(ROOT)} is not written yet")
            assert module_imports(name.strip())  # as in the image: the repo root is /app, on PYTHONPATH


# -- README.md and DISTRIBUTED.md ----------------------------------------------------


def test_readme_commands_match_compose() -> None:
    if not README.exists():
        pytest.skip("README.md does not exist yet: its celery commands cannot be compared with the compose file")
    commands = doc_commands(README)
    if not commands:
        pytest.skip("README.md has no ```bash block with a `celery -A` command yet")
    by_sub: dict[str, list[list[str]]] = {}
    for command in commands:
        check_celery_command(command)
        call = parse_celery(command.argv)
        assert call is not None
        by_sub.setdefault(call.sub, []).append(list(command.argv))
    for sub in ("worker", "beat"):
        assert sub in by_sub, f"README.md shows no `celery -A {APP} {sub}` command"
    for sub, expected in CANONICAL.items():
        if sub in by_sub:
            assert expected in by_sub[sub], (
                f"README.md's {sub} command(s) {[' '.join(a) for a in by_sub[sub]]} differ from the compose file's "
                f"{' '.join(service(sub)['command'])}"
            )


def test_guide() -> None:
    text = GUIDE.read_text()
    shown = [list(c.argv) for c in doc_commands(GUIDE)]
    for expected in CANONICAL.values():
        assert expected in shown, f"DISTRIBUTED.md must show `{' '.join(expected)}` in a bash block"
    assert "## Performance" in text and "benchmarks/celery_e2e.py" in text
    settings_doc = importlib.import_module("pyworkflow.celery.settings").__doc__ or ""
    for variable in sorted(set(re.findall(r"PYWORKFLOW_[A-Z_]+", settings_doc))):
        assert f"`{variable}`" in text, f"DISTRIBUTED.md does not document {variable}"
    rest = re.sub(r"^## Performance\n.*?(?=^## |\Z)", "", text, flags=re.MULTILINE | re.DOTALL)
    assert not re.search(r"\bTODO\b|\bTBD\b|\bFIXME\b|\bXXX\b", rest), "no placeholders outside Performance"
