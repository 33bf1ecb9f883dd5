"""MLflow tracking and registry against a real SQLite-backed store in a temporary project:
lineage, the pyfunc round trip, the gate, promotion and rollback, faults, and REST scoring."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import io, stages
from pipeline.config import Workspace
from pipeline.ops import registry, tracking
from pipeline.storage.secrets import api_token
from tests.conftest import BIN, build_synthetic_project, free_port, mlflow_env, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_bx) -> Path:
    """A registry of its own: these tests move aliases."""
    return build_synthetic_project(tmp_path_factory.mktemp("registry") / "project", synthetic_bx)


@pytest.fixture(scope="module")
def client(project):
    return tracking.client(project)


def load_production(project):
    import mlflow

    tracking.use_store(project)
    return mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@production")


def test_production_version_carries_lineage_and_metrics(project, client):
    version = registry.production_version(client)
    assert version is not None and str(version.version) == "1"
    tags = version.tags
    lock = (project / "dvc.lock").read_text()
    for key in ("data:data/processed", "data:data/features", "data:models/ncf"):
        assert tags[key].endswith(".dir") and tags[key] in lock, key
    assert tags["data:data/raw"] in (project / "data.dvc").read_text()
    assert tags["git_commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert float(tags["metric.ndcg_at_10"]) > 0
    assert tags["gate"] == "passed"
    assert tags["split_fingerprint"].startswith("pair-hash-blake2b-v1:seed=42:")
    mlflow_run = client.get_run(version.run_id)
    assert mlflow_run.data.params["gmf_dim"] == "16"
    assert (
        "val_ndcg_at_10" in mlflow_run.data.metrics and "baseline.als.ndcg_at_10" in mlflow_run.data.metrics
    )
    assert mlflow_run.info.run_name.startswith(time.strftime("%Y-"))
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"plots", "metrics.json", "train_curve.csv"} <= artifacts


def test_pyfunc_equals_the_in_process_model_and_reproduces_test_metrics(project):
    from pipeline.serving.service import BookRecommender

    model = load_production(project)
    local = BookRecommender.from_folder(project / "models" / "ncf")
    users = local.users["user_id"].head(25).tolist()
    request = pd.DataFrame({"user_id": users, "k": 10})
    served = model.predict(request)
    assert list(served.columns) == ["user_id", "rank", "isbn", "score"]
    pd.testing.assert_frame_equal(served.reset_index(drop=True), local.recommend(users, 10))
    # exclude="train" reproduces the evaluation: same lists as the evaluator's NCF ranking on test
    ws, params = Workspace.load(project)
    items = io.read_parquet(ws.processed / "items.parquet")
    data = stages.evaluation_data(ws, params, "test")

    engine = local.bundle.recommender(data.train)
    top = data.lists(engine, np.arange(25), 10)
    through_registry = model.predict(request, params={"exclude": "train"})
    expected = items.set_index("item_idx").loc[top.ravel(), "isbn"].to_numpy()
    assert through_registry["isbn"].tolist() == expected.tolist()
    # read books never come back with exclude="all"
    read = set(local.items["isbn"].iloc[local.read_items(users[0])])
    assert not read & set(served.loc[served["user_id"] == users[0], "isbn"])


def test_pyfunc_similar_mode_cold_start_and_bad_input(project):
    model = load_production(project)
    similar = model.predict(pd.DataFrame({"isbn": ["1000000011"], "k": [5]}), params={"mode": "similar"})
    assert list(similar.columns) == ["isbn", "rank", "similar_isbn", "score"] and len(similar) == 5
    assert "1000000011" not in set(similar["similar_isbn"])
    stranger = model.predict(
        pd.DataFrame(
            {"user_id": ["no-such-user"], "k": [3], "age": [30.0], "location": ["madrid, madrid, spain"]}
        )
    )
    assert len(stranger) == 3  # cold start, not an error
    with pytest.raises(Exception, match="user_id"):
        model.predict(pd.DataFrame({"who": ["1000"]}))
    with pytest.raises(Exception, match="k must be between"):
        model.predict(pd.DataFrame({"user_id": ["1000"], "k": [0]}))
    with pytest.raises(Exception, match="unknown ISBN"):
        model.predict(pd.DataFrame({"isbn": ["nope"], "k": [3]}), params={"mode": "similar"})


def test_registering_the_same_model_again_creates_no_new_version(project, client):
    before = len(registry.list_versions(client))
    done = run(["bookrec", "register"], project)
    assert json.loads(done.stdout)["created"] is False
    assert len(registry.list_versions(client)) == before


def _retrain_as(project: Path, seed: int, epochs: int, lr: float | None = None, **overrides) -> None:
    from pipeline.config import load_params

    ws, params = Workspace.load(project)
    train = params.train.model_copy(
        update={
            "seed": seed,
            "epochs": epochs,
            "patience": epochs,
            "lr": lr or params.train.lr,
            "embedding_lr": lr or params.train.embedding_lr,
            **overrides,
        }
    )
    params = params.model_copy(update={"train": train})
    stages.train(ws, params, show_progress=False)
    stages.evaluate(ws, load_params(project))


@contextmanager
def wider_margins(project: Path, **margins: float):
    """params.yaml's gate section with these margins while the block runs."""
    path = project / "params.yaml"
    text = path.read_text()
    raw = yaml.safe_load(text)
    raw["gate"].update(margins)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(text)


