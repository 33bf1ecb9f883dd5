"""`bookrec up` and `bookrec pipeline run`: the one-machine deployment, started by the project itself.

Airflow (standalone, SQLite metadata in `airflow_home/`), the MLflow UI (SQLite store in `mlruns/`),
the Streamlit dashboard and the REST API, each bound to 127.0.0.1, each in its own process group so
that Ctrl-C stops every process that was started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipeline.storage.secrets import api_token, api_token_file, write_secret_once

BIN = Path(sys.executable).parent
DAG_ID = "bookrec_training"
# The DAG's form value for the first run: the gate's reference baselines only (dags/bookrec_training.py).
REFERENCE_ONLY = "baselines.reference_only"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Service:
    name: str
    command: list[str]
    health_url: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None


def airflow_home(root: Path) -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or root / "airflow_home")


def admin_password(root: Path) -> str:
    """The Airflow admin password, generated once into airflow_home/passwords.json."""
    home = airflow_home(root)
    home.mkdir(parents=True, exist_ok=True)
    stored = write_secret_once(home / "passwords.json", json.dumps({"admin": secrets.token_urlsafe(12)}))
    return json.loads(stored)["admin"]


def airflow_env(root: Path) -> dict[str, str]:
    home = airflow_home(root)
    port = _port("BOOKREC_AIRFLOW_PORT", 8080)
    admin_password(root)
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "BOOKREC_ROOT": str(root),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": os.environ.get(
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}"
        ),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
    }


def _run(command: list[str], env: dict[str, str], cwd: Path, log) -> int:
    return subprocess.run(
        command, env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False
    ).returncode


def pipeline_run(root: Path, conf: dict | None = None, echo=print) -> int:
    """Run the whole training DAG once in the foreground (`airflow dags test`): the terminal shows one
    line per task with its duration and a progress bar while training; Airflow's own output goes to
    logs/pipeline.log (its last lines are shown when a task fails)."""
    from pipeline.ops.progress import ENV, ProgressView

    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    log_file, events = logs / "pipeline.log", logs / "pipeline-progress.jsonl"
    events.write_text("")
    env = airflow_env(root) | {ENV: str(events)}
    echo(f"Training DAG {DAG_ID} (full log: {log_file})")
    with log_file.open("w") as log, ProgressView(events, echo):
        status = _run([str(BIN / "airflow"), "db", "migrate"], env, root, log)
        if status == 0:
            command = [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf or {})]
            status = _run(command, env, root, log)
    if status != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        echo("\n".join(["The training DAG failed; the end of its log:", *tail, f"(all of it in {log_file})"]))
    return status


def has_production_model(root: Path) -> bool:
    from pipeline.ops import registry, tracking

    try:
        return registry.production_version(tracking.client(root)) is not None
    except Exception:  # a store that does not exist yet holds no model
        return False


def _common_env(root: Path) -> dict[str, str]:
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "BOOKREC_ROOT": str(root)}


def mlflow_service(root: Path) -> Service:
    port = _port("BOOKREC_MLFLOW_PORT", 5000)
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
    ]
    command += ["--default-artifact-root", (root / "mlruns" / "artifacts").as_uri()]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**_common_env(root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Service("mlflow", command, f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}", env)


def airflow_service(root: Path) -> Service:
    port = _port("BOOKREC_AIRFLOW_PORT", 8080)
    health = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    return Service(
        "airflow", [str(BIN / "airflow"), "standalone"], health, f"http://127.0.0.1:{port}", airflow_env(root)
    )


def dashboard_service(root: Path) -> Service:
    port = _port("BOOKREC_DASHBOARD_PORT", 8501)
    command = [str(BIN / "streamlit"), "run", str(root / "dashboard" / "app.py"), "--server.headless", "true"]
    command += [
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
    ]
    url = f"http://127.0.0.1:{port}"
    return Service("dashboard", command, f"{url}/_stcore/health", url, _common_env(root))


def api_service(root: Path) -> Service:
    port = _port("BOOKREC_API_PORT", 8000)
    command = [str(BIN / "bookrec"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    return Service("api", command, f"{url}/health", f"{url}/docs", _common_env(root))


def services(root: Path) -> list[Service]:
    """What `make up` starts, in this order, each on 127.0.0.1."""
    return [mlflow_service(root), airflow_service(root), dashboard_service(root), api_service(root)]


def _start(service: Service, root: Path, logs: Path) -> None:
    log = (logs / f"{service.name}.log").open("ab")
    service.process = subprocess.Popen(
        service.command,
        cwd=root,
        env={**os.environ, **service.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: one signal reaches all its children
    )


def _wait_healthy(service: Service, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            return False
        try:
            if httpx.get(service.health_url, timeout=2).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def stop(started: list[Service], grace: float = 30.0) -> None:
    for service in started:
        if service.process and service.process.poll() is None:
            os.killpg(service.process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for service in started:
        if service.process is None:
            continue
        try:
            service.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(timeout=10)


def up(root: Path, echo=print) -> int:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    api_token(root)  # made once, owner-only, before any service can need it
    started: list[Service] = []
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        waiting = services(root)
        first_run = not has_production_model(root)
        if first_run:
            # MLflow, the dashboard and the API start while the first training runs (they share no
            # database with `airflow dags test`, and the API and the dashboard serve `production` as
            # soon as the gate moves it); Airflow's own services start once the DAG test is done. The
            # baselines other than the gate's reference wait for the next run (started below).
            for service in [s for s in waiting if s.name != "airflow"]:
                _start(service, root, logs)
                started.append(service)
            echo("No production model yet: running the training DAG once (airflow dags test) ...")
            if pipeline_run(root, {REFERENCE_ONLY: True}, echo=echo) != 0:
                echo("The first training run failed: nothing stays running.")
                return 1
        for service in [s for s in waiting if s not in started]:
            _start(service, root, logs)
            started.append(service)
        for service in started:
            if not _wait_healthy(service, 180):
                echo(f"{service.name} did not become healthy; see {logs / (service.name + '.log')}")
                return 1
        echo("\nbookrec is up (Ctrl-C stops everything):")
        for service in started:
            echo(f"  {service.name:<10} {service.url}")
        echo(f"  Airflow login: user admin, password in {airflow_home(root) / 'passwords.json'}")
        echo(f"  API write token (Authorization: Bearer ...) in {api_token_file(root)}")
        echo(f"  logs in {logs}/")
        if first_run:
            echo(
                "The first run evaluated only the gate's reference baselines; "
                + trigger_run(root, "the other baselines and the full comparison")
            )
        while not stopping:
            for service in started:
                if service.process.poll() is not None:
                    echo(
                        f"{service.name} exited with status {service.process.returncode}; "
                        f"see {logs / (service.name + '.log')}. Stopping the others."
                    )
                    return 1
            time.sleep(1)
        return 0
    finally:
        echo("stopping ...")
        stop(started)


RAW_ASSET = "bookrec_raw_data"


def _run_ids(api: httpx.Client) -> set[str]:
    runs = api.get(f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    return {r["dag_run_id"] for r in runs.raise_for_status().json()["dag_runs"]}


def _new_run(api: httpx.Client, before: set[str], wait_seconds: float) -> str | None:
    """The id of a run that was not there `before`, once the scheduler has created one."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        created = _run_ids(api) - before
        if created:
            return sorted(created)[0]
        time.sleep(1)
    return None


