"""The README, compose file and Procfile agree with the code: every setting documented, the
run commands the same everywhere, the compose file valid and production-minded."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_compose_file_runs_redis_with_aof_and_noeviction() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis_command = compose["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"


def test_compose_flower_is_behind_basic_auth_with_a_fixed_cookie_secret() -> None:
    flower = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert "FLOWER_COOKIE_SECRET" in flower["environment"]
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


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
    assert compose["worker"]["environment"]["BOT_REDIS_URL"] == "redis://redis:6379/0"


def test_dockerfile_installs_the_packages_the_compose_file_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("bot", "config", "tasks"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "USER bot" in dockerfile