def test_gate_refuses_a_worse_model_then_promotion_and_rollback(project, client):
    production_before = str(registry.production_version(client).version)
    # weights barely move from their random start, and no ItemKNN term to make up for them
    no_neighbourhood = Workspace.load(project)[1].train.neighbourhood.model_copy(update={"weights": (0.0,)})
    _retrain_as(project, seed=3, epochs=1, lr=1e-9, neighbourhood=no_neighbourhood)
    outcome = json.loads(run(["bookrec", "register"], project).stdout)
    assert outcome["gate"] == "refused" and outcome["promoted"] is False
    assert any(reason.startswith("FAIL: ndcg@10") for reason in outcome["reasons"])
    assert str(registry.production_version(client).version) == production_before
    refused = client.get_model_version(registry.MODEL_NAME, outcome["version"])
    assert refused.tags["gate"] == "refused" and "REFUSED" in refused.description

    # As good as production: another seed. On these 233 test readers a paired interval is about
    # +-0.009 wide, so margins for this data are wider than the real data's (where 12,952 readers make
    # it +-0.001): the gate reads them from params.yaml, and records them.
    _retrain_as(project, seed=4, epochs=12)
    with wider_margins(project, margin=0.02, coverage_margin=0.05, novelty_margin=0.05):
        outcome = json.loads(run(["bookrec", "register"], project).stdout)
    assert outcome["gate"] == "passed", outcome["reasons"]
    # the decision is recorded as structured tags: thresholds, references, differences, readers
    tags = client.get_model_version(registry.MODEL_NAME, outcome["version"]).tags
    assert json.loads(tags["gate_thresholds"])["margin"] == 0.02  # the margin in force when it decided
    assert json.loads(tags["gate_references"])["production"] == production_before
    compared = json.loads(tags["gate_comparisons"])
    assert compared[0]["reference"] == production_before and compared[0]["ndcg"]["method"] == "paired t"
    assert compared[0]["ndcg"]["low"] <= compared[0]["ndcg"]["estimate"] <= compared[0]["ndcg"]["high"]
    assert int(tags["gate_readers"]) == compared[0]["ndcg"]["units"] > 0
    assert str(registry.production_version(client).version) == outcome["version"]
    aliases = client.get_registered_model(registry.MODEL_NAME).aliases
    assert str(aliases["previous"]) == production_before

    done = run(["bookrec", "registry", "rollback", "--reason", "test rollback"], project)
    assert json.loads(done.stdout)["production"] == production_before
    assert str(client.get_registered_model(registry.MODEL_NAME).aliases["previous"]) == outcome["version"]
    listed = run(["bookrec", "registry", "list"], project).stdout
    assert "production" in listed and "previous" in listed
    # promoting by hand overrides the gate: it needs the API token and a reason, both recorded
    token = api_token(project)  # the deployment's token (made on first use, owner-only)
    refused = run(
        ["bookrec", "registry", "promote", outcome["version"], "--reason", "back again", "--token", "wrong"],
        project,
        check=False,
    )
    assert refused.returncode == 1 and "wrong API token" in refused.stderr
    assert str(registry.production_version(client).version) == production_before
    run(
        ["bookrec", "registry", "promote", outcome["version"], "--reason", "back again", "--token", token],
        project,
    )
    assert str(registry.production_version(client).version) == outcome["version"]
    last = registry.serving_history(client)[-1]
    assert last["by"].startswith("gate override") and last["reason"] == "back again"
    assert (
        json.loads(client.get_model_version(registry.MODEL_NAME, outcome["version"]).tags["gate_override"])[
            "reason"
        ]
        == "back again"
    )


