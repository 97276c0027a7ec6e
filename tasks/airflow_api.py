"""A small client of Airflow 3's REST API (v2): token, trigger, wait, XCom, HITL responses.

Used by the demo, the end-to-end tests and scripts; anything it does a user can do with curl.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"success", "failed"}
HITL_SETTLE_S = 3.0


class AirflowApiError(RuntimeError):
    pass


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            r = self.http.post("/auth/token", json={"username": self.username, "password": self.password})
            if r.status_code >= 400:
                raise AirflowApiError(f"login as {self.username} failed: HTTP {r.status_code} {r.text[:200]}")
            self._token = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(2):
            headers = {**self._headers(), **kwargs.pop("headers", {})} if attempt == 0 else self._headers()
            r = self.http.request(method, f"/api/v2{path}", headers=headers, **kwargs)
            if r.status_code == 401 and attempt == 0:
                self._token = None  # expired token: log in again once
                continue
            if r.status_code >= 400:
                raise AirflowApiError(f"{method} {path}: HTTP {r.status_code} {r.text[:500]}")
            return r.json() if r.content else None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ DAGs and runs
    def wait_for_dag(self, dag_id: str, timeout_s: float = 180) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id``; raise with its import error if any."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.request("GET", f"/dags/{dag_id}")
            except AirflowApiError as e:
                if "404" not in str(e):
                    raise
            if time.monotonic() > deadline:
                errors = self.request("GET", "/importErrors").get("import_errors", [])
                raise AirflowApiError(f"DAG {dag_id} not parsed after {timeout_s}s; import errors: {errors}")
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str, **filters: Any) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", **filters})[
            "dag_runs"
        ]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        ti = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        return ti.get("state")

    def wait(self, dag_id: str, run_id: str, timeout_s: float = 1800, on_poll=None) -> dict[str, Any]:
        """Wait for a run to finish; a failed run raises with the failed tasks and their log tails."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(dag_id, run_id)
            if on_poll:
                on_poll(run)
            if run["state"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{dag_id} run {run_id} still {run['state']} after {timeout_s}s")
            time.sleep(3)
        if run["state"] != "success":
            raise AirflowApiError(
                f"{dag_id} run {run_id} {run['state']}:\n{self.failure_report(dag_id, run_id)}"
            )
        return run

    def failure_report(self, dag_id: str, run_id: str, lines: int = 30) -> str:
        out = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] in ("failed", "upstream_failed"):
                out.append(f"- task {ti['task_id']}: {ti['state']}")
                if ti["state"] == "failed":
                    out.append(self.log_tail(dag_id, run_id, ti["task_id"], ti.get("try_number") or 1, lines))
        return "\n".join(out)

    def log_tail(self, dag_id: str, run_id: str, task_id: str, try_number: int, lines: int = 30) -> str:
        try:
            data = self.request(
                "GET",
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                params={"full_content": "true"},
                headers={"Accept": "application/json"},
            )
        except AirflowApiError as e:
            return f"  (log unavailable: {e})"
        content = data.get("content", [])
        text = [c.get("event", str(c)) if isinstance(c, dict) else str(c) for c in content]
        return "\n".join("    " + t for t in text[-lines:])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        return self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        )["value"]

    # ------------------------------------------------------------------ human in the loop
    def hitl_detail(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        try:
            return self.request(
                "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
            )
        except AirflowApiError as e:
            if "404" in str(e):
                return None
            raise

    def respond(
        self, dag_id: str, run_id: str, task_id: str, options: list[str], params_input: dict | None = None
    ):
        return self.request(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": options, "params_input": params_input or {}},
        )

    def approve(
        self, dag_id: str, run_id: str, task_id: str, options: list[str], timeout_s: float = 1800
    ) -> dict[str, Any]:
        """Respond to a HITL task and wait for the run to finish; answers again if the gate asks again.

        Airflow can put a just-answered HITL task up for retry (a race between the executor's report of
        the paused try and the response); the retry asks anew, and an unanswered gate would hold the run
        until its timeout. Each new question is answered once with the same options."""
        self.respond(dag_id, run_id, task_id, options)

        def reask(_run: dict[str, Any]) -> None:
            if self.task_state(dag_id, run_id, task_id) != "awaiting_input":
                return
            detail = self.hitl_detail(dag_id, run_id, task_id)
            if detail is not None and not detail.get("response_received"):
                time.sleep(HITL_SETTLE_S)
                self.respond(dag_id, run_id, task_id, options)

        return self.wait(dag_id, run_id, timeout_s=timeout_s, on_poll=reask)

    def wait_for_hitl(self, dag_id: str, run_id: str, task_id: str, timeout_s: float = 600) -> dict[str, Any]:
        """Wait until the approval task asks for a response (the run must not end before)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            detail = self.hitl_detail(dag_id, run_id, task_id)
            if detail is not None and self.task_state(dag_id, run_id, task_id) == "awaiting_input":
                # Let the executor report the paused try first: a response within a second of the pause
                # races the scheduler (it then marks the task for retry and the retry asks again).
                time.sleep(HITL_SETTLE_S)
                return self.hitl_detail(dag_id, run_id, task_id) or detail
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                raise AirflowApiError(
                    f"{dag_id} run {run_id} ended {run['state']} before {task_id} asked for approval:\n"
                    + self.failure_report(dag_id, run_id)
                )
            time.sleep(3)
        raise AirflowApiError(f"{task_id} of {dag_id} run {run_id} did not ask for approval in {timeout_s}s")
