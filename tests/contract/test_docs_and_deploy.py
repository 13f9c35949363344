"""The README, compose file and Procfile agree with the code: every setting documented, the
run commands the same everywhere, the compose file valid and production-minded (no secret with
a published fallback, Redis behind a password, Flower behind basic auth)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from config.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(BOT_[A-Z_]+)` \|", readme(), re.MULTILINE))
    expected = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented == expected


def test_quick_start_is_two_commands_that_the_makefile_and_ci_run() -> None:
    quick_start = readme().split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(make \w+)", quick_start, re.MULTILINE)
    assert commands == ["make fleet", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^fleet:", makefile, re.MULTILINE) and re.search(
        r"^test:", makefile, re.MULTILINE
    )
    assert "make test" in (ROOT / ".ci/run").read_text()


def compose_services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


#: How the compose file must refer to the Redis password: required, no fallback.
REDIS_PASSWORD = "${REDIS_PASSWORD:?"


def test_compose_file_runs_redis_with_aof_noeviction_and_a_required_password() -> None:
    redis_command = compose_services()["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    # a ceiling, or the memory guard (BOT_REDIS_MEMORY_LIMIT_SHARE) is off
    assert redis_command[redis_command.index("--maxmemory") + 1].startswith("${REDIS_MAXMEMORY:-")
    assert redis_command[redis_command.index("--requirepass") + 1].startswith(REDIS_PASSWORD)


def test_every_redis_url_in_the_compose_file_carries_the_password() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    urls = re.findall(r"rediss?://\S+", text)
    assert urls, "the compose file names no Redis URL"
    assert all(url.startswith(f"redis://:{REDIS_PASSWORD}") for url in urls), urls
    for name in ("worker", "beat", "flower"):
        assert compose_services()[name]["environment"]["BOT_REDIS_URL"].startswith(
            f"redis://:{REDIS_PASSWORD}"
        )


def test_compose_flower_is_behind_basic_auth_with_a_required_cookie_secret() -> None:
    environment = compose_services()["flower"]["environment"]
    assert environment["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    # `:?` stops compose when it is unset; `:-` would fall back to a secret published here
    assert environment["FLOWER_COOKIE_SECRET"].startswith("${FLOWER_COOKIE_SECRET:?")
    assert ":-" not in environment["FLOWER_COOKIE_SECRET"]
    assert "FLOWER_UNAUTHENTICATED_API" not in environment
    assert all(port.startswith("127.0.0.1:") for port in compose_services()["flower"]["ports"])


def test_compose_worker_serves_metrics_on_the_compose_network() -> None:
    environment = compose_services()["worker"]["environment"]
    assert environment["BOT_METRICS_ADDR"] == "0.0.0.0"
    assert "ports" not in compose_services()["worker"]  # reachable by a Prometheus beside it


def test_readme_compose_instructions_set_every_required_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    production = readme().split("## Running in production", 1)[1].split("\n## ", 1)[0]
    assert required == {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "FLOWER_COOKIE_SECRET"}
    assert all(name in production for name in required)


def test_compose_procfile_and_readme_start_the_same_worker_and_flower() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    worker = " ".join(compose["worker"]["command"])
    assert worker == procfile["worker"] == "celery -A bot worker --autoscale=4,1 -l info"
    assert "celery -A bot worker --autoscale=MAX,MIN" in readme()
    assert " ".join(compose["flower"]["command"]).startswith("celery -A bot flower")
    assert procfile["flower"].startswith("celery -A bot flower")
    assert compose["worker"]["environment"]["BOT_REDIS_URL"].endswith("@redis:6379/0")


def test_dockerfile_installs_the_packages_the_compose_file_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("bot", "config", "tasks"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "USER bot" in dockerfile


def test_compose_procfile_readme_and_bot_up_start_the_same_beat() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    beat = " ".join(compose["beat"]["command"])
    assert beat == procfile["beat"] == "celery -A bot beat -l info"
    assert "`celery -A bot beat -l info`" in readme()
    assert '"beat", "-l", "info"' in (ROOT / "bot/cli/up.py").read_text()


def test_no_module_of_bot_is_over_the_400_lines_docs_architecture_promises() -> None:
    promise = "none is over 400 lines"
    assert promise in (ROOT / "docs" / "architecture.md").read_text()
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "bot").rglob("*.py")
    }
    assert {name: n for name, n in lengths.items() if n > 400} == {}
    assert len(lengths) > 50  # the walk found the package
