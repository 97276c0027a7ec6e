"""``forgeflow dataset ...``: the catalogue from the command line. Every command takes ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any, get_args

from tasks.specs import InputFormat, Usage


def _out(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str) if as_json else text)


def _tags(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def _version_line(v: dict[str, Any]) -> str:
    q = v.get("quarantined_count") or 0
    line = f"{v['ref']}  {v['usage']:<12} {v['status']:<10} {v['record_count']} records"
    if q:
        line += f", {q} quarantined"
    if v.get("token_count") is not None:
        line += f", {v['token_count']} tokens"
    return line


def cmd_create(args: argparse.Namespace) -> int:
    from tasks import datasets

    ds = datasets.create(
        args.dataset,
        note=args.note,
        tags=_tags(args.tags),
        language=args.language,
        licence=args.licence,
        source=args.source,
    )
    _out(ds, args.json, f"created dataset {ds['ref']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tasks import datasets

    field_map = dict(kv.split("=", 1) for kv in args.field_map or [])
    v = datasets.import_file(
        args.dataset,
        args.file,
        usage=args.usage,
        fmt=args.format,
        recipe=args.recipe,
        source_label=args.source_label,
        field_map=field_map,
        max_reject_ratio=args.max_reject_ratio,
        note=args.note,
        tags=_tags(args.tags),
        run_key=args.run_key,
        modality=args.modality,
        labelled=not args.unlabelled,
        encoding=args.encoding,
        quality=not args.no_quality,
        tokenizer=args.tokenizer,
    )
    text = (
        f"{v['ref']}: {v['accepted']} accepted, {v['quarantined_count']} quarantined"
        f" -> {v['record_count']} records ({v['usage']}, {v['status']})"
    )
    if v.get("quality"):
        val = v["quality"].get("validation") or {}
        text += (
            f"\nquality: suite {'passed' if val.get('success') else 'FAILED'}"
            f" ({val.get('failed', 0)} of {val.get('evaluated', '?')} expectations failed),"
            f" {v.get('token_count')} tokens; report: {v['quality'].get('html_uri')}"
        )
    if v.get("quarantine_uri"):
        text += f"\nquarantine: {v['quarantine_uri']}"
    _out(v, args.json, text)
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from tasks import datasets

    v = datasets.mix(
        args.dataset,
        args.part,
        by=args.by,
        inputs=args.input,
        preset=args.preset,
        total=args.total,
        baseline=args.baseline,
        seed=args.seed,
        sampling=args.sampling,
        note=args.note,
        run_key=args.run_key,
    )
    lines = [f"{v['ref']}: {v['record_count']} records mixed from {', '.join(v['parents'])}"]
    for p in v.get("mix", {}).get("parts", []):
        lines.append(
            f"  {p['part']}: took {p['taken']} of {p['available']}, proportion {p['achieved_proportion']}"
            f" (requested {p['requested_proportion']}{', exact' if p['exact'] else ''})"
            + (f", {p['upsampled_copies']} up-sampled copies" if p.get("upsampled_copies") else "")
        )
    lines += [f"  warning: {w}" for w in v.get("mix", {}).get("warnings", [])]
    _out(v, args.json, "\n".join(lines))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from tasks import datasets

    v = datasets.publish(
        args.ref,
        fmt=args.format,
        visibility=args.visibility,
        validation_ratio=args.validation_ratio,
        validation_count=args.validation_count,
        seed=args.seed,
        override_reason=args.override_reason,
        user=args.user,
    )
    exp = v["export"]
    counts = ", ".join(f"{k} {n}" for k, n in exp["counts"].items())
    _out(
        v,
        args.json,
        f"{v['ref']} published ({exp['format']}, {v['visibility']}): {counts}\nexport: {exp['output_uri']}",
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tasks import datasets

    rows = datasets.list_datasets(args.scene)
    text = "\n".join(f"{r['scene']}/{r['name']}  {r['versions']} versions  {r['note']}" for r in rows)
    _out(rows, args.json, text or "no datasets")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from tasks import datasets

    obj = datasets.show(args.ref)
    if "versions" in obj:
        lines = [f"{obj['ref']}  {obj['note']}".rstrip()]
        for k in ("language", "licence", "source"):
            if obj.get(k):
                lines.append(f"  {k}: {obj[k]}")
        if obj.get("tags"):
            lines.append(f"  tags: {', '.join(obj['tags'])}")
        lines += ["  " + _version_line(v) for v in obj["versions"]] or ["  no versions"]
        text = "\n".join(lines)
    else:
        text = "\n".join(
            [_version_line(obj)]
            + [
                f"  {k}: {obj[k]}"
                for k in ("uri", "source", "code_version", "created_at", "published_at")
                if obj.get(k)
            ]
            + ([f"  parents: {', '.join(obj['parents'])}"] if obj.get("parents") else [])
            + [f"  recipe: {' > '.join(s['name'] for s in obj['recipe']) or '(import only)'}"]
            + _quality_lines(obj)
        )
    _out(obj, args.json, text)
    return 0


def _quality_lines(v: dict[str, Any]) -> list[str]:
    q = v.get("quality") or {}
    if not q:
        return ["  quality: not assessed"]
    val, summ = q.get("validation") or {}, q.get("summary") or {}
    lines = [
        f"  quality: suite {val.get('suite', '')} {'passed' if val.get('success') else 'FAILED'}"
        f" ({val.get('failed', 0)} of {val.get('evaluated', '?')} failed); {summ.get('tokens')} tokens"
        f" ({summ.get('tokenizer')}), {summ.get('duplicates')} duplicates, {summ.get('pii_left')} PII left",
        f"  report: {q.get('html_uri')}",
    ]
    lines += [
        f"    failed: {e['title'] if 'title' in e else e.get('name')}"
        for e in val.get("expectations", [])
        if not e.get("success")
    ]
    return lines


def cmd_preview(args: argparse.Namespace) -> int:
    from tasks import datasets

    obj = datasets.preview(args.ref, args.limit)
    text = "\n".join(json.dumps(r, ensure_ascii=False, default=str) for r in obj["records"])
    if obj["quarantined"]:
        text += "\n-- quarantined --\n" + "\n".join(
            f"{q.get('source_file')}:{q.get('line')}: {q.get('reason')}" for q in obj["quarantined"]
        )
    _out(obj, args.json, text)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from tasks import datasets

    tree = datasets.lineage(args.ref)
    if args.models:
        tree["models"] = datasets.models_trained_on(tree["ref"])
    _out(tree, args.json, datasets.format_lineage(tree))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="scenes, datasets and versions in the catalogue")
    ds = p.add_subparsers(dest="dataset_command", required=True)

    def cmd(name: str, help_: str, func) -> argparse.ArgumentParser:
        c = ds.add_parser(name, help=help_, description=help_)
        c.add_argument("--json", action="store_true", help="print JSON")
        c.set_defaults(func=func)
        return c

    c = cmd("create", "create a dataset SCENE/NAME (the scene is created when new)", cmd_create)
    c.add_argument("dataset", metavar="SCENE/NAME")
    c.add_argument("--note", default="", help="free-text note")
    c.add_argument("--tags", default="", help="comma-separated tags")
    c.add_argument("--language", default="", help="main language, e.g. zh, en, zh+en")
    c.add_argument("--licence", default="", help="licence of the data")
    c.add_argument("--source", default="", help="where the data comes from")

    c = cmd(
        "import", "import FILE as the next version of SCENE/NAME (bad records go to quarantine)", cmd_import
    )
    c.add_argument("dataset", metavar="SCENE/NAME")
    c.add_argument("file", metavar="FILE", help="file or directory (or a lake URI)")
    c.add_argument("--usage", required=True, choices=get_args(Usage), help="what the data is for")
    c.add_argument("--format", default="auto", choices=get_args(InputFormat), help="input format")
    c.add_argument("--recipe", default="import-only", help="operator recipe run on import")
    c.add_argument("--source-label", default=None, help="meta.source of the records (default: file name)")
    c.add_argument(
        "--field-map", action="append", metavar="CANONICAL=SOURCE", help="map a source field (repeatable)"
    )
    c.add_argument("--max-reject-ratio", type=float, default=0.1, help="fail above this quarantine share")
    c.add_argument("--note", default="", help="note kept on the version")
    c.add_argument("--tags", default="", help="comma-separated version tags")
    c.add_argument("--run-key", default=None, help="idempotency key: a retry with the same key commits once")
    c.add_argument(
        "--modality", choices=("text", "image"), default="text", help="image: vision Q&A with images"
    )
    c.add_argument("--unlabelled", action="store_true", help="the records hold questions only (no target)")
    c.add_argument(
        "--encoding", choices=("utf-8", "gb18030"), default="utf-8", help="text encoding of the files"
    )
    c.add_argument("--no-quality", action="store_true", help="skip the quality report and expectation suite")
    c.add_argument("--tokenizer", default=None, help="tokenizer.json or HF tokenizer dir counting tokens")

    c = cmd(
        "mix", "mix two or more versions into the next version of SCENE/NAME (by dataset or by tag)", cmd_mix
    )
    c.add_argument("dataset", metavar="SCENE/NAME", help="target dataset (created when new)")
    c.add_argument(
        "--part",
        action="append",
        required=True,
        metavar="KEY=VALUE,...",
        help="a share: ref=SCENE/NAME@Vn or tags=a+b, with ratio=R, count=N or role=ROLE (with --preset); "
        "repeat for each part",
    )
    c.add_argument(
        "--by", choices=("dataset", "tag"), default="dataset", help="parts are versions or tag selectors"
    )
    c.add_argument(
        "--input", action="append", metavar="REF", help="by tag: a version the tag parts select from"
    )
    c.add_argument(
        "--preset",
        default=None,
        help="pretrain-industry-general (1:6), sft-industry-general (1:3) or distill (1:1:1)",
    )
    c.add_argument("--total", type=int, default=None, help="target size of the mix (ratios)")
    c.add_argument("--baseline", default=None, help="the part kept whole; the others scale to it (ratios)")
    c.add_argument("--seed", type=int, default=0, help="sampling seed: same spec, same records")
    c.add_argument(
        "--sampling", choices=("down", "up", "both"), default=None, help="may drop / repeat records"
    )
    c.add_argument("--note", default="", help="note kept on the version")
    c.add_argument("--run-key", default=None, help="idempotency key: a retry with the same key commits once")

    c = cmd(
        "publish",
        "export a version (format, split) atomically and make it selectable for training",
        cmd_publish,
    )
    c.add_argument("ref", metavar="SCENE/NAME@Vn")
    c.add_argument(
        "--format", choices=("standard", "openai", "sharegpt"), default="standard", help="export format"
    )
    c.add_argument("--visibility", choices=("private", "public"), default="private", help="who may select it")
    split = c.add_mutually_exclusive_group()
    split.add_argument("--validation-ratio", type=float, default=None, help="share held out for validation")
    split.add_argument("--validation-count", type=int, default=None, help="records held out for validation")
    c.add_argument("--seed", type=int, default=0, help="split seed")
    c.add_argument(
        "--override-reason", default=None, help="publish despite a failed quality suite (recorded)"
    )
    c.add_argument("--user", default=None, help="who publishes (recorded with an override)")

    c = cmd("list", "list datasets", cmd_list)
    c.add_argument("scene", nargs="?", default=None, help="only this scene")

    c = cmd("show", "show a dataset with its versions (SCENE/NAME) or one version (SCENE/NAME@Vn)", cmd_show)
    c.add_argument("ref", metavar="SCENE/NAME[@Vn]")

    c = cmd("preview", "print the first records of a version (and of its quarantine)", cmd_preview)
    c.add_argument("ref", metavar="SCENE/NAME[@Vn]")
    c.add_argument("-n", "--limit", type=int, default=5, help="records to show (1-100)")

    c = cmd("lineage", "print the chain a version comes from: parents, recipes, operator counts", cmd_lineage)
    c.add_argument("ref", metavar="SCENE/NAME@Vn")
    c.add_argument("--models", action="store_true", help="also list model versions trained on it (MLflow)")
