"""The training DAG: structure, an end-to-end `dag.test()` in a project copy, and a real
`airflow standalone` on loopback driven through its REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pipeline import io
from pipeline.ops import registry, tracking
from tests.conftest import BIN, REPO_ROOT, copy_project, free_port, run, use_small_params

UPSTREAM = {  # each task's upstream tasks: a chain, except that train and baselines both follow features
    "fetch_and_validate": set(),
    "ingest": {"fetch_and_validate"},
    "preprocess": {"ingest"},
    "features": {"preprocess"},
    "train": {"features"},
    "baselines": {"features"},
    "evaluate": {"train", "baselines"},
    "register": {"evaluate"},
    "gate_and_promote": {"register"},
}


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.initdb()


def load_dag(dags_folder: Path):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag("bookrec_training")


def test_dag_structure(airflow_db):
    dag = load_dag(REPO_ROOT / "dags")
    assert {task.task_id: set(task.upstream_task_ids) for task in dag.tasks} == UPSTREAM
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.doc_md, task.task_id
    assert dag.max_active_runs == 1 and dag.doc_md and not dag.catchup
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert dag.timetable.timetable.expression == "0 3 * * 1"
    assert "bookrec_raw_data" in str(dag.timetable.asset_condition)
    assert {"train.lr", "train.epochs"} <= set(dag.params)


def test_the_trigger_form_cannot_lower_a_gate_threshold(airflow_db):
    """The form offers no gate value, and a run whose conf sets one fails before any work (the
    gate's thresholds live in params.yaml alone)."""
    import importlib.util

    dag = load_dag(REPO_ROOT / "dags")
    assert not [key for key in dag.params if key.startswith("gate.")]
    spec = importlib.util.spec_from_file_location(
        "bookrec_dag_module", REPO_ROOT / "dags" / "bookrec_training.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.run_values({"train.lr": 0.001}) == {"train.lr": 0.001}
    for lowered in (
        {"gate.margin": 1.0},
        {"gate.min_coverage": 0.0},
        {"train.lr": 0.001, "gate.online_margin": 0.9},
    ):
        with pytest.raises(ValueError, match="gate thresholds live in params.yaml"):
            module.run_values(lowered)


@pytest.mark.slow
def test_dag_end_to_end_then_rerun_skips_data_stages(airflow_db, tmp_path, synthetic_bx, monkeypatch):
    root = copy_project(tmp_path / "project")
    use_small_params(root)
    run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"], root)
    monkeypatch.setenv("BOOKREC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")

    # The first run of `make up`: the gate's reference baselines only, then a model in production.
    first = load_dag(root / "dags").test(run_conf={"baselines.reference_only": True})
    states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    assert first.state == "success", states
    client = tracking.client(root)
    production = registry.production_version(client)
    assert production is not None
    versions = len(registry.list_versions(client))
    assert set(io.read_json(root / "reports" / "baselines.json")) == {"random", "popularity"}

    # The run `make up` starts next computes every baseline and evaluates again; nothing else reruns.
    completing = load_dag(root / "dags").test()
    assert completing.state == "success"
    results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in completing.get_task_instances()}
    assert [s for s in ("ingest", "preprocess", "features", "train") if not results[s]["skipped"]] == []
    assert results["baselines"]["ran"] == ["baselines"] and results["evaluate"]["skipped"] is False
    assert results["register"]["created"] is False
    assert {"itemknn_bm25", "als"} <= set(io.read_json(root / "reports" / "baselines.json"))
    assert {"ncf", "popularity", "als"} <= set(io.read_json(root / "reports" / "metrics.json"))

    second = load_dag(root / "dags").test()  # a fresh DAG object: conf must not leak between runs
    assert second.state == "success"
    results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in second.get_task_instances()}
    for stage in ("ingest", "preprocess", "features", "train", "baselines", "evaluate"):
        assert results[stage]["skipped"] is True, (stage, results[stage])
    assert results["register"]["created"] is False
    assert len(registry.list_versions(client)) == versions
    assert str(registry.production_version(client).version) == str(production.version)

    # A run with a form value that differs from params.yaml trains in a DVC experiment in a temporary
    # workspace: params.yaml is left as it was, the workspace's dvc.lock is not written at all, the
    # registered version records the value, and the next normal run has nothing to retrain.
    params_file, lock_file = root / "params.yaml", root / "dvc.lock"
    params_before, lock_before = (
        params_file.read_bytes(),
        (lock_file.read_bytes(), lock_file.stat().st_mtime_ns),
    )
    third = load_dag(root / "dags").test(run_conf={"train.epochs": 3})
    assert third.state == "success"
    results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in third.get_task_instances()}
    assert results["train"]["overrides"] == {"train.epochs": 3}
    assert results["baselines"]["skipped"] is True  # a new NCF never evaluates the baselines again
    assert params_file.read_bytes() == params_before
    assert (lock_file.read_bytes(), lock_file.stat().st_mtime_ns) == lock_before
    experiments = run(["dvc", "exp", "show", "--json"], root).stdout
    assert results["evaluate"]["experiment"] in experiments
    version = client.get_model_version(registry.MODEL_NAME, results["register"]["version"])
    assert results["register"]["created"] is True
    assert version.tags["dvc_experiment"] == results["evaluate"]["experiment"]
    assert client.get_run(version.run_id).data.params["epochs"] == "3"
    lock = run(["git", "show", f"{version.tags['dvc_experiment_rev']}:dvc.lock"], root).stdout
    assert "epochs: 3" in lock

    fourth = load_dag(root / "dags").test()
    assert fourth.state == "success"
    trained = [ti for ti in fourth.get_task_instances() if ti.task_id == "train"][0]
    assert trained.xcom_pull(task_ids="train")["skipped"] is True


