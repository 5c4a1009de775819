"""The model card of a registered version: generated from what the CT run recorded, never written by hand.

Sections: intended use (from the spec), training data (window, rows, content hash, validation result),
metrics (overall, per slice, per group), feature importance, fairness, the gate decision and the champion the
version was judged against, and the known limitations the spec states. :func:`build_card` is pure (dicts in,
Markdown out); :func:`log_card` reads the run's evaluation and validation artifacts, logs ``model_card.md``
and ``model_card.html`` to the run and tags the version with where they are.
"""

from __future__ import annotations

import html
from typing import Any

from mlops_airflow.core.gate import fairness_limit
from mlops_airflow.core.spec import ModelSpec

SECTIONS = (
    "Intended use",
    "Training data",
    "Metrics",
    "Feature importance",
    "Fairness",
    "Gate decision",
    "Known limitations",
)
CARD_MD = "model_card/model_card.md"
CARD_HTML = "model_card/model_card.html"
#: Version tag holding the card's artifact URI.
CARD_TAG = "mlops.model_card"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _fairness_verdict(item: dict[str, Any], excused: set[str]) -> str:
    if item["value"] is not None and item["value"] <= item["max"]:
        return "pass"
    return "over max, less than the champion" if fairness_limit(item) in excused else "fail"


def build_card(
    spec: ModelSpec,
    *,
    version: str,
    run_id: str,
    snapshot: dict[str, Any],
    decision: dict[str, Any],
    evaluation: dict[str, Any],
    validation: dict[str, Any] | None,
) -> str:
    """The card as Markdown.

    :param snapshot: the ``snapshot`` task's XCom (hash, rows, batches).
    :param decision: the gate decision (``GateDecision.to_dict``).
    :param evaluation: the ``evaluate_vs_champion`` output (metrics, slices, importance, fairness).
    :param validation: the data validation summary, or ``None`` when the run has none.
    """
    card = spec.model_card
    lines = [f"# Model card: {spec.name} version {version}", "", spec.description or "", ""]
    lines += [
        f"- Task: {spec.kind}; label `{spec.label.name}`"
        + (f" (classes {spec.classes}, positive {spec.positive_label!r})" if spec.is_classifier else ""),
        f"- Estimator: `{spec.estimator.cls}`; primary metric `{spec.primary}`",
        f"- Owner: {spec.owner}; MLflow run `{run_id}`",
        "",
        "## Intended use",
        "",
        card.intended_use.strip() or "_The spec states no intended use (`model_card.intended_use`)._",
        "",
        "## Training data",
        "",
        f"- Window: {spec.window.describe()} ({snapshot.get('batches')} batch(es) in the snapshot; "
        f"evaluation: {', '.join(snapshot.get('eval_batches') or []) or '-'})",
        f"- Rows: {snapshot.get('train_rows')} training, {snapshot.get('eval_rows')} evaluation",
        f"- Content hash: `{snapshot.get('content_hash')}`",
        f"- Snapshot: `{snapshot.get('snapshot_uri')}`",
    ]
    if validation is None:
        lines.append("- Validation: passed (the run reached registration; no summary recorded)")
    else:
        lines.append(
            f"- Validation: {'passed' if validation.get('success') else 'failed'} "
            f"({validation.get('expectations')} expectations, {validation.get('failed_count', 0)} failed)"
        )
    lines += ["", "## Metrics", "", "Overall, on the evaluation rows:", ""]
    candidate, champion = evaluation.get("candidate") or {}, evaluation.get("champion")
    lines += _table(
        ["metric", "this version", "champion judged against"],
        [[m, candidate.get(m), None if champion is None else champion.get(m)] for m in candidate],
    )
    slices = evaluation.get("slices") or {}
    lines += ["", f"Per slice ({spec.primary}):", ""]
    if slices:
        lines += _table(
            ["slice", "rows", "this version", "champion"],
            [[k, v.get("n"), v.get("candidate"), v.get("champion")] for k, v in sorted(slices.items())],
        )
    else:
        lines.append("_No slices computed (none in the spec, or no champion to compare with)._")
    fairness = evaluation.get("fairness") or []
    lines += ["", "Per group:", ""]
    if fairness:
        for item in fairness:
            columns = list(dict.fromkeys([item["rate"], item["primary"]]))
            lines += [f"`{item['attribute']}`:", ""]
            lines += _table(
                ["group", "rows", *columns],
                [[g, v["n"], *(v["candidate"].get(c) for c in columns)] for g, v in item["groups"].items()],
            )
            lines.append("")
    else:
        lines.append("_No sensitive attributes in the spec (`fairness`)._")
    lines += ["", "## Feature importance", ""]
    importance = evaluation.get("importance") or []
    if importance:
        lines += [f"Permutation importance: drop of `{spec.primary}` when the feature is shuffled.", ""]
        basis = importance[0].get("basis")
        if basis is not None:
            lines += [f"Change against the champion's importance {basis}.", ""]
        lines += _table(
            ["rank", "feature", "importance", "std", "champion at registration", "champion on today's rows", "change"],
            [
                [
                    r["candidate_rank"],
                    r["feature"],
                    r["candidate"],
                    r["candidate_std"],
                    r.get("champion_registered"),
                    r.get("champion_today"),
                    r["change"],
                ]
                for r in importance
            ],
        )
    else:
        lines.append("_Not computed._")
    lines += ["", "## Fairness", ""]
    # Limits this version was blessed over because the champion broke them more (gate.fairness_violations).
    excused = {v["limit"] for v in decision.get("fairness_violations") or []}
    if fairness:
        lines += _table(
            ["criterion", "attribute", "value", "max", "champion", "verdict", "detail"],
            [
                [
                    f["metric"],
                    f["attribute"],
                    f["value"],
                    f["max"],
                    f["champion_value"],
                    _fairness_verdict(f, excused),
                    f["detail"],
                ]
                for f in fairness
            ],
        )
    else:
        lines.append("_No fairness criteria in the spec (`fairness`)._")
    against = decision.get("champion_version")
    lines += [
        "",
        "## Gate decision",
        "",
        f"- Blessed: {str(bool(decision.get('blessed'))).lower()}",
        f"- Judged against: {'champion version ' + str(against) if against else 'no champion (first run)'}",
        f"- Reason: {decision.get('reason', '')}",
        "",
    ]
    lines += _table(
        ["check", "value", "bound", "verdict"],
        [[c["name"], c.get("value"), c.get("bound"), c["verdict"]] for c in decision.get("checks", [])],
    )
    lines += ["", "## Known limitations", ""]
    if card.limitations:
        lines += [f"- {item}" for item in card.limitations]
    else:
        lines.append("_The spec states no limitations (`model_card.limitations`)._")
    return "\n".join(lines) + "\n"


