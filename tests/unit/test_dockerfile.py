"""The Dockerfile and .dockerignore: one small, pinned, non-root image whose entrypoint is the `cdi` console script.

No Docker daemon is needed: a small parser reads the Dockerfile's instructions (with line continuations), and each
check is a function that lists problems, so that the same checks are shown to catch a bad Dockerfile too.
"""

from __future__ import annotations

import importlib
import json
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdi_operator.cli import build_parser
from cdi_operator.controller.settings import OperatorSettings, WebhookSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DIGEST_PINNED = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
COMPILERS = re.compile(r"(?:^|\s)(?:gcc|g\+\+|clang|cc|make|build-essential|[\w.+-]+-dev(?:el)?)(?=\s|$)")
PACKAGE_INSTALL = re.compile(r"\b(?:apt-get|apt|apk|yum|dnf|microdnf)\s+(?:[-\w=]+\s+)*(?:install|add)\b(.*)")
SECRET_WORDS = frozenset(
    {"PASSWORD", "PASSWD", "PASS", "PWD", "SECRET", "SECRETS", "TOKEN", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
)
SECRET_FILES = (
    "*.pem",
    "*.key",
    "*.p8",
    "*.p12",
    "*.pfx",
    "*.jks",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    "*kubeconfig*",
    ".kube",
    ".env",
    ".env.*",
    "*credentials*",
    "*service-account*.json",
    ".netrc",
    ".pypirc",
    ".docker",
)


# --- a small Dockerfile parser -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (ENTRYPOINT ["cdi"]); None for the shell form."""
        if self.args.startswith("["):
            try:
                value = json.loads(self.args)
            except json.JSONDecodeError:
                return None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        return None

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """`--name=value` flags and the remaining words, shell or JSON form (COPY --from=builder a b /dest)."""
        leading = re.match(r"((?:--\S+\s+)*)(.*)", self.args, re.DOTALL)
        assert leading is not None
        flags = dict(flag[2:].partition("=")[::2] for flag in leading.group(1).split())
        rest = leading.group(2)
        words = Instruction(self.keyword, rest, self.line).exec_form() or shlex.split(rest)
        return flags, words


@dataclass
class Stage:
    image: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.of("ENV"):
            values.update(assignments(instruction))
        return values


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined; comments (also inside continuations) and blank lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[Stage]:
    """The stages, with `FROM ${ARG}` resolved to the default of the global ARG (what a plain build uses)."""
    result: list[Stage] = []
    defaults: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            _, words = instruction.flags_and_words()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), words[0])
            result.append(Stage(image=image, name=name, line=instruction.line))
        elif result:
            result[-1].instructions.append(instruction)
        else:
            assert instruction.keyword == "ARG", f"line {instruction.line}: {instruction.keyword} before FROM"
            defaults.update(assignments(instruction))
    return result


def assignments(instruction: Instruction) -> dict[str, str]:
    """The NAME=value pairs of an ENV/ARG/LABEL (also the legacy `ENV NAME value` form and a bare `ARG NAME`)."""
    words = shlex.split(instruction.args)
    if instruction.keyword == "ENV" and words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return {name: value for name, _, value in (word.partition("=") for word in words)}


def load(text: str) -> list[Stage]:
    return stages(parse_dockerfile(text))


# --- the checks: each returns its problems -------------------------------------------------------------------------


def unpinned_bases(all_stages: list[Stage]) -> list[str]:
    names = {stage.name for stage in all_stages if stage.name}
    return [
        f"line {stage.line}: FROM {stage.image} is not pinned by digest (IMAGE:TAG@sha256:<64 hex>)"
        for stage in all_stages
        if stage.image not in names and not DIGEST_PINNED.match(stage.image)
    ]


def user_problems(final: Stage) -> list[str]:
    users = final.of("USER")
    if not users:
        return ["the final stage sets no USER: the container would run as root"]
    user, _, group = users[-1].args.partition(":")
    problems = []
    if not user.isdigit() or int(user) == 0:
        problems.append(f"USER {users[-1].args}: use a numeric non-zero uid (runAsNonRoot can verify only those)")
    if group and (not group.isdigit() or int(group) == 0):
        problems.append(f"USER {users[-1].args}: use a numeric non-zero gid")
    return problems


