"""The review API of the console plugin through FastAPI's TestClient.

Most tests override ``current_user`` (the caller is whoever the test says); the auth tests use the real
dependency: no token → 401, a forged token → 403, and a JWT signed by Airflow's auth manager → the
reviewer is the token's user.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from plugins.forgeflow_console import create_app
from plugins.forgeflow_console.auth import User, current_user
from plugins.forgeflow_console.review_api import get_catalog, get_lake
from tasks.catalog import Catalog
from tasks.storage import Lake, local_path

ROOT = Path(__file__).resolve().parents[3]
API = "/api/review"


@pytest.fixture
def backend(ff_home):
    cat, lake = Catalog.from_settings(), Lake.from_settings()
    cat.ensure_dataset("general", "qa")
    uri = lake.uri("datasets", "general", "qa", "r1")
    d = local_path(uri) / "data"
    d.mkdir(parents=True)
    rows = [{"id": f"r{i}", "system": None, "context": [f"q{i}"], "target": f"a{i}"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), d / "part-0.parquet")
    cat.commit_version("general", "qa", run_key="r1", uri=uri, usage="sft", record_count=len(rows))
    return cat, lake


@pytest.fixture
def app(backend):
    cat, lake = backend
    app = create_app()
    app.dependency_overrides[get_catalog] = lambda: cat
    app.dependency_overrides[get_lake] = lambda: lake
    return app


class As:
    """A client whose requests come from ``name`` (the user dependency overridden)."""

    def __init__(self, app, name: str):
        self.app, self.name, self.client = app, name, TestClient(app)

    def __getattr__(self, verb):
        def call(*args, **kwargs):
            self.app.dependency_overrides[current_user] = lambda: User(name=self.name, id=self.name)
            return getattr(self.client, verb)(*args, **kwargs)

        return call


def make_task(client, **kw):
    body = {"version": "general/qa@V1", "standard": "sft-qa", "sample_size": 4, "seed": 3}
    r = client.post(f"{API}/tasks", json={**body, "reviewers": ["alice", "bob"], **kw})
    assert r.status_code == 201, r.text
    return r.json()


def test_standards_crud_and_restore(app):
    carol = As(app, "carol")
    names = {s["name"] for s in carol.get(f"{API}/standards").json()}
    assert {"general-text", "sft-qa"} <= names
    items = [{"category": "accuracy", "item": "typo", "description": "spelling"}]
    r = carol.post(f"{API}/standards", json={"name": "mine", "items": items})
    assert r.status_code == 201 and r.json()["created_by"] == "carol"
    assert carol.post(f"{API}/standards", json={"name": "mine", "items": items}).status_code == 409
    bad = carol.post(f"{API}/standards", json={"name": "x", "items": items * 2})
    assert bad.status_code == 422 and "appears twice" in bad.text
    r = carol.put(f"{API}/standards/mine", json={"description": "edited"})
    assert r.json()["description"] == "edited" and r.json()["revision"] == 2
    assert carol.delete(f"{API}/standards/sft-qa").status_code == 204
    assert carol.get(f"{API}/standards/sft-qa").status_code == 404
    r = carol.post(f"{API}/standards/restore", json={"names": ["sft-qa"]})
    assert r.status_code == 200 and r.json()[0]["name"] == "sft-qa"
    assert carol.get(f"{API}/standards/sft-qa").status_code == 200


def test_review_flow_identity_from_the_user_not_the_body(app):
    carol, alice, bob = As(app, "carol"), As(app, "alice"), As(app, "bob")
    task = make_task(carol, created_by="mallory")  # unknown body fields cannot set the creator
    assert task["created_by"] == "carol" and task["status"] == "pending"
    assert [t["id"] for t in alice.get(f"{API}/tasks", params={"mine": True}).json()] == [task["id"]]
    assert carol.get(f"{API}/tasks", params={"mine": True}).json() == []

    nxt = alice.get(f"{API}/tasks/{task['id']}/next").json()
    item = nxt["item"]
    assert item["assignee"] == "alice" and nxt["progress"]["total"] == 4
    r = bob.post(f"{API}/tasks/{task['id']}/items/{item['id']}/verdict", json={"verdict": "pass"})
    assert r.status_code == 403 and "assigned to 'alice'" in r.json()["detail"]
    r = alice.post(
        f"{API}/tasks/{task['id']}/items/{item['id']}/verdict", json={"verdict": "pass", "reviewer": "bob"}
    )
    assert r.status_code == 200 and r.json()["reviewer"] == "alice"
    r = alice.post(f"{API}/tasks/{task['id']}/items/{item['id']}/verdict", json={"verdict": "fail"})
    assert r.status_code == 422 and "needs at least one problem tag" in r.json()["detail"]
    assert carol.get(f"{API}/tasks/{task['id']}/next").status_code == 403  # not a reviewer

    r = carol.get(f"{API}/tasks/{task['id']}/report")
    assert r.status_code == 409 and "25.0 % done" in r.json()["detail"]
    assert carol.get(f"{API}/tasks/{task['id']}/report", params={"partial": True}).json()["partial"] is True

    for who in (alice, bob):
        while (it := who.get(f"{API}/tasks/{task['id']}/next").json()["item"]) is not None:
            v = {"verdict": "fail", "tags": ["off-topic"]} if it["position"] == 1 else {"verdict": "pass"}
            assert who.post(f"{API}/tasks/{task['id']}/items/{it['id']}/verdict", json=v).status_code == 200
    prog = carol.get(f"{API}/tasks/{task['id']}/progress").json()
    assert prog["status"] == "done" and prog["percent"] == 100.0
    rep = carol.get(f"{API}/tasks/{task['id']}/report").json()
    assert rep["pass_rate"] == 0.75 and rep["per_reviewer"]["bob"]["failed"] == 1
    written = carol.post(f"{API}/tasks/{task['id']}/report").json()
    assert written["uri"].endswith(f"_reviews/V1/task-{task['id']}/report.json")
    assert carol.get(f"{API}/tasks/{task['id']}").json()["report_uri"] == written["uri"]
    assert carol.get(f"{API}/tasks/999").status_code == 404
    mine = bob.get(f"{API}/tasks/{task['id']}/items").json()
    assert {i["assignee"] for i in mine} == {"bob"} and len(mine) == 2


# ---------------------------------------------------------------------------------------------- auth
@pytest.fixture
def airflow_auth(monkeypatch):
    """Airflow's configured auth manager (SimpleAuthManager), as the API server initialises it."""
    from airflow.api_fastapi import app as airflow_app
    from airflow.models.revoked_token import RevokedToken

    old = airflow_app._AuthManagerState.instance
    am = airflow_app.create_auth_manager()
    # The revocation list lives in Airflow's metadata database, which unit tests do not create.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti: False))
    yield am
    airflow_app._AuthManagerState.instance = old


