"""The Markdown page of a storage_formats.py result."""

from __future__ import annotations

from typing import Any, Dict, List

MIB = 2**20


def render_markdown(payload: Dict[str, Any]) -> str:
    machine, setup, load = payload["machine"], payload["setup"], payload["load_average"]
    versions = payload["versions"]
    lines = [
        "# Storage formats: Parquet (zstd) vs CSV for the processed splits",
        "",
        f"{payload['date']}, {machine['processor']}, {machine['platform']}, "
        f"{machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, pandas "
        f"{versions['pandas']}, pyarrow {versions['pyarrow']}, torch "
        f"{versions['torch']}. Load average (1, 5, 15 min) at the start "
        f"{_load(load['start'])}, at the end {_load(load['end'])}: the machine is "
        "shared with other work, which slows the timings (not the sizes, types or, "
        "much, the peak RSS). The whole benchmark took "
        f"{payload['wall_seconds'] / 60:.1f} min: `{setup['command']}`.",
        "",
        f"{setup['data']}. Writes are timed in one process with the pipeline's "
        "settings; every read is its own process, timed around the read, with its "
        f"peak RSS from {setup['peak_rss_tool']} (a process that only imports "
        f"peaks at {setup['import_baseline_peak_rss_mib']:,.0f} MiB). Medians of "
        f"{setup['repeats']} runs, {setup['large_repeats']} from "
        f"{setup['large_rows_from']:,} rows on; the formats alternate within each "
        "run. *Pipeline* reads use `read_split_columns` (CSV gets the schema's "
        "column types) into pandas; *Arrow* reads are the same typed read "
        "stopping at the Arrow table; *plain* reads are `pandas.read_csv` / "
        "`read_parquet` "
        "without a schema. The 3-column read takes "
        f"{', '.join(setup['three_columns'])}.",
        "",
        "## Size, write and read",
        "",
        "| rows | format | file MiB | bytes/row | write s | full read s | "
        "3-col read s | Arrow full read s | plain full read s | "
        "full read peak MiB | 3-col peak MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in payload["sizes"]:
        for fmt, result in size["formats"].items():
            reads = result["reads"]
            lines.append(
                f"| {size['rows']:,} | {fmt} | {result['file_bytes'] / MIB:,.1f} "
                f"| {result['bytes_per_row']:.1f} | {result['write_seconds']:.2f} "
                f"| {reads['full']['seconds']:.2f} "
                f"| {reads['three_columns']['seconds']:.2f} "
                f"| {reads['arrow_full']['seconds']:.2f} "
                f"| {reads['plain_pandas_full']['seconds']:.2f} "
                f"| {reads['full']['peak_rss_mib']:,.0f} "
                f"| {reads['three_columns']['peak_rss_mib']:,.0f} |"
            )
    lines += ["", "## CSV / Parquet ratios (side by side, same run)", ""]
    lines += [
        "| rows | runs | raw CSV MiB | size | write | full read | 3-col read | "
        "Arrow full read | plain full read | full read peak RSS | 3-col peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in payload["sizes"]:
        r = size["ratios_csv_over_parquet"]
        lines.append(
            f"| {size['rows']:,} | {size['repeats']} "
            f"| {size['raw_csv_bytes'] / MIB:,.1f} | {r['file_bytes']:.2f}x "
            f"| {r['write_seconds']:.2f}x | {r['full_seconds']:.2f}x "
            f"| {r['three_columns_seconds']:.2f}x "
            f"| {r['arrow_full_seconds']:.2f}x "
            f"| {r['plain_pandas_full_seconds']:.2f}x "
            f"| {r['full_peak_rss_mib']:.2f}x "
            f"| {r['three_columns_peak_rss_mib']:.2f}x |"
        )
    lines += ["", "## Do the column types survive?", ""]
    lines += _types(payload["sizes"][0])
    lines += ["", "## End to end: data_preprocessing.py + train.py train=quick", ""]
    lines += _end_to_end(payload["end_to_end"])
    return "\n".join(lines) + "\n"


def _load(values: List[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _types(size: Dict[str, Any]) -> List[str]:
    lines = [
        f"Kinds (float, integer, string) of each column after the read, against "
        f"the typed table; values compared exactly at {size['rows']:,} rows.",
        "",
        "| format | pipeline reader (with schema) | plain pandas (no schema) | "
        "values exact (pipeline reader) |",
        "|---|---|---|---|",
    ]
    for fmt, result in size["formats"].items():
        changed = result["types_changed"]
        exact = result.get("values_round_trip_exact")
        lines.append(
            f"| {fmt} | {_changes(changed['pipeline'])} | {_changes(changed['plain'])} "
            f"| {'-' if exact is None else ('yes' if exact else 'no')} |"
        )
    return lines


def _changes(changed: Dict[str, str]) -> str:
    if not changed:
        return "all kept"
    return ", ".join(f"`{name}` {change}" for name, change in changed.items())


def _end_to_end(runs: List[Dict[str, Any]]) -> List[str]:
    if not runs:
        return ["Not run (`--e2e-rows` was empty)."]
    lines = [
        "Each step is its own process (wall-clock seconds, interpreter start-up and "
        "imports included); both formats start from the same raw CSV.",
        "",
        "| rows | runs | format | preprocess s | train s | total s | "
        "processed splits MiB | preprocess peak MiB | train peak MiB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for fmt, result in run["formats"].items():
            lines.append(
                f"| {run['rows']:,} | {run['repeats']} | {fmt} "
                f"| {result['preprocess_seconds']:.1f} "
                f"| {result['train_seconds']:.1f} | {result['total_seconds']:.1f} "
                f"| {result['processed_split_bytes'] / MIB:,.2f} "
                f"| {result['preprocess_peak_rss_mib']:,.0f} "
                f"| {result['train_peak_rss_mib']:,.0f} |"
            )
    lines.append("")
    lines += [
        f"CSV / Parquet total time at {run['rows']:,} rows: "
        f"{run['ratio_csv_over_parquet_total_seconds']:.2f}x."
        for run in runs
    ]
    return lines