def to_html(markdown: str, title: str) -> str:
    """A self-contained HTML page of the card (headings, lists, tables, paragraphs; text escaped)."""
    body: list[str] = []
    table: list[list[str]] = []
    in_list = False

    def flush_table() -> None:
        if not table:
            return
        head, *rows = table
        body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>")
        body.extend("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        body.append("</tbody></table>")
        table.clear()

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("|"):
            cells = [html.escape(c.strip().replace("\\|", "|")) for c in line.strip("|").split(" | ")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        if in_list and not line.startswith("- "):
            body.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    if in_list:
        body.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _load_json(client: Any, run_id: str, path: str) -> Any | None:
    """A JSON artifact of the run (:func:`~mlops_airflow.core.tracking.load_json`), None when it has none.

    :raises ArtifactError: the file is larger than the cap, not UTF-8 or not JSON: a card is not made from it.
    """
    from mlops_airflow.core.tracking import load_json

    return load_json(client, run_id, path)


def card_uri(run_id: str, path: str = CARD_MD) -> str:
    return f"runs:/{run_id}/{path}"


def log_card(
    client: Any,
    spec: ModelSpec,
    *,
    run_id: str,
    version: str,
    snapshot: dict[str, Any],
    decision: dict[str, Any],
) -> str:
    """Generate the card of ``version`` from its CT run, log it (Markdown and HTML) and tag the version.

    Idempotent: a retry overwrites the same artifacts and tag. :return: the Markdown.
    """
    evaluation = _load_json(client, run_id, "evaluation/comparison.json")
    if evaluation is None:
        raise RuntimeError(f"{spec.name} v{version}: run {run_id} has no evaluation/comparison.json for its card")
    validation = _load_json(client, run_id, "validation/summary.json")
    markdown = build_card(
        spec,
        version=version,
        run_id=run_id,
        snapshot=snapshot,
        decision=decision,
        evaluation=evaluation,
        validation=validation,
    )
    client.log_text(run_id, markdown, CARD_MD)
    client.log_text(run_id, to_html(markdown, f"{spec.name} v{version}"), CARD_HTML)
    client.set_model_version_tag(spec.name, version, CARD_TAG, card_uri(run_id))
    return markdown