def test_requests_without_a_token_get_401(app):
    client = TestClient(app)  # no override of current_user: Airflow's own check runs
    for method, path in [("get", "/standards"), ("post", "/tasks"), ("get", "/tasks/1/next")]:
        r = getattr(client, method)(f"{API}{path}")
        assert r.status_code == 401, (path, r.text)


def test_a_forged_token_gets_403_and_a_real_one_names_the_reviewer(app, airflow_auth):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client = TestClient(app)
    forged = client.get(f"{API}/standards", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 403
    token = airflow_auth.generate_jwt(SimpleAuthManagerUser(username="alice", role="admin"))
    headers = {"Authorization": f"Bearer {token}"}
    task = client.post(
        f"{API}/tasks",
        headers=headers,
        json={"version": "general/qa@V1", "standard": "sft-qa", "sample_size": 2, "reviewers": ["alice"]},
    )
    assert task.status_code == 201, task.text
    assert task.json()["created_by"] == "alice"
    item = client.get(f"{API}/tasks/{task.json()['id']}/next", headers=headers).json()["item"]
    assert item["assignee"] == "alice"


def test_airflow_loads_the_plugin_and_its_fastapi_app(tmp_path):
    """The plugins folder as Airflow's plugin manager sees it: one plugin, the app under /forgeflow."""
    probe = (
        "from airflow import plugins_manager\n"
        "apps, _ = plugins_manager.get_fastapi_plugins()\n"
        "print([(a['name'], a['url_prefix'], type(a['app']).__name__) for a in apps])\n"
        "print(sorted(plugins_manager.get_import_errors()))\n"
    )
    env = {
        **__import__("os").environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    apps, errors = out.stdout.strip().splitlines()[-2:]
    assert apps == "[('forgeflow_console', '/forgeflow', 'FastAPI')]"
    assert errors == "[]"
