"""The stats report: tables (Parquet + CSV) and report.md / report.html around the figures.

The sections (what each says, which figures it draws) are in pipeline.stats.sections, in
order; this module renders them: report.md links the figures from ``figures/``, report.html
embeds them as base64 PNG so that it is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import asdict

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.stats.options import StatsOptions
from pipeline.stats.result import StatsResult
from pipeline.stats.sections import SECTIONS, ReportContext, Section, build_sections
from pipeline.stats.selection import pooled_threat_models

__all__ = ["SECTIONS", "Section", "build_sections", "render_html", "render_markdown", "write_report", "write_tables"]

TITLE = "filterlens robustness statistics"
CSS = ("body{font-family:sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;line-height:1.4}"
       "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}"
       "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f3f3f3}td.n{text-align:right}"
       "table.headline{font-size:14px}table.headline td{white-space:nowrap}"
       "table.headline td:last-child{white-space:normal}"
       "figure{margin:1em 0}img{max-width:100%;height:auto;display:block}"
       "figcaption{font-size:13px;color:#444;margin-top:0.3em}")


def write_tables(result: StatsResult, out_dir: str) -> None:
    """Every table as ``tables/<name>.parquet`` and ``tables/<name>.csv``."""
    directory = os.path.join(out_dir, "tables")
    os.makedirs(directory, exist_ok=True)
    for name, frame in result.tables.items():
        frame = frame.copy()
        for column in frame.columns:  # lists/arrays (e.g. pca_sum) do not belong in CSV; keep Parquet exact
            if frame[column].dtype == object and len(frame) and isinstance(frame[column].iloc[0], (list, np.ndarray)):
                frame[column] = frame[column].map(lambda v: None if v is None else list(v))
        frame.to_parquet(os.path.join(directory, f"{name}.parquet"), index=False)
        frame.to_csv(os.path.join(directory, f"{name}.csv"), index=False)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def html_table(frame: pd.DataFrame, css_class: str = "") -> str:
    """An HTML table (``css_class`` e.g. ``headline``)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    def td(value: object) -> str:
        numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        return f"<td class='n'>{html.escape(_cell(value))}</td>" if numeric else f"<td>{html.escape(_cell(value))}</td>"

    rows = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>" for row in frame.itertuples(index=False))
    attr = f" class='{css_class}'" if css_class else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_markdown(title: str, sections: list[Section], out_dir: str) -> str:
    """report.md: the sections with figures linked from ``figures/``."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        lines += [f"- {b}" for b in s.bullets] + ([""] if s.bullets else [])
        for caption, frame in s.tables:
            lines += [f"**{caption}**", "", markdown_table(frame), ""]
        for caption, path in s.figures:
            alt = caption.split(":")[0]
            lines += [f"![{alt}]({os.path.relpath(path, out_dir)})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def render_html(title: str, sections: list[Section]) -> str:
    """report.html: one self-contained page, figures embedded as base64 PNG."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<section id='{html.escape(s.anchor)}'><h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
        for caption, frame in s.tables:
            parts.append(f"<p><b>{html.escape(caption)}</b></p>{html_table(frame, s.table_class)}")
        for caption, path in s.figures:
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            name = os.path.splitext(os.path.basename(path))[0]
            parts.append(f"<figure id='fig-{html.escape(name)}'><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: StatsResult, out_dir: str, root: str, options: StatsOptions) -> None:
    """report.md, report.html and run.json (selection, coefficient range, timings, options)."""
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump({"dataset": root, "selection": result.selection, "filterlens": __version__,
                   "models": len(result.tables["models"]),
                   "pooled_threat_models": pooled_threat_models(result.tables["models"]),
                   "coefficient_range": result.coefficient_range,
                   "timings": result.timings, "notes": result.notes, "options": asdict(options)}, f, indent=2,
                  default=str)
    sections = build_sections(ReportContext(result, out_dir, root, options))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(TITLE, sections, out_dir))
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(render_html(TITLE, sections))
