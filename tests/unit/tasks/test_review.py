"""Human sampling review on SQLite: standards, seeded sampling, assignment, verdicts, report, DAG gate.

tests/integration/tasks/test_review_postgres.py runs the task flow on PostgreSQL with concurrent reviewers.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import review as rv
from tasks.catalog import Catalog
from tasks.storage import Lake, local_path


@pytest.fixture
def env(ff_home):
    cat = Catalog.from_settings()
    lake = Lake.from_settings()
    return cat, lake


def sft_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "id": f"rec-{i:04d}",
            "system": None,
            "context": [f"question {i}?"],
            "target": "answer " + "x" * (i % 17),
            "meta": {"source": "unit", "tags": []},
        }
        for i in range(start, start + n)
    ]


def write_version(cat, lake, rows, *, run_key="r1", dataset="qa", parts=2, usage="sft") -> str:
    """A committed version whose data/ holds ``rows`` split over ``parts`` parquet files."""
    cat.ensure_dataset("general", dataset)
    uri = lake.uri("datasets", "general", dataset, run_key)
    write_parquet(local_path(uri) / "data", rows, parts)
    return cat.commit_version(
        "general", dataset, run_key=run_key, uri=uri, usage=usage, record_count=len(rows)
    ).ref


def write_parquet(d, rows, parts):
    d.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // parts)
    for k in range(parts):
        chunk = rows[k * size : (k + 1) * size]
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk), d / f"part-{k:05d}.parquet")


def new_task(cat, lake, ref, **kw):
    spec = {"version": ref, "standard": "sft-qa", "sample_size": 6, "seed": 1, "reviewers": ["alice", "bob"]}
    return rv.create_task({**spec, **kw}, created_by="carol", catalog=cat, lake=lake)


def judge_all(cat, task_id, fail_every=3, tags=("wrong-answer",)):
    for who in rv.get_task(task_id, cat).reviewers:
        while (item := rv.next_item(task_id, who, cat)) is not None:
            v = (
                {"verdict": "fail", "tags": list(tags)}
                if item.position % fail_every == 0
                else {"verdict": "pass"}
            )
            rv.submit_verdict(task_id, item.id, who, v, cat)


# ---------------------------------------------------------------------------------------------- schema
def test_migration_0003_creates_exactly_the_review_models(env):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    cat, _ = env
    with cat.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), rv.Base.metadata)
    ours = [d for d in diffs if "review_" in repr(d)]
    assert ours == []
    with cat.engine.connect() as conn:
        head = MigrationContext.configure(conn).get_current_revision()
    assert head == "0003"


def test_migration_0003_downgrades_and_upgrades(tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    from tasks.migrations import config

    url = f"sqlite:///{tmp_path / 'c.db'}"
    cat = Catalog(url)
    cat.migrate()
    cfg = config(url)
    command.downgrade(cfg, "0002")
    assert not {"review_standards", "review_tasks", "review_items"} & set(
        inspect(cat.engine).get_table_names()
    )
    command.upgrade(cfg, "head")
    assert {"review_standards", "review_tasks", "review_items"} <= set(inspect(cat.engine).get_table_names())


# ---------------------------------------------------------------------------------------------- standards
def test_presets_load_on_first_use_with_the_seed_categories(env):
    cat, _ = env
    standards = {s.name: s for s in rv.list_standards(cat)}
    assert {"general-text", "sft-qa"} <= set(standards)
    for s in standards.values():
        assert s.preset and s.revision == 1
        assert {"completeness", "accuracy", "consistency"} <= {i.category for i in s.items}
        assert all(i.description for i in s.items)
    assert len(rv.list_standards(cat)) == len(standards)  # loaded once


def test_standards_are_editable_deletable_and_presets_restorable(env):
    cat, _ = env
    original = rv.get_standard("sft-qa", cat)
    edited = rv.update_standard(
        "sft-qa",
        items=[{"category": "accuracy", "item": "wrong-answer", "description": "wrong"}],
        catalog=cat,
    )
    assert edited.revision == original.revision + 1
    assert [i.item for i in edited.items] == ["wrong-answer"]
    assert edited.description == original.description

    rv.delete_standard("sft-qa", cat)
    assert "sft-qa" not in {s.name for s in rv.list_standards(cat)}  # a deleted preset is not re-added
    with pytest.raises(rv.ReviewNotFound, match="does not exist"):
        rv.get_standard("sft-qa", cat)

    (restored,) = rv.restore_presets(["sft-qa"], cat)
    assert restored.items == original.items and restored.preset
    assert restored.revision > edited.revision
    with pytest.raises(rv.ReviewNotFound, match="no preset named nope"):
        rv.restore_presets(["nope"], cat)


def test_create_standard_validates_and_refuses_a_taken_name(env):
    cat, _ = env
    items = [{"category": "accuracy", "item": "typo", "description": "spelling"}]
    made = rv.create_standard({"name": "my-std", "description": "d", "items": items}, "dora", cat)
    assert made.created_by == "dora" and not made.preset and made.revision == 1
    with pytest.raises(rv.ReviewConflict, match="already exists"):
        rv.create_standard({"name": "my-std", "items": items}, "dora", cat)
    with pytest.raises(rv.ReviewError, match=r"item 'typo' appears twice \(items\[1\]\)"):
        rv.create_standard({"name": "other", "items": items * 2}, "dora", cat)
    with pytest.raises(rv.ReviewError, match="standard name 'Bad Name' is invalid"):
        rv.create_standard({"name": "Bad Name", "items": items}, "dora", cat)
    with pytest.raises(rv.ReviewError, match="items: List should have at least 1 item"):
        rv.create_standard({"name": "empty", "items": []}, "dora", cat)


def test_a_broken_preset_file_names_the_file_and_the_entry(tmp_path):
    p = tmp_path / "standards.yaml"
    p.write_text(
        "standards:\n  - name: ok\n    items: [{category: a, item: b}]\n  - name: bad\n    items: []\n"
    )
    with pytest.raises(rv.ReviewError, match=r"standards\.yaml: standards\[1\]: items"):
        rv.load_presets(p)


# ---------------------------------------------------------------------------------------------- sampling
def test_sample_is_the_bottom_k_of_the_seeded_hash_whatever_the_file_layout(env, tmp_path):
    _, lake = env
    rows = sft_rows(300)
    a, b = tmp_path / "a", tmp_path / "b"
    write_parquet(a, rows, parts=1)
    write_parquet(b, list(reversed(rows)), parts=7)
    got_a = [r["id"] for r in rv.sample_records(str(a), 25, seed=42, lake=lake, batch_size=16)]
    got_b = [r["id"] for r in rv.sample_records(str(b), 25, seed=42, lake=lake, batch_size=50)]
    expected = sorted((r["id"] for r in rows), key=lambda i: rv.sample_key(42, i))[:25]
    assert got_a == got_b == expected
    other = [r["id"] for r in rv.sample_records(str(a), 25, seed=43, lake=lake)]
    assert other != expected
    full = rv.sample_records(str(a), 25, seed=42, lake=lake)[0]
    assert full == next(r for r in rows if r["id"] == expected[0])  # the whole record, as stored


def test_sample_larger_than_the_version_takes_everything_once(env, tmp_path):
    _, lake = env
    rows = sft_rows(10)
    write_parquet(tmp_path / "d", rows + rows[:3], parts=3)  # three exact duplicates
    got = rv.sample_records(str(tmp_path / "d"), 1000, seed=0, lake=lake)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows)


def test_sampling_needs_ids_and_files(env, tmp_path):
    _, lake = env
    (tmp_path / "empty").mkdir()
    with pytest.raises(rv.ReviewError, match="holds no parquet files"):
        rv.sample_records(str(tmp_path / "empty"), 5, 0, lake=lake)
    (tmp_path / "noid").mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": "a"}]), tmp_path / "noid" / "p.parquet")
    with pytest.raises(rv.ReviewError, match="p.parquet: the version's records have no 'id' column"):
        rv.sample_records(str(tmp_path / "noid"), 5, 0, lake=lake)


def test_round_robin_and_balanced_assignment():
    recs = [{"id": str(i), "text": "x" * (1000 if i == 0 else 10)} for i in range(7)]
    assert rv.assign(recs, ["a", "b", "c"], "round_robin") == ["a", "b", "c", "a", "b", "c", "a"]
    balanced = rv.assign(recs, ["a", "b"], "balanced")
    assert balanced[0] == "a" and balanced[1:].count("b") == 6  # a has the one long record to read


# ---------------------------------------------------------------------------------------------- tasks
def test_create_task_pins_the_version_snapshots_the_standard_and_is_idempotent(env):
    cat, lake = env
    write_version(cat, lake, sft_rows(40))
    task = new_task(cat, lake, "general/qa@latest", sample_size=9, run_key="dag/run-1")
    assert task.version_ref == "general/qa@V1" and task.status == "pending"
    assert task.sampled == 9 and task.created_by == "carol" and task.standard["name"] == "sft-qa"
    items = rv.list_items(task.id, catalog=cat)
    assert [i.assignee for i in items] == ["alice", "bob"] * 4 + ["alice"]
    assert len({i.record_id for i in items}) == 9

    rv.update_standard("sft-qa", items=[{"category": "accuracy", "item": "only-one"}], catalog=cat)
    assert rv.get_task(task.id, cat).standard == task.standard  # later edits do not reach the task

    again = new_task(cat, lake, "general/qa@latest", sample_size=9, run_key="dag/run-1")
    assert again.id == task.id and len(rv.list_tasks(catalog=cat)) == 1
    assert [t.id for t in rv.list_tasks(version="general/qa", reviewer="bob", catalog=cat)] == [task.id]
    assert rv.list_tasks(reviewer="zoe", catalog=cat) == []


def test_same_seed_same_sample_across_tasks(env):
    cat, lake = env
    ref = write_version(cat, lake, sft_rows(100))
    ids = [
        [i.record_id for i in rv.list_items(new_task(cat, lake, ref, seed=s).id, catalog=cat)]
        for s in (5, 5, 6)
    ]
    assert ids[0] == ids[1] != ids[2]


def test_create_task_errors_say_what(env):
    cat, lake = env
    ref = write_version(cat, lake, sft_rows(5))
    with pytest.raises(rv.ReviewNotFound, match="general/nope does not exist"):
        new_task(cat, lake, "general/nope@V1")
    with pytest.raises(rv.ReviewNotFound, match="standard 'nope' does not exist"):
        new_task(cat, lake, ref, standard="nope")
    with pytest.raises(rv.ReviewError, match="sample_size: Input should be greater than or equal to 1"):
        new_task(cat, lake, ref, sample_size=0)
    with pytest.raises(rv.ReviewError, match=r"reviewers\[1\] is blank"):
        new_task(cat, lake, ref, reviewers=["alice", " "])


# ---------------------------------------------------------------------------------------------- verdicts
def test_verdict_rules(env):
    cat, lake = env
    task = new_task(cat, lake, write_version(cat, lake, sft_rows(20)), sample_size=4)
    first = rv.next_item(task.id, "alice", cat)
    assert first.assignee == "alice" and first.position == 0

    with pytest.raises(rv.ReviewForbidden, match=f"item {first.id} .* is assigned to 'alice'; 'bob' cannot"):
        rv.submit_verdict(task.id, first.id, "bob", {"verdict": "pass"}, cat)
    with pytest.raises(rv.ReviewForbidden, match="'zoe' is not a reviewer"):
        rv.next_item(task.id, "zoe", cat)
    with pytest.raises(rv.ReviewError, match="a Fail of item .* needs at least one problem tag"):
        rv.submit_verdict(task.id, first.id, "alice", {"verdict": "fail"}, cat)
    with pytest.raises(rv.ReviewError, match="tag 'typo' is not an item of standard 'sft-qa'"):
        rv.submit_verdict(task.id, first.id, "alice", {"verdict": "fail", "tags": ["typo"]}, cat)
    with pytest.raises(rv.ReviewError, match="a Pass carries no problem tags"):
        rv.submit_verdict(task.id, first.id, "alice", {"verdict": "pass", "tags": ["wrong-answer"]}, cat)
    with pytest.raises(rv.ReviewError, match=r"verdict: Input should be 'pass' or 'fail'"):
        rv.submit_verdict(task.id, first.id, "alice", {"verdict": "maybe"}, cat)
    too_long = {"field": "context[0]", "start": 0, "end": 999, "tag": "garbled"}
    with pytest.raises(rv.ReviewError, match=r"spans\[0\]: end 999 is past the end of 'context\[0\]'"):
        rv.submit_verdict(task.id, first.id, "alice", {"verdict": "fail", "spans": [too_long]}, cat)
    with pytest.raises(rv.ReviewError, match="the record has no field 'answer'"):
        rv.submit_verdict(
            task.id,
            first.id,
            "alice",
            {"verdict": "fail", "spans": [{"field": "answer", "start": 0, "end": 1}]},
            cat,
        )
    assert rv.progress(task.id, cat).decided == 0  # refused verdicts left nothing behind

    span = {"field": "context[0]", "start": 0, "end": 8, "tag": "garbled", "note": "odd"}
    got = rv.submit_verdict(
        task.id, first.id, "alice", {"verdict": "Fail", "tags": ["wrong-answer"], "spans": [span]}, cat
    )
    assert got.verdict == "fail" and got.tags == ["wrong-answer", "garbled"] and got.reviewer == "alice"
    assert rv.get_task(task.id, cat).status == "in_progress"
    assert rv.next_item(task.id, "alice", cat).position == 2  # moves on to alice's next record

    changed = rv.submit_verdict(task.id, first.id, "alice", {"verdict": "pass"}, cat)  # before 100 %: allowed
    assert changed.verdict == "pass" and changed.tags == [] and changed.spans == []
    assert rv.progress(task.id, cat).decided == 1


def test_done_at_100_percent_then_verdicts_are_final(env):
    cat, lake = env
    task = new_task(cat, lake, write_version(cat, lake, sft_rows(20)), sample_size=4)
    judge_all(cat, task.id)
    done = rv.get_task(task.id, cat)
    assert done.status == "done" and done.completed_at is not None
    assert rv.next_item(task.id, "alice", cat) is None
    item = rv.list_items(task.id, catalog=cat)[0]
    with pytest.raises(rv.ReviewConflict, match="is done"):
        rv.submit_verdict(task.id, item.id, item.assignee, {"verdict": "pass"}, cat)


def test_resolve_field_paths():
    rec = {"text": "abc", "context": ["q1", "a1"], "answers": [{"text": "x", "score": 1.0}]}
    assert rv.resolve_field(rec, "text") == "abc"
    assert rv.resolve_field(rec, "context[1]") == rv.resolve_field(rec, "context.1") == "a1"
    assert rv.resolve_field(rec, "answers[0].text") == "x"
    for bad, msg in [
        ("context[5]", "no element 5"),
        ("answers[0].score", "is not text"),
        ("te xt", "not a field"),
    ]:
        with pytest.raises(rv.ReviewError, match=msg):
            rv.resolve_field(rec, bad)


# ---------------------------------------------------------------------------------------------- report
def test_report_before_100_percent_is_refused_or_partial(env):
    cat, lake = env
    task = new_task(cat, lake, write_version(cat, lake, sft_rows(20)), sample_size=4)
    item = rv.next_item(task.id, "bob", cat)
    rv.submit_verdict(task.id, item.id, "bob", {"verdict": "fail", "tags": ["off-topic"]}, cat)
    with pytest.raises(rv.ReviewConflict, match=r"is 25.0 % done \(1 of 4 records judged\)"):
        rv.report(task.id, catalog=cat)
    part = rv.report(task.id, partial=True, catalog=cat)
    assert part.partial and part.decided == 1 and part.pass_rate == 0.0 and part.completed_at is None
    out = rv.write_report(task.id, partial=True, catalog=cat, lake=lake)
    assert out["uri"].endswith("report.partial.json") and rv.get_task(task.id, cat).report_uri is None


def test_report_at_100_percent_counts_everything_and_lands_next_to_the_version(env):
    cat, lake = env
    ref = write_version(cat, lake, sft_rows(30))
    task = new_task(cat, lake, ref, sample_size=9, reviewers=["alice", "bob", "carl"])
    items = rv.list_items(task.id, catalog=cat)
    fails = {0: ["wrong-answer", "answer-truncated"], 4: ["wrong-answer"], 5: ["personal-data"]}
    for it in items:
        v = {"verdict": "fail", "tags": fails[it.position]} if it.position in fails else {"verdict": "pass"}
        rv.submit_verdict(task.id, it.id, it.assignee, v, cat)

    rep = rv.report(task.id, catalog=cat)
    assert not rep.partial and (rep.decided, rep.passed, rep.failed) == (9, 6, 3)
    assert rep.pass_rate == round(6 / 9, 4)
    # positions 0,3,6 → alice; 1,4,7 → bob; 2,5,8 → carl
    assert {r: (p.decided, p.failed, p.pass_rate) for r, p in rep.per_reviewer.items()} == {
        "alice": (3, 1, round(2 / 3, 4)),
        "bob": (3, 1, round(2 / 3, 4)),
        "carl": (3, 1, round(2 / 3, 4)),
    }
    assert (
        rep.tags["wrong-answer"] == 2 and rep.tags["answer-truncated"] == 1 and rep.tags["personal-data"] == 1
    )
    assert rep.tags["off-topic"] == 0  # every item of the standard is listed
    assert rep.categories["accuracy"].records == 2 and rep.categories["completeness"].records == 1
    assert rep.categories["compliance"].tags == 1 and rep.categories["consistency"].records == 0
    by_pos = {it.position: it.record_id for it in items}
    assert [(f.record_id, f.tags) for f in rep.failed_records] == [(by_pos[p], fails[p]) for p in (0, 4, 5)]

    version_uri = cat.get_version(ref).uri
    version_files = lake.list(version_uri)
    out = rv.write_report(task.id, catalog=cat, lake=lake)
    assert out["uri"] == f"{version_uri.rsplit('/', 1)[0]}/_reviews/V1/task-{task.id}/report.json"
    assert json.loads(local_path(out["uri"]).read_text()) == rep.model_dump(mode="json")
    assert rv.get_task(task.id, cat).report_uri == out["uri"]
    assert lake.list(version_uri) == version_files  # the version directory stays as committed


# ---------------------------------------------------------------------------------------------- DAG gate
def test_poke_waits_then_times_out_with_progress(env, monkeypatch):
    cat, lake = env
    task = new_task(cat, lake, write_version(cat, lake, sft_rows(10)), sample_size=2)
    done, prog = rv.poke(task.id, timeout_hours=1, catalog=cat)
    assert not done and prog["total"] == 2
    later = rv.now() + timedelta(hours=2)
    monkeypatch.setattr(rv, "now", lambda: later)
    with pytest.raises(rv.ReviewTimeout, match=r"0.0 % done \(0 of 2\) after 1 h.*alice 0/1, bob 0/1"):
        rv.poke(task.id, timeout_hours=1, catalog=cat)
    judge_all(cat, task.id)
    assert rv.poke(task.id, timeout_hours=1, catalog=cat)[0] is True


def test_threshold_gate_names_the_pass_rate(env):
    cat, lake = env
    task = new_task(cat, lake, write_version(cat, lake, sft_rows(20)), sample_size=4)
    judge_all(cat, task.id, fail_every=2)  # positions 0 and 2 fail → 50 %
    rep = rv.report(task.id, catalog=cat)
    assert rv.check_threshold(rep, 0.5)["passed"] is True
    with pytest.raises(
        rv.ReviewGateFailed,
        match=r"pass rate 50.0 % \(2 of 4 records\).*threshold of 80.0 %.*wrong-answer ×2",
    ):
        rv.check_threshold(rep.model_dump(), 0.8)
    with pytest.raises(rv.ReviewGateFailed, match="not complete"):
        rv.check_threshold(rep.model_copy(update={"partial": True}), 0.1)