def test_rollback_after_a_hand_move_of_the_alias_returns_to_what_served_before(project, client):
    """Production moved by hand (as in the MLflow UI: straight through the client, bypassing bookrec):
    the move is recorded, and rollback returns to the version that served before it."""
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{registry.MODEL_NAME}'"))
    assert len(versions) >= 2
    serving = str(registry.production_version(client).version)
    other = str(next(v for v in versions if str(v) != serving))
    client.set_registered_model_alias(registry.MODEL_NAME, "production", other)  # by hand
    listed = run(["bookrec", "registry", "history"], project).stdout
    assert "outside bookrec" in listed.splitlines()[-1] and other in listed.splitlines()[-1]
    done = json.loads(
        run(["bookrec", "registry", "rollback", "--reason", "hand move was wrong"], project).stdout
    )
    assert done["production"] == serving == str(registry.production_version(client).version)
    moves = registry.serving_history(client)
    assert [m["version"] for m in moves[-2:]] == [other, serving]
    assert moves[-1]["by"] == "bookrec registry rollback" and moves[-1]["reason"] == "hand move was wrong"
    assert any(m["by"] == "the promotion gate" for m in moves)


def test_faults_leave_production_where_it_was(project, client, tmp_path):
    production = str(registry.production_version(client).version)
    # an unreachable registry
    done = run(
        ["bookrec", "register"], project, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, check=False
    )
    assert done.returncode == 1 and "error:" in done.stderr and "Traceback" not in done.stderr
    # a corrupt weights file
    broken = tmp_path / "broken"
    shutil.copytree(project / "models" / "ncf", broken)
    (broken / "weights.safetensors").write_bytes(b"not a safetensors file")
    from pipeline.storage.bundle import BundleError, load_bundle

    with pytest.raises(BundleError, match="cannot load the weights"):
        load_bundle(broken)
    (broken / "items.parquet").unlink()
    with pytest.raises(BundleError, match="missing items.parquet"):
        load_bundle(broken)
    # promoting a version that does not exist
    done = run(
        ["bookrec", "registry", "promote", "999", "--reason", "r", "--token", api_token(project)],
        project,
        check=False,
    )
    assert done.returncode == 1 and "error:" in done.stderr
    assert str(registry.production_version(client).version) == production