def compiler_installs(stage: Stage) -> list[str]:
    problems = []
    for run in stage.of("RUN"):
        for match in PACKAGE_INSTALL.finditer(run.args):
            packages = match.group(1).split("&&")[0]
            problems += [f"line {run.line}: installs {m.strip()}" for m in COMPILERS.findall(" " + packages)]
    return problems


def final_copy_problems(all_stages: list[Stage], venv: str) -> list[str]:
    """The final stage may copy only the installed venv from the builder: no source tree, no build tools."""
    final, builders = all_stages[-1], {stage.name for stage in all_stages[:-1] if stage.name}
    problems = []
    for instruction in final.of("COPY") + final.of("ADD"):
        flags, words = instruction.flags_and_words()
        if instruction.keyword == "ADD" or flags.get("from") not in builders:
            problems.append(f"line {instruction.line}: the final stage copies {words[:-1]} from outside the builder")
        elif words[:-1] != [venv] or words[-1].rstrip("/") != venv:
            problems.append(f"line {instruction.line}: the final stage copies {words[:-1]}, not only {venv}")
    return problems


def is_secret_name(name: str) -> bool:
    return any(word in SECRET_WORDS for word in re.split(r"[^A-Za-z0-9]+", name.upper()))


def secret_settings(instructions: list[Instruction]) -> list[str]:
    """ENV and ARG (also the global ARGs before the first FROM) whose names look like secrets: both stay readable
    in the image's history."""
    return [
        f"line {instruction.line}: {instruction.keyword} {name} looks like a secret; mount it at build time instead"
        for instruction in instructions
        if instruction.keyword in ("ENV", "ARG")
        for name in assignments(instruction)
        if is_secret_name(name)
    ]


def is_secret_file(path: str) -> bool:
    return any(_glob(pattern).fullmatch(part) for part in path.split("/") for pattern in SECRET_FILES)


def context_copies(all_stages: list[Stage]) -> list[tuple[Instruction, list[str]]]:
    """(instruction, sources) of every COPY/ADD that reads the build context."""
    copies = []
    for stage in all_stages:
        for instruction in stage.of("COPY") + stage.of("ADD"):
            flags, words = instruction.flags_and_words()
            if "from" not in flags:
                copies.append((instruction, words[:-1]))
    return copies


def secret_copies(all_stages: list[Stage]) -> list[str]:
    problems = []
    for instruction, sources in context_copies(all_stages):
        for source in sources:
            if is_secret_file(source):
                problems.append(f"line {instruction.line}: copies {source}, which looks like a key or a kubeconfig")
            elif source.strip("/") in ("", "."):
                problems.append(f"line {instruction.line}: copies the whole build context; name what is needed")
    return problems


# --- .dockerignore, matched as Docker does ------------------------------------------------------------------------


def _glob(pattern: str) -> re.Pattern[str]:
    """Docker's (Go filepath.Match) pattern with `**`: `*` stays inside one path element, `**/` spans any."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i)) > i:
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def ignore_patterns(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: the last matching pattern decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = posixpath.normpath(pattern.removeprefix("!").strip().lstrip("/"))
        if any(_glob(body).fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return load(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(dockerfile: list[Stage]) -> Stage:
    return dockerfile[-1]


@pytest.fixture(scope="module")
def venv(final: Stage) -> str:
    (copy,) = final.of("COPY")
    _, words = copy.flags_and_words()
    return words[0].rstrip("/")


@pytest.fixture(scope="module")
def patterns() -> list[str]:
    return ignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))


# --- the image -----------------------------------------------------------------------------------------------------


def test_every_base_is_pinned_by_digest_and_both_stages_share_it(dockerfile: list[Stage]) -> None:
    assert len(dockerfile) >= 2, "a builder stage and a final stage"
    assert unpinned_bases(dockerfile) == []
    # The venv is built against the final stage's Python and libraries.
    assert {stage.image for stage in dockerfile} == {dockerfile[0].image}
    assert dockerfile[0].image.startswith("python:3.11-slim-bookworm@")


def test_the_base_is_a_build_argument_and_nothing_needs_a_registry_but_the_base() -> None:
    """hack/image.sh builds on a base made without a registry; a `# syntax=` line makes BuildKit fetch a frontend."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    froms = [i.args.split()[0] for i in parse_dockerfile(text) if i.keyword == "FROM"]
    assert froms and set(froms) == {"${BASE_IMAGE}"}