@pytest.mark.slow
def test_real_airflow_standalone_runs_the_dag(tmp_path, synthetic_bx):
    root = copy_project(tmp_path / "project")
    use_small_params(root)
    run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"], root)
    home = tmp_path / "airflow-home"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"admin": "test-password"}))
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BOOKREC_ROOT": str(root),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "standalone.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "airflow"), "standalone"],
        env=env,
        cwd=root,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        token = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and token is None:
            try:
                answer = httpx.post(
                    f"{base}/auth/token", json={"username": "admin", "password": "test-password"}, timeout=5
                )
                if answer.status_code in (200, 201):
                    token = answer.json()["access_token"]
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert token, (tmp_path / "standalone.log").read_text()[-3000:]
        api = httpx.Client(
            base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        while time.monotonic() < deadline:
            if api.get("/dags", params={"dag_id_pattern": "bookrec_training"}).json().get("total_entries"):
                break
            time.sleep(2)
        assert api.get("/dags/bookrec_training").json()["is_paused"] is False  # active from the start
        for _ in range(5):  # SQLite metadata: the scheduler's writes can lock out the API server a moment
            triggered = api.post(
                "/dags/bookrec_training/dagRuns", json={"dag_run_id": "test_run", "logical_date": None}
            )
            if triggered.status_code < 500:
                break
            time.sleep(2)
        assert triggered.status_code == 200, triggered.text
        state = None
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            state = api.get("/dags/bookrec_training/dagRuns/test_run").json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(3)
        tasks = api.get("/dags/bookrec_training/dagRuns/test_run/taskInstances").json()["task_instances"]
        assert state == "success", [(t["task_id"], t["state"]) for t in tasks]
        assert registry.production_version(tracking.client(root)) is not None

        # New raw data (exported live feedback) is announced to Airflow and starts a run by itself.
        from pipeline.storage.feedback import FeedbackStore

        FeedbackStore.for_root(root).add("1000", "1000000011", 9)
        exported = run(
            ["bookrec", "feedback", "export"],
            root,
            env={"AIRFLOW_HOME": str(home), "BOOKREC_AIRFLOW_URL": base},
        )
        assert "started on the new data" in exported.stdout, exported.stdout
        runs = api.get("/dags/bookrec_training/dagRuns").json()["dag_runs"]
        asset_runs = [r for r in runs if r["run_type"] == "asset_triggered"]
        assert len(asset_runs) == 1 and asset_runs[0]["dag_run_id"] in exported.stdout
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            state = api.get(f"/dags/bookrec_training/dagRuns/{asset_runs[0]['dag_run_id']}").json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(3)
        assert state == "success", state  # the run that new data started went through to the end
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
