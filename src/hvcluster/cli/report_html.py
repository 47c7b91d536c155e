"""A validation report as one self-contained HTML page (no scripts, no outside resources),
to keep or to hand on, as a failover cluster's validation report is."""

from __future__ import annotations

import time
from html import escape

from hvcluster.models.validation import Category, CheckStatus, ValidationReport

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .4em; text-transform: capitalize; }
.meta { color: #666; margin-bottom: 1em; }
.summary span { display: inline-block; padding: .2em .7em; margin-right: .5em; border-radius: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35em .6em; }
th, td { border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; }
td.status { font-weight: bold; text-transform: uppercase; width: 4.5em; }
.pass { color: #17692c; } .warn { color: #8a5a00; } .fail { color: #b00020; }
span.pass { background: #e3f4e6; } span.warn { background: #fdf0d5; }
span.fail { background: #fbe0e4; }
td.action { color: #444; }
"""


def render(report: ValidationReport) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report.time))
    counts = {s: report.count(s) for s in CheckStatus}
    verdict = "FAILED" if report.failed else "passed"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hvcluster validation: {escape(report.cluster)} ({verdict})</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Cluster validation: {escape(report.cluster)} &mdash; {verdict}</h1>",
        f'<p class="meta">Run by the agent on {escape(report.served_by)} at {escape(when)}, '
        f"in {report.duration_ms:.0f} ms.</p>",
        '<p class="summary">'
        + "".join(
            f'<span class="{s.value}">{counts[s]} {_label(s, counts[s])}</span>'
            for s in CheckStatus
        )
        + "</p>",
    ]
    for category in Category:
        rows = [c for c in report.checks if c.category is category]
        if not rows:
            continue
        parts.append(f"<h2>{escape(category.value)}</h2>")
        parts.append(
            "<table><tr><th>Status</th><th>Check</th><th>Result</th><th>What to do</th></tr>"
        )
        for c in rows:
            parts.append(
                f'<tr><td class="status {c.status.value}">{c.status.value}</td>'
                f"<td>{escape(c.name)}</td><td>{escape(c.message)}</td>"
                f'<td class="action">{escape(c.action)}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _label(status: CheckStatus, count: int) -> str:
    if status is CheckStatus.PASS:
        return "passed"
    if status is CheckStatus.WARN:
        return "warning" if count == 1 else "warnings"
    return "failed"
