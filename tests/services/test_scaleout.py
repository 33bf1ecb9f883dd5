"""The scale-out deployment. No Docker engine runs here, so docker-compose.yaml and the Dockerfile are
validated statically, while the services they hold run for real: PostgreSQL and Redis on loopback,
Airflow with its metadata in Postgres and the CeleryExecutor with one Celery worker, MLflow with its
backend store in Postgres, carrying the training DAG end to end to a `production` model."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import BIN, REPO_ROOT, copy_project, free_port, run, use_small_params

COMPOSE = REPO_ROOT / "docker-compose.yaml"
ONE_SHOT = {"minio-init", "airflow-init"}
CODE_SERVICES = {
    "mlflow",
    "api",
    "dashboard",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_passes_docker_compose_config(tmp_path):
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's when run as root)")
    env_file = tmp_path / ".env"
    shutil.copy(REPO_ROOT / ".env.example", env_file)
    done = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
    )
    assert missing.returncode != 0 and "in .env" in missing.stderr  # no secret has a default


def test_every_service_is_health_checked_and_gated(compose):
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert "healthcheck" in service, f"{name} has no health check"
    for name, service in compose["services"].items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule["condition"] == expected, (name, dependency)
    worker = compose["services"]["airflow-worker"]
    assert "ports" not in worker and "container_name" not in worker  # so that --scale works


def test_ports_are_published_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_no_secret_is_written_in_the_compose_file():
    text = COMPOSE.read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|FERNET|_KEY)\w*:", line) and not re.search(r"\$\{|\$\$|_FILE:", line):
            pytest.fail(f"a secret with a literal value: {line.strip()}")
    assert not re.search(r"://[^:/@\s]+:[^$@\s{]+@", text), "a password inside a URL"
    example = (REPO_ROOT / ".env.example").read_text()
    assert all(
        v.strip() in ("change-me", "change-me-at-least-8-chars")
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
        for v in [line.split("=", 1)[1]]
    )


def environment_variables_read_by_code() -> set[str]:
    found = set()
    for path in [
        *REPO_ROOT.glob("pipeline/**/*.py"),
        *REPO_ROOT.glob("dags/*.py"),
        *REPO_ROOT.glob("dashboard/**/*.py"),
    ]:
        found |= set(re.findall(r"os\.environ(?:\.get)?[\[(]\"([A-Z0-9_]+)\"", path.read_text()))
    return found


def test_every_environment_variable_the_code_reads_is_set(compose):
    read = environment_variables_read_by_code()
    # Only the one-machine launcher reads these (ports and Airflow home of `bookrec up`).
    launcher_only = {
        "BOOKREC_AIRFLOW_PORT",
        "BOOKREC_MLFLOW_PORT",
        "BOOKREC_DASHBOARD_PORT",
        "BOOKREC_API_PORT",
    }
    # torchrun sets these in the processes it starts (data-parallel training, pipeline/model/distributed.py)
    torchrun_sets = {"WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK"}
    # Airflow reads its own AIRFLOW__* settings; the project's code reads these:
    needed = read - launcher_only - torchrun_sets - {"PATH"}  # PATH is the image's own
    assert {"BOOKREC_ROOT", "MLFLOW_TRACKING_URI", "BOOKREC_FEEDBACK_URL"} <= needed
    for name in CODE_SERVICES - {"mlflow"}:
        environment = compose["services"][name]["environment"]
        for variable in needed - {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_HOME"}:
            assert variable in environment, (name, variable)
        if name.startswith("airflow"):
            assert {"AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR"} <= set(
                environment
            )


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(BIN / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed")
    done = subprocess.run(
        [hadolint, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE) and not re.search(
        r"(PASSWORD|SECRET)=", text
    )


# ---------------------------------------------------------------------------------------------------
# The same services, for real, without containers


def _wait(url: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(
        f"{url} did not answer within {timeout} s" + (f":\n{log.read_text()[-3000:]}" if log else "")
    )


@pytest.fixture
def postgres_and_redis(tmp_path):
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb or shutil.which("redis-server") is None:
        pytest.skip("PostgreSQL and Redis are not installed (make test installs them when run as root)")
    if os.geteuid() != 0 and shutil.which("su") is None:
        pytest.skip("PostgreSQL must run as a non-root user")
    bin_dir = Path(initdb[-1]).parent
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="bookrec-pg-"))
    base.chmod(0o777)
    data = base / "data"
    pg_port, redis_port = free_port(), free_port()

    def as_postgres(command: str) -> None:
        argv = (
            ["su", "postgres", "-s", "/bin/sh", "-c", command] if os.geteuid() == 0 else ["sh", "-c", command]
        )
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    as_postgres(f"{bin_dir}/initdb -D {data} -U bookrec --auth=trust -E UTF8")
    as_postgres(
        f"{bin_dir}/pg_ctl -D {data} -l {base}/pg.log -o '-c listen_addresses=127.0.0.1 -p {pg_port} "
        f"-k {base}' -w start"
    )
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        for database in ("airflow", "mlflow", "feedback"):
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(pg_port),
                    "-U",
                    "bookrec",
                    "-d",
                    "postgres",
                    "-c",
                    f"CREATE DATABASE {database}",
                ],
                check=True,
                capture_output=True,
            )
        yield {"postgres": f"bookrec@127.0.0.1:{pg_port}", "redis": f"redis://127.0.0.1:{redis_port}/0"}
    finally:
        redis.terminate()
        redis.wait(timeout=30)
        as_postgres(f"{bin_dir}/pg_ctl -D {data} -m fast -w stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.services
def test_training_dag_through_celery_postgres_and_mlflow_server(tmp_path, synthetic_bx, postgres_and_redis):
    from pipeline.ops import registry, tracking

    started_at = time.monotonic()
    pg, redis_url = postgres_and_redis["postgres"], postgres_and_redis["redis"]
    root = copy_project(tmp_path / "project")
    use_small_params(root)
    run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"], root)
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def start(name: str, command: list[str], env: dict) -> None:
        log = (logs / f"{name}.log").open("w")
        processes.append(
            subprocess.Popen(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    base_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "BOOKREC_ROOT": str(root)}
    mlflow_port, api_port = free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    start(
        "mlflow",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"postgresql+psycopg2://{pg}/mlflow",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    home = tmp_path / "airflow-home"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"admin": "scale-out-test"}))
    airflow_env = {
        **base_env,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "BOOKREC_FEEDBACK_URL": f"postgresql+psycopg2://{pg}/feedback",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}/airflow",
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{pg}/airflow",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "scale-out-test-jwt-secret-0123456789",
        "AIRFLOW__API__SECRET_KEY": "scale-out-test-secret-key",
        "AIRFLOW__CORE__FERNET_KEY": "Q0Q4UzJtQ3c2bE1pSGpQZ2JmSDJ2Z0VwWlBzN3d5Y1E=",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    try:
        _wait(f"{mlflow_url}/health", 90, logs / "mlflow.log")
        migrated = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            env=airflow_env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
        start(
            "api-server",
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(api_port)],
            airflow_env,
        )
        start("scheduler", [str(BIN / "airflow"), "scheduler"], airflow_env)
        start("dag-processor", [str(BIN / "airflow"), "dag-processor"], airflow_env)
        start("triggerer", [str(BIN / "airflow"), "triggerer"], airflow_env)
        start(
            "celery-worker",
            [str(BIN / "airflow"), "celery", "worker", "--concurrency", "2", "-H", "worker1@%h"],
            airflow_env,
        )
        _wait(f"http://127.0.0.1:{api_port}/api/v2/monitor/health", 180, logs / "api-server.log")
        token = httpx.post(
            f"http://127.0.0.1:{api_port}/auth/token",
            json={"username": "admin", "password": "scale-out-test"},
            timeout=10,
        ).json()["access_token"]
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}/api/v2",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        deadline = time.monotonic() + 180
        while not api.get("/dags", params={"dag_id_pattern": "bookrec_training"}).json().get("total_entries"):
            assert time.monotonic() < deadline, (logs / "dag-processor.log").read_text()[-3000:]
            time.sleep(2)
        assert api.patch("/dags/bookrec_training", json={"is_paused": False}).status_code == 200
        assert (
            api.post(
                "/dags/bookrec_training/dagRuns", json={"dag_run_id": "celery_run", "logical_date": None}
            ).status_code
            == 200
        )
        # Unpausing may also queue the latest weekly run first (max_active_runs = 1): wait for ours.
        deadline, state = time.monotonic() + 600, None
        while time.monotonic() < deadline:
            state = api.get("/dags/bookrec_training/dagRuns/celery_run").json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(3)
        tasks = api.get("/dags/bookrec_training/dagRuns/celery_run/taskInstances").json()["task_instances"]
        assert state == "success", [(t["task_id"], t["state"], t.get("hostname")) for t in tasks]
        assert {t["queue"] for t in tasks} == {"default"}  # every task went through the Celery queue
        worker_log = (logs / "celery-worker.log").read_text()
        assert "bookrec_training" in worker_log or "execute_workload" in worker_log
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
        try:
            production = registry.production_version(tracking.client(root))
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
        assert production is not None and production.tags["gate"] == "passed"
        print(f"scale-out DAG run, services included: {time.monotonic() - started_at:.0f} s")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