def _airflow_api(root: Path, base: str) -> httpx.Client:
    """A client of the running Airflow's REST API, logged in as admin."""
    token = (
        httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": admin_password(root)}, timeout=5
        )
        .raise_for_status()
        .json()["access_token"]
    )
    return httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _airflow_url() -> str:
    return os.environ.get("BOOKREC_AIRFLOW_URL") or f"http://127.0.0.1:{_port('BOOKREC_AIRFLOW_PORT', 8080)}"


def trigger_run(root: Path, purpose: str, wait_seconds: float = 120) -> str:
    """Start a run of the training DAG in the running Airflow (for `purpose`), once its DAG processor
    has registered the DAG; what happened, to print."""
    base = _airflow_url()
    try:
        api = _airflow_api(root, base)
        deadline = time.monotonic() + wait_seconds
        while api.get(f"/dags/{DAG_ID}").status_code == 404 and time.monotonic() < deadline:
            time.sleep(1)
        created = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {}})
        run_id = created.raise_for_status().json()["dag_run_id"]
        return f"Airflow run {run_id} of {DAG_ID} computes {purpose} ({base})"
    except httpx.HTTPError as err:
        return f"Airflow at {base} did not start a run ({type(err).__name__}: {err}); `bookrec pipeline run` does it"


def notify_new_raw_data(root: Path, extra: dict | None = None, wait_seconds: float = 60) -> str:
    """Register an event on the raw-data Asset with the running Airflow, so that the training DAG runs.

    Returns what happened, for the CLI to print; an Airflow that is not running is not an error (the
    weekly run will pick the data up).
    """
    base = _airflow_url()
    passwords = airflow_home(root) / "passwords.json"
    if not passwords.is_file():
        return "Airflow has not been set up here (no airflow_home/passwords.json); run `make up`"
    try:
        api = _airflow_api(root, base)
        assets = api.get("/assets", params={"name_pattern": RAW_ASSET}).raise_for_status().json()["assets"]
        if not assets:
            return f"Airflow at {base} does not know the asset {RAW_ASSET} yet (DAG not parsed?)"
        before = _run_ids(api)
        api.post(
            "/assets/events", json={"asset_id": assets[0]["id"], "extra": extra or {}}
        ).raise_for_status()
        started = _new_run(api, before, wait_seconds)
        if started is None:
            return (
                f"Airflow at {base} notified, but no run of {DAG_ID} appeared within {wait_seconds:g} s "
                "(is the DAG paused? see the Airflow UI)"
            )
        return f"Airflow at {base} notified: run {started} of {DAG_ID} started on the new data"
    except httpx.HTTPError as err:
        return f"Airflow at {base} not reachable ({type(err).__name__}); the next scheduled run will use the new data"