def test_no_stage_installs_a_compiler(dockerfile: list[Stage]) -> None:
    """Every dependency comes as a wheel; a compiler would only make the build slower and the builder bigger."""
    assert [problem for stage in dockerfile for problem in compiler_installs(stage)] == []


def test_the_image_runs_as_a_fixed_numeric_non_root_user(final: Stage) -> None:
    assert user_problems(final) == []
    assert final.instructions.index(final.of("USER")[-1]) > max(
        final.instructions.index(i) for i in final.of("RUN") + final.of("COPY")
    ), "USER comes after everything that needs root"


def test_the_user_is_the_one_the_chart_runs_as(final: Stage) -> None:
    values: dict[str, Any] = yaml.safe_load((REPO / "charts/cdi-operator/values.yaml").read_text(encoding="utf-8"))
    user, _, group = final.of("USER")[-1].args.partition(":")

    assert values["podSecurityContext"]["runAsUser"] == int(user)
    assert values["podSecurityContext"]["runAsGroup"] == int(group)
    created = " ".join(run.args for run in final.of("RUN"))
    assert f"--uid {user}" in created and f"--gid {group}" in created, "the user exists with that uid/gid"
    assert "nologin" in created


def test_the_final_stage_holds_the_venv_and_no_build_tools(dockerfile: list[Stage], final: Stage, venv: str) -> None:
    assert compiler_installs(final) == []
    assert final_copy_problems(dockerfile, venv) == []
    assert not any("pip install" in run.args for run in final.of("RUN"))


def test_the_builder_installs_the_project_without_dev_tools(dockerfile: list[Stage], venv: str) -> None:
    runs = " ".join(run.args for stage in dockerfile[:-1] for run in stage.of("RUN"))

    assert f"venv {venv}" in runs
    assert PYPROJECT["project"]["name"] in runs
    assert "[dev]" not in runs
    assert "--no-cache-dir" in runs or dockerfile[0].env().get("PIP_NO_CACHE_DIR") == "1"


def test_every_warehouse_client_is_a_dependency_not_an_extra() -> None:
    """The builder installs the project's dependencies only, so every client the runner needs must be one."""
    dependencies = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}

    for client in (
        "snowflake-connector-python",
        "redshift_connector",
        "google-cloud-bigquery",
        "databricks-sql-connector",
        "paramiko",
        "kopf",
    ):
        assert client in dependencies


def test_no_secret_reaches_a_layer(dockerfile: list[Stage]) -> None:
    assert secret_settings(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))) == []
    assert secret_copies(dockerfile) == []


def test_entrypoint_is_the_cdi_console_script_and_the_command_is_the_operator(final: Stage, venv: str) -> None:
    scripts = PYPROJECT["project"]["scripts"]
    (entrypoint,) = final.of("ENTRYPOINT")
    (cmd,) = final.of("CMD")

    assert entrypoint.exec_form() == ["cdi"], "exec form, so that signals reach the operator"
    assert "cdi" in scripts
    module, _, function = scripts["cdi"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    command = cmd.exec_form()
    assert command == ["operator"]
    assert build_parser().parse_args(command).command == "operator"
    # Runner pods give only args (`sync --in-cluster …`): `cdi` must be the venv's script, first on PATH.
    assert final.env()["PATH"].split(":")[0] == f"{venv}/bin"


def test_runtime_environment(final: Stage) -> None:
    env = final.env()

    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp"


def test_exposes_the_operators_metrics_and_webhook_ports(final: Stage) -> None:
    exposed = {int(port.split("/")[0]) for expose in final.of("EXPOSE") for port in expose.args.split()}

    assert OperatorSettings(runner_image="cdi-operator:test").metrics_port in exposed
    assert WebhookSettings().port in exposed


def test_oci_labels_name_the_project(final: Stage) -> None:
    labels: dict[str, str] = {}
    for label in final.of("LABEL"):
        labels.update(assignments(label))

    assert labels["org.opencontainers.image.title"] == PYPROJECT["project"]["name"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.source"].startswith("https://")


def test_every_file_the_dockerfile_copies_exists(dockerfile: list[Stage]) -> None:
    copies = context_copies(dockerfile)

    assert copies
    for instruction, sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"line {instruction.line}: {source} is not in the repository"


# --- .dockerignore -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "tests/unit/test_dockerfile.py",
        "benchmarks/results.md",
        "charts/cdi-operator/Chart.yaml",
        "hack/postgres.sh",
        "operator/cdi_operator/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/README.md",
        ".env",
        "deploy/.env",
        "deploy/.env.production",
        "snowflake_rsa.pem",
        "certs/tls.key",
        "keys/rsa_key.p8",
        "id_rsa",
        "home/.ssh/id_ed25519.pub",
        "kubeconfig",
        "ops/prod.kubeconfig",
        "ops/.kube/config",
        "gcp/service-account.json",
    ],
)
def test_dockerignore_keeps_secrets_and_clutter_out_of_the_context(patterns: list[str], path: str) -> None:
    assert ignored(patterns, path)