def test_mlflow_models_serve_answers_invocations(project):
    port = free_port()
    env = {**mlflow_env(project), "PATH": f"{BIN}:/usr/bin:/bin"}
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{registry.MODEL_NAME}@production",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=project,
        env={**__import__("os").environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 90 s")
        body = {"dataframe_split": {"columns": ["user_id", "k"], "data": [["1000", 3], ["1001", 3]]}}
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["rank"] for p in predictions] == [1, 2, 3, 1, 2, 3]
        similar = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            timeout=30,
            json={"dataframe_records": [{"isbn": "1000000011", "k": 2}], "params": {"mode": "similar"}},
        )
        assert similar.status_code == 200 and len(similar.json()["predictions"]) == 2
        bad = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": [{"who": 1}]}, timeout=30
        )
        assert 400 <= bad.status_code < 500
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_version_carries_its_code_changed_code_elsewhere_does_not_change_it(project, tmp_path):
    """Register a version, change the scoring formula in a copy of the code, load the old version from
    there: its predictions are exactly what they were (it runs the code it was registered with)."""
    import shutil
    import sys
    import textwrap

    from tests.conftest import REPO_ROOT

    copy = tmp_path / "changed"
    shutil.copytree(REPO_ROOT / "pipeline", copy / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    ncf = copy / "pipeline" / "model" / "ncf.py"
    source = ncf.read_text()
    assert "        return scores\n" in source
    ncf.write_text(
        source.replace("        return scores\n", "        return -scores  # a changed formula\n", 1)
    )
    probe = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import pandas as pd
        import pipeline
        assert pipeline.__file__.startswith({str(copy)!r}), pipeline.__file__
        from pipeline.ops import registry, tracking
        from pipeline.serving.service import BookRecommender
        import mlflow
        tracking.use_store(Path({str(project)!r}))
        model = mlflow.pyfunc.load_model(f"models:/{{registry.MODEL_NAME}}/1")
        users = pd.DataFrame({{"user_id": ["1000", "1001", "1002", "stranger"], "k": 10}})
        fresh = BookRecommender.from_folder({str(project / "models" / "ncf")!r}).recommend(["1000"], 10)
        print(json.dumps({{"registered": model.predict(users)["isbn"].tolist(), "fresh": fresh["isbn"].tolist()}}))
        """
    )
    env = {"PYTHONPATH": str(copy)}
    changed = json.loads(run([sys.executable, "-c", probe], copy, env=env).stdout.strip().splitlines()[-1])
    import mlflow

    tracking.use_store(project)
    before = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}/1")
    users = pd.DataFrame({"user_id": ["1000", "1001", "1002", "stranger"], "k": 10})
    assert changed["registered"] == before.predict(users)["isbn"].tolist()
    # and the change is real: the changed code, given the same model folder, ranks otherwise
    assert changed["fresh"] != changed["registered"][:10]


def test_loading_versions_from_a_thread_changes_no_process_wide_state(project, monkeypatch):
    """The API's and the dashboard's pollers load versions on their own threads: that must not write
    the environment (nor MLflow's process-wide store) that other threads read."""
    import os
    import threading

    import mlflow

    from pipeline.serving.holder import registry_holder

    class RecordingEnviron(dict):
        writes: list[str] = []

        def __setitem__(self, key, value):
            self.writes.append(key)
            super().__setitem__(key, value)

        def __delitem__(self, key):
            self.writes.append(key)
            super().__delitem__(key)

        def pop(self, key, *default):
            self.writes.append(key)
            return super().pop(key, *default)

    environ = RecordingEnviron(os.environ)
    monkeypatch.setattr(os, "environ", environ)
    uri_before = mlflow.get_tracking_uri()
    holder = registry_holder(project, poll_seconds=60)
    errors = []

    def load():
        try:
            holder.refresh()
            registry.load_recommender(project, "1")
        except Exception as err:  # surfaced below
            errors.append(err)

    worker = threading.Thread(target=load)
    worker.start()
    worker.join(timeout=120)
    assert not errors and holder.current is not None
    assert [key for key in environ.writes if key.startswith("MLFLOW")] == []
    assert mlflow.get_tracking_uri() == uri_before


def test_production_and_challenger_loaded_concurrently_each_serve_their_own_code(project, client, tmp_path):
    """Two versions whose code differs (the challenger's scoring formula negated), loaded again and
    again on two threads at once while a third keeps ranking with a loaded model and importing
    `pipeline` modules: every load serves its own version's lists, and the process keeps its own
    `pipeline` throughout (pipeline/serving/codelock.py)."""
    import sys
    import threading

    import mlflow

    from tests.conftest import REPO_ROOT

    source = client.get_model_version_download_uri(registry.MODEL_NAME, "1")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "v1")))
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    ncf = changed / "code" / "pipeline" / "model" / "ncf.py"
    ncf.write_text(ncf.read_text().replace("        return scores\n", "        return -scores\n", 1))
    challenger = client.create_model_version(registry.MODEL_NAME, str(changed)).version
    readers = ["1000", "1001", "1002", "stranger"]

    def lists(version: str) -> list[str]:
        return registry.load_recommender(project, version).recommend(readers, 10)["isbn"].tolist()

    expected = {version: lists(version) for version in ("1", str(challenger))}
    assert expected["1"] != expected[str(challenger)]  # the two codes rank differently
    served = registry.load_recommender(project, "1")
    problems: list[str] = []
    loading = threading.Event()

    def load_again(version: str) -> None:
        try:
            for _ in range(4):
                if lists(version) != expected[version]:
                    problems.append(f"version {version} served another version's code")
        except Exception as err:  # surfaced below
            problems.append(f"loading {version}: {type(err).__name__}: {err}")

    def requests() -> None:
        while loading.is_set():
            if served.recommend(readers, 10)["isbn"].tolist() != expected["1"]:
                problems.append("a loaded model changed its lists")
            namespace: dict = {}
            exec("from pipeline.ops import history", namespace)  # an import statement, as a handler runs one
            if not namespace["history"].__file__.startswith(str(REPO_ROOT / "pipeline")):
                problems.append(f"an import on a request thread found {namespace['history'].__file__}")

    loaders = [threading.Thread(target=load_again, args=(v,)) for v in expected]
    prober = threading.Thread(target=requests)
    loading.set()
    prober.start()
    for thread in loaders:
        thread.start()
    for thread in loaders:
        thread.join(timeout=600)
    loading.clear()
    prober.join(timeout=60)
    assert problems == []
    found = {
        name: getattr(m, "__file__", "") or ""
        for name, m in sys.modules.items()
        if name.startswith("pipeline")
    }
    assert all(path.startswith(str(REPO_ROOT)) or not path for path in found.values()), found
