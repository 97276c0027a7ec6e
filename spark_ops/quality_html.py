"""The quality report as one self-contained HTML page: inline SVG bar charts, no scripts, no external files.

Pure Python over the report dict of :func:`spark_ops.quality.quality_report`, so it renders anywhere (a
browser from the lake, the console) and is tested without Spark.
"""

from __future__ import annotations

from html import escape
from typing import Any

BAR = "#4878d0"
BAD = "#d65f5f"
GOOD = "#6acc64"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; margin-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
td, th { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #b42318; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; } figure { margin: 0; }
figcaption { font-size: .85rem; color: #555; } code { font-size: .85rem; }
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def _pct(share: float) -> str:
    return f"{share * 100:.2f}%"


def bar_chart(chart_id: str, title: str, labels: list[str], values: list[float], color: str = BAR) -> str:
    """A vertical bar chart (histogram) as an inline ``<svg>``; each bar carries its count as a tooltip."""
    width, height, left, bottom, top = 560, 220, 48, 56, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    vmax = max(values, default=0) or 1
    n = max(len(values), 1)
    step = plot_w / n
    parts = [
        f'<svg class="chart" data-chart="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{_fmt(int(vmax))}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * v / vmax
        x = left + i * step
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{escape(label)}: {_fmt(v)}</title></rect>'
        )
        if v and step >= 18:  # room for the count above the bar
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{top + plot_h - h - 2:.1f}" font-size="8" '
                f'text-anchor="middle">{_fmt(v)}</text>'
            )
        tx, ty = x + step / 2, top + plot_h + 10
        parts.append(
            f'<text x="{tx:.1f}" y="{ty}" font-size="9" text-anchor="end" '
            f'transform="rotate(-45 {tx:.1f} {ty})">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(chart_id: str, title: str, labels: list[str], values: list[float], notes: list[str]) -> str:
    """A horizontal bar chart (shares, counts per category) as an inline ``<svg>``."""
    row, left, width = 22, 120, 560
    height = row * max(len(values), 1) + 8
    vmax = max(values, default=0) or 1
    parts = [
        f'<svg class="chart" data-chart="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, (label, v, note) in enumerate(zip(labels, values, notes, strict=True)):
        y = 4 + i * row
        w = (width - left - 130) * v / vmax
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">{escape(label)}</text>'
        )
        parts.append(
            f'<rect class="bar" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{BAR}">'
            f"<title>{escape(label)}: {escape(note)}</title></rect>"
        )
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}" font-size="11">{escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for v in r:
            if isinstance(v, tuple):  # (html, css class): pre-rendered cell
                cells.append(f'<td class="{v[1]}">{v[0]}</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{_fmt(v)}</td>')
            else:
                cells.append(f"<td>{escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _ids(ids: list[str]) -> str:
    return ", ".join(f"<code>{escape(str(i))}</code>" for i in ids)


def _bucket_label(b: dict[str, Any]) -> str:
    lo, hi = b["lo"], b["hi"]
    if hi is None:
        return f"{lo:,}+"
    return f"{lo:,}" if hi - lo == 1 else f"{lo:,}-{hi - 1:,}"


def _validation(v: dict[str, Any]) -> str:
    status = '<span class="pass">passed</span>' if v["success"] else '<span class="fail">FAILED</span>'
    rows = []
    for e in v["expectations"]:
        ok = (
            ('<span class="pass">pass</span>', "") if e["success"] else ('<span class="fail">fail</span>', "")
        )
        detail = e["error"] or (_fmt(e["observed"]) if e["observed"] is not None else "")
        rows.append(
            [
                e["title"],
                e["name"],
                e["column"] or "",
                ok,
                e["unexpected_count"] if e["unexpected_count"] is not None else "",
                (_ids(e["examples"]), ""),
                detail,
            ]
        )
    params = ", ".join(f"{k}={_fmt(val)}" for k, val in sorted(v["parameters"].items()))
    return (
        f"<h2>Expectation suite <code>{escape(v['suite'])}</code>: {status}</h2>"
        f"<p>{v['evaluated'] - v['failed']} of {v['evaluated']} expectations met. "
        f"File: <code>{escape(str(v.get('suite_file') or ''))}</code>. Parameters: {escape(params or 'none')}.</p>"
        + _table(
            ["expectation", "type", "column", "result", "unexpected", "example ids", "observed / error"], rows
        )
    )


def render_report(report: dict[str, Any]) -> str:
    """The report as a standalone HTML page."""
    n = report["records"]
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Quality report: {escape(report['version_dir'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Quality report: <code>{escape(report['version_dir'])}</code></h1>",
        _table(
            ["usage", "records", "characters", "tokens", "tokens counted by", "seconds"],
            [
                [
                    report["usage"],
                    n,
                    report["chars"],
                    report["tokens"],
                    report["tokenizer"].get("path") or report["tokenizer"].get("description", ""),
                    report["seconds"],
                ]
            ],
        ),
    ]
    if report.get("validation"):
        out.append(_validation(report["validation"]))

    out.append("<h2>Lengths</h2>")
    for col, kinds in report["lengths"].items():
        out.append(f"<h3>{escape(col)}</h3>")
        rows = [
            [kind, d["min"], d["p50"], d["p90"], d["p99"], d["max"], d["mean"], d["sum"]]
            for kind, d in kinds.items()
        ]
        out.append(_table(["unit", "min", "p50", "p90", "p99", "max", "mean", "total"], rows))
        figs = []
        for kind, d in kinds.items():
            labels = [_bucket_label(b) for b in d["histogram"]]
            values = [b["count"] for b in d["histogram"]]
            title = f"{col}: records by length in {kind}"
            figs.append(
                _figure(bar_chart(f"{col}-{kind}", title, labels, values), title + " (power-of-two buckets)")
            )
        out.append(f"<div class='charts'>{''.join(figs)}</div>")

    for col, it in report.get("items", {}).items():
        title = f"{col}: {it['what']}"
        out.append(f"<h2>{escape(title.capitalize())}</h2>")
        out.append(
            f"<p>min {it['min']}, mean {it['mean']}, max {it['max']}; blank items: {_fmt(it['blank_items'])}.</p>"
        )
        labels = [h["label"] for h in it["histogram"]]
        out.append(
            _figure(bar_chart(f"{col}-items", title, labels, [h["count"] for h in it["histogram"]]), title)
        )

    langs = report["languages"]
    out.append("<h2>Languages</h2><p>By tag_language's character-class rule over the text columns.</p>")
    out.append(
        hbar_chart(
            "languages",
            "records by language",
            list(langs),
            [v["share"] for v in langs.values()],
            [f"{_pct(v['share'])} ({_fmt(v['count'])})" for v in langs.values()],
        )
    )

    d = report["duplicates"]
    out.append("<h2>Exact duplicates</h2>")
    out.append(
        f"<p>{_fmt(d['count'])} records ({_pct(d['share'])}) repeat another one, in {_fmt(d['groups'])} groups. "
        f"Key: {escape(d['key'])}.</p>"
    )
    if d["examples"]:
        out.append(
            _table(["copies", "example ids"], [[e["copies"], (_ids(e["ids"]), "")] for e in d["examples"]])
        )

    p = report["pii_left"]
    out.append("<h2>Personal data left</h2>")
    out.append(
        f"<p>{_fmt(p['total'])} matches in {_fmt(p['records'])} records ({_pct(p['share'])}), found by the "
        f"desensitize detectors (checksums validated) over {escape(', '.join(p['types_checked']))}.</p>"
    )
    if p["by_type"]:
        types = list(p["by_type"])
        out.append(
            hbar_chart(
                "pii",
                "personal data left by type",
                types,
                [p["by_type"][t]["count"] for t in types],
                [
                    f"{_fmt(p['by_type'][t]['count'])} in {_fmt(p['by_type'][t]['records'])} records"
                    for t in types
                ],
            )
        )
        out.append(
            _table(
                ["type", "matches", "records", "example ids"],
                [[t, v["count"], v["records"], (_ids(v["examples"]), "")] for t, v in p["by_type"].items()],
            )
        )
        out.append(
            _table(
                ["column", "matches by type"],
                [[c, ", ".join(f"{t}: {k}" for t, k in v.items()) or "-"] for c, v in p["by_column"].items()],
            )
        )

    e = report["empty"]
    out.append('<h2>Empty fields</h2><p>missing: null; empty: "" or []; blank: only whitespace.</p>')
    cols = list(e)
    out.append(
        hbar_chart(
            "empty",
            "records with an empty field",
            cols,
            [e[c]["share"] for c in cols],
            [f"{_pct(e[c]['share'])} ({_fmt(e[c]['total'])})" for c in cols],
        )
    )
    out.append(
        _table(
            ["column", "missing", "empty", "blank", "total", "share"],
            [[c, v["missing"], v["empty"], v["blank"], v["total"], _pct(v["share"])] for c, v in e.items()],
        )
    )
    out.append("</body></html>")
    return "\n".join(out)
