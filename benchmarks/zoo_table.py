"""The zoo tier's figures as tables: every verb on every zoo model (tests/zoo).

    python benchmarks/zoo_table.py [--cache .zoo-cache] [--run] [--docs docs/zoo.md] [--findings tests/zoo/FINDINGS.md]

--run runs every applicable verb first (tests/zoo/verbs.py, the same code test_zoo.py runs); without
it the results stored in <cache>/runs/ by the last `make test-zoo` (or --run) are read. --docs
rewrites the table between the markers of docs/zoo.md; --findings writes the findings matrix with
the exact commands; with neither the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.zoo import measure, verbs  # noqa: E402
from tests.zoo.build import DEFAULT_CACHE, load_manifest  # noqa: E402

BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def results(cache: Path, manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in manifest:
        for verb in entry["verbs"]:
            path = cache / "runs" / entry["name"] / f"{verb.replace(':', '-')}.json"
            if path.exists():
                r = json.loads(path.read_text())
                if r.get("stderr_tail") and isinstance(r.get("exit"), int):
                    r["message"] = verbs.message("\n".join(r["stderr_tail"]), r["exit"]) or r["message"]
                if isinstance(r.get("exit"), int):
                    r["verdict"], r["why"] = verbs.judge(entry, r)  # today's bar on the stored figures
                out.append(r)
            else:
                out.append(
                    {"model": entry["name"], "verb": verb, "exit": None, "verdict": "not run", "why": "", "message": ""}
                )
    return out


def score_text(r: dict[str, Any]) -> str:
    q = r.get("quality") or {}
    if "score" not in q:
        return "–"
    preferred = ("sequence_agreement", "within_1", "agreement", "iou", "cosine")
    name = next((k for k in preferred if k in q), None)
    if name is None:  # multi-output: the worst output
        name = min((k for k in q if k.startswith("out")), key=lambda k: q[k], default="score")
    text = f"{name} {q['score']:.3f}"
    if "accuracy" in q:
        text += f" (acc {q['accuracy']:.3f} vs {q['accuracy_float']:.3f})"
    return text


def fmt_ratio(value: Any, suffix: str = "×") -> str:
    return "–" if value is None else f"{value:.2f}{suffix}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def models_table(cache: Path, manifest: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | package | format | kind | size | data (rows: data / eval) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in manifest:
        data = measure.input_arrays(cache / e["data"])
        ev = measure.input_arrays(cache / e["eval"])
        size = measure.size_of(cache / e["file"])
        lines.append(
            f"| {e['name']} | {e['package']} | {e['format']} | {e['kind']} | {size / 1e6:.2f} MB | "
            f"{measure.rows_of(data)} / {measure.rows_of(ev)}{' labelled' if e.get('labelled') else ''} | {cell(e.get('notes', ''))} |"
        )
    return lines


def figures_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | verb | exit | bar | quality vs float | size | latency | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r.get("latency_ratio")
        lat_text = fmt_ratio(lat) + ("" if lat is None or r.get("same_runtime", True) else " (other runtime)")
        size = r.get("size_ratio")
        if r["verb"].startswith("inspect") and "params_reported" in r:
            reported, counted = r["params_reported"], r.get("params_counted")
            size_text = f"params {reported if reported is None else f'{reported:,}'} (counted {counted if counted is None else f'{counted:,}'})"
        else:
            size_text = fmt_ratio(size)
            if r.get("params_ratio") is not None:
                size_text += f", params {r['params_ratio']:.2f}×"
        lines.append(
            f"| {r['model']} | {r['verb']} | {r['exit']} | {r['verdict']} | {score_text(r)} | {size_text} | {lat_text} | {cell(r.get('why', ''))} |"
        )
    return lines


def per_verb(rows: list[dict[str, Any]]) -> list[str]:
    """One line per verb: how many models pass, refuse, fail."""
    out = ["| verb | models | pass | of which refused | fail |", "|---|---|---|---|---|"]
    for verb in sorted({r["verb"] for r in rows}):
        mine = [r for r in rows if r["verb"] == verb]
        passed = [r for r in mine if r["verdict"] == "pass"]
        refused = [r for r in passed if str(r.get("why", "")).startswith("refused")]
        out.append(
            f"| {verb} | {len(mine)} | {len(passed)} | {len(refused)} | {sum(r['verdict'] == 'fail' for r in mine)} |"
        )
    return out


def findings(cache: Path, manifest: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    failing = [r for r in rows if r["verdict"] == "fail"]
    refused = [r for r in rows if r["verdict"] == "pass" and str(r.get("why", "")).startswith("refused")]
    out = [
        "# Zoo findings: every verb on every third-party model",
        "",
        "Written by `python benchmarks/zoo_table.py --findings tests/zoo/FINDINGS.md` from the results of",
        "`make test-zoo` (tests/zoo/verbs.py). Every command runs in the zoo cache folder (`.zoo-cache/`,",
        "built by `python -m tests.zoo.build`), with `.venv/bin/edgecli` as `edgecli`. Quality, size and",
        "latency are the zoo's own measurements (onnxruntime / LiteRT / Keras / torch), against the float",
        "model on `eval.npz`: size and latency against the float file in the artifact's runtime (the source, or",
        "the entry's `baseline.onnx` / `baseline.tflite`), latency p50 interleaved, 1 thread, batch 1.",
        "The bar is issue 19's (tests/zoo/verbs.py `judge`): `pass` = meets it or refuses with exit 1/4.",
        "",
        f"{len(rows)} runs: {sum(r['verdict'] == 'pass' for r in rows)} pass "
        f"({len(refused)} of them refusals, exit 1/4), {len(failing)} fail, "
        f"{sum(r['verdict'] == 'not run' for r in rows)} not run.",
        "",
        *per_verb(rows),
        "",
        "## Matrix",
        "",
        *figures_table(rows),
        "",
        "## Failures: exact commands and messages",
        "",
    ]
    for r in failing:
        out += [
            f"- **{r['model']} {r['verb']}**: {r['why']}",
            f"  `{r['command']}` → exit {r['exit']}: {cell(r['message'])}",
        ]
    out += ["", "## Refusals (exit 1/4: the bar accepts them, the model still does not get the verb)", ""]
    for r in refused:
        out += [f"- **{r['model']} {r['verb']}**: `{r['command']}` → exit {r['exit']}: {cell(r['message'])}"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--run", action="store_true", help="run every verb first")
    parser.add_argument("--docs", type=Path, help="rewrite the table in this Markdown file (between its markers)")
    parser.add_argument("--findings", type=Path, help="write the findings matrix here")
    args = parser.parse_args(argv)
    cache = args.cache.resolve()
    manifest = load_manifest(cache)
    if args.run:
        for entry in manifest:
            for verb in entry["verbs"]:
                verbs.run(cache, entry, verb)
    rows = results(cache, manifest)
    table = "\n".join(
        [
            "### Models",
            "",
            *models_table(cache, manifest),
            "",
            "### Every verb on every model",
            "",
            *figures_table(rows),
        ]
    )
    if args.docs:
        text = args.docs.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        args.docs.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))
    if args.findings:
        args.findings.write_text(findings(cache, manifest, rows))
    if not args.docs and not args.findings:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