def test_dockerignore_keeps_what_the_image_is_built_from(patterns: list[str], dockerfile: list[Stage]) -> None:
    sent = []
    for _, sources in context_copies(dockerfile):
        for source in sources:
            root = REPO / source
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
            sent += [
                p.relative_to(REPO).as_posix()
                for p in files
                if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)
            ]

    assert "pyproject.toml" in sent
    assert [path for path in sent if ignored(patterns, path)] == []


# --- the checks catch what they are for ----------------------------------------------------------------------------

BAD_DOCKERFILE = """\
ARG REGISTRY_TOKEN
FROM python:3.11-slim AS builder
RUN apt-get update && apt-get install -y --no-install-recommends \\
    # comment lines inside a continuation are dropped
    gcc libpq-dev \\
 && rm -rf /var/lib/apt/lists/*
FROM python:3.11-slim-bookworm@sha256:0123
ARG GITHUB_TOKEN
ENV BRAZE_API_KEY=abc \\
    HOME=/root
ENV SNOWFLAKE_PASSWORD hunter2
COPY . /src
COPY --from=builder /root/.cache /root/.cache
COPY deploy/kubeconfig certs/tls.key /etc/cdi/
RUN apt-get install -y build-essential
USER root
ENTRYPOINT cdi
"""


def test_the_checks_catch_a_bad_dockerfile() -> None:
    bad = load(BAD_DOCKERFILE)

    assert [stage.image for stage in bad] == ["python:3.11-slim", "python:3.11-slim-bookworm@sha256:0123"]
    assert len(unpinned_bases(bad)) == 2
    assert user_problems(bad[-1]) != []
    assert user_problems(Stage("x", None, 1, [Instruction("USER", "10001:0", 1)])) != []
    assert compiler_installs(bad[0]) == ["line 3: installs gcc", "line 3: installs libpq-dev"]
    assert compiler_installs(bad[-1]) == ["line 15: installs build-essential"]
    assert len(final_copy_problems(bad, "/opt/venv")) == 3
    found = [problem.split(" ")[3] for problem in secret_settings(parse_dockerfile(BAD_DOCKERFILE))]
    assert found == ["REGISTRY_TOKEN", "GITHUB_TOKEN", "BRAZE_API_KEY", "SNOWFLAKE_PASSWORD"]
    assert len(secret_copies(bad)) == 3
    (entrypoint,) = bad[-1].of("ENTRYPOINT")
    assert entrypoint.exec_form() is None


@pytest.mark.parametrize("name", ["PATH", "HOME", "PIP_NO_CACHE_DIR", "PYTHONUNBUFFERED", "KEYBOARD_LAYOUT"])
def test_ordinary_settings_are_not_taken_for_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_dockerignore_matching_follows_docker() -> None:
    assert ignored(["*.pem"], "a.pem") and not ignored(["*.pem"], "certs/a.pem"), "`*` stays at the root"
    assert ignored(["**/*.pem"], "a.pem") and ignored(["**/*.pem"], "certs/deep/a.pem")
    assert ignored(["tests"], "tests/unit/x.py"), "a directory pattern covers what is inside"
    assert not ignored(["tests", "!tests/keep.py"], "tests/keep.py")
