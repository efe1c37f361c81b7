"""The contact benchmark (see benches/README.md).

Generates N traces with `tracecube gen`, loads them with `tracecube load` (timed: the load
includes the cube refresh), serves the warehouse, and runs a fixed set of dashboard
questions over the PostgreSQL protocol with cubes on and off, and with DuckDB over the
same Parquet data files of `traces`. Each question runs warm, R times; the harness
checks that the three give the same answers and writes a Markdown table.
"""

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wire import free_port, normal, same  # noqa: E402

WEIGHTS = [("category", "avoidable", 2.0), ("category", "selfcare", 1.5),
           ("category", "mandatory", 1.0), ("category", "help", 1.0)]
SLAS = {"phone": 90, "chat": 60, "email": 172800, "mail": 1728000, "social": 86400}

# DuckDB spellings of Tracecube's functions.
def d_prefix(col, n):
    return f"array_to_string(string_split({col}, '/')[1:{n}], '/')"

D_WEIGHT = "(CASE category " + " ".join(
    f"WHEN '{k}' THEN {w}" for _, k, w in WEIGHTS) + " ELSE 1.0 END)"
D_SLA = "(CASE channel " + " ".join(f"WHEN '{c}' THEN {s}" for c, s in SLAS.items()) + " END)"
D_CSAT = "100.0 * count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0)"
D_NPS = ("100.0 * (count(*) FILTER (WHERE nps >= 9) - count(*) FILTER (WHERE nps <= 6))"
         " / nullif(count(nps), 0)")
D_SL = (f"100.0 * count(*) FILTER (WHERE {D_SLA} IS NOT NULL AND wait_s IS NOT NULL AND NOT abandoned"
        f" AND wait_s <= {D_SLA}) / nullif(count(*) FILTER (WHERE {D_SLA} IS NOT NULL AND wait_s IS NOT NULL), 0)")


def questions(p):
    """(name, Tracecube SQL, DuckDB SQL, runs override) with the period bounds `p`."""
    return [
        ("volume by declaration level 1, last 30 days",
         f"SELECT path_prefix(declaration, 1) AS d, count(*) AS contacts FROM traces "
         f"WHERE day >= DATE '{p['d30']}' GROUP BY 1",
         f"SELECT {d_prefix('declaration', 1)} AS d, count(*) AS contacts FROM traces "
         f"WHERE day >= DATE '{p['d30']}' GROUP BY 1", None),
        ("level 2 under one node × qualification level 1, 30 days",
         f"SELECT path_prefix(declaration, 2) AS d, path_prefix(qualification, 1) AS q, count(*) AS contacts, "
         f"sum(cost) AS cost FROM traces WHERE path_is_under(declaration, 'Delivery') AND day >= DATE '{p['d30']}' "
         f"GROUP BY 1, 2",
         f"SELECT {d_prefix('declaration', 2)} AS d, {d_prefix('qualification', 1)} AS q, count(*) AS contacts, "
         f"sum(cost) AS cost FROM traces WHERE (declaration = 'Delivery' OR declaration LIKE 'Delivery/%') "
         f"AND day >= DATE '{p['d30']}' GROUP BY 1, 2", None),
        ("leaves under one level-2 node × qualification, all year",
         "SELECT declaration, qualification, count(*) AS contacts, csat(csat) AS csat FROM traces "
         "WHERE path_is_under(declaration, 'Delivery/Tracking') GROUP BY 1, 2",
         f"SELECT declaration, qualification, count(*) AS contacts, {D_CSAT} AS csat FROM traces "
         f"WHERE (declaration = 'Delivery/Tracking' OR declaration LIKE 'Delivery/Tracking/%') GROUP BY 1, 2", None),
        ("top-20 weighted-impact cells (3 axes), all year",
         "SELECT declaration, qualification, action, "
         "impact(declaration, qualification, action, channel, category, effort) AS impact "
         "FROM traces GROUP BY 1, 2, 3 ORDER BY impact DESC LIMIT 20",
         f"SELECT declaration, qualification, action, sum(effort * {D_WEIGHT}) AS impact "
         f"FROM traces GROUP BY 1, 2, 3 ORDER BY impact DESC LIMIT 20", None),
        ("service level by channel × day, 30 days",
         f"SELECT channel, day, service_level(channel, wait_s, abandoned) AS sl FROM traces "
         f"WHERE day >= DATE '{p['d30']}' GROUP BY 1, 2",
         f"SELECT channel, day, {D_SL} AS sl FROM traces WHERE day >= DATE '{p['d30']}' GROUP BY 1, 2", None),
        ("CSAT / NPS by life stage × relationship year, all year",
         "SELECT life_stage, tenure_year, csat(csat) AS csat, nps(nps) AS nps FROM traces GROUP BY 1, 2",
         f"SELECT life_stage, tenure_year, {D_CSAT} AS csat, {D_NPS} AS nps FROM traces GROUP BY 1, 2", None),
        ("last 2 hours by minute × channel (`WHERE ts >= TIMESTAMP …`)",
         f"SELECT minute, channel, count(*) AS contacts, avg(wait_s) AS wait FROM traces "
         f"WHERE ts >= TIMESTAMP '{p['h2']}' GROUP BY 1, 2",
         f"SELECT minute, channel, count(*) AS contacts, avg(wait_s) AS wait FROM traces "
         f"WHERE ts >= TIMESTAMPTZ '{p['h2']}+00' GROUP BY 1, 2", None),
        ("weekly trend by category, all year",
         "SELECT CAST(date_trunc('week', day) AS DATE) AS week, category, count(*) AS contacts, sum(cost) AS cost "
         "FROM traces GROUP BY 1, 2",
         "SELECT CAST(date_trunc('week', day) AS DATE) AS week, category, count(*) AS contacts, sum(cost) AS cost "
         "FROM traces GROUP BY 1, 2", None),
        ("drilldown('declaration', 'Delivery'): 8 KPIs, all year",
         "SELECT * FROM drilldown('declaration', 'Delivery')",
         f"""SELECT child, contacts, 100.0 * contacts / sum(contacts) OVER () AS share_pct, impact,
               100.0 * impact / nullif(sum(impact) OVER (), 0) AS impact_share_pct, csat_pct, nps,
               resolved_pct, aht_s, service_level_pct FROM (
             SELECT {d_prefix('declaration', 2)} AS child, count(*) AS contacts,
               sum(effort * {D_WEIGHT}) AS impact, {D_CSAT} AS csat_pct, {D_NPS} AS nps,
               avg(CASE WHEN resolved THEN 100.0 ELSE 0.0 END) AS resolved_pct, avg(handle_s) AS aht_s,
               {D_SL} AS service_level_pct
             FROM traces WHERE declaration LIKE 'Delivery/%' GROUP BY 1)""", None),
        ("avoidable cost by qualification level 2, all year",
         "SELECT path_prefix(qualification, 2) AS q, sum(cost) AS cost, count(*) AS contacts FROM traces "
         "WHERE category = 'avoidable' GROUP BY 1",
         f"SELECT {d_prefix('qualification', 2)} AS q, sum(cost) AS cost, count(*) AS contacts FROM traces "
         f"WHERE category = 'avoidable' GROUP BY 1", None),
        ("hour × weekday heat map, all year",
         "SELECT weekday, hour, count(*) AS contacts FROM traces GROUP BY 1, 2",
         "SELECT weekday, hour, count(*) AS contacts FROM traces GROUP BY 1, 2", None),
        ("channel transitions over 7-day journeys, all year",
         "SELECT from_channel, to_channel, contacts FROM channel_transitions",
         """SELECT prev_channel AS from_channel, channel AS to_channel, count(*) AS contacts FROM (
              SELECT channel, ts, lag(ts) OVER w AS prev_ts, lag(channel) OVER w AS prev_channel FROM traces
              WINDOW w AS (PARTITION BY customer_id, split_part(declaration, '/', 1) ORDER BY ts, contact_id))
            WHERE prev_ts IS NOT NULL AND prev_ts + INTERVAL 7 DAY >= ts GROUP BY 1, 2""", 3),
    ]


def timed(run, runs):
    run()  # warm
    times = []
    rows = None
    for _ in range(runs):
        t = time.perf_counter()
        rows = run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    return statistics.median(times), p95, [tuple(normal(v) for v in r) for r in rows]


def rss_mib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--work", default=None, help="work folder (default target/contactbench-<rows>)")
    ap.add_argument("--binary", required=True)
    ap.add_argument("--out", default=None, help="Markdown report (default <work>/report.md)")
    ap.add_argument("--only", default=None, help="run only questions whose name contains this")
    ap.add_argument("--skip", default=None, help="skip questions whose name contains this")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    work = Path(args.work or root / "target" / f"contactbench-{args.rows}")
    work.mkdir(parents=True, exist_ok=True)
    src, wh = work / "src", work / "wh"
    env = dict(os.environ, RUST_LOG="warn")
    figures = {}

    marker = work / "generated.json"
    if not marker.exists() or json.loads(marker.read_text()) != [args.rows, args.seed]:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(wh, ignore_errors=True)
        subprocess.run([args.binary, "gen", "--rows", str(args.rows), "--seed", str(args.seed),
                        "--out", str(src)], check=True, env=env)
        marker.write_text(json.dumps([args.rows, args.seed]))
    loaded = work / "loaded.json"
    if not loaded.exists():
        shutil.rmtree(wh, ignore_errors=True)
        files = sorted(str(p) for p in src.glob("*.parquet"))
        t = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", args.binary, "--warehouse", str(wh), "load", *files],
                                env=env, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"load failed:\n{err}")
        seconds = time.perf_counter() - t
        peak_kib = int(err.strip().splitlines()[-1])
        loaded.write_text(json.dumps({"seconds": seconds, "rows_per_s": args.rows / seconds,
                                      "peak_rss_mib": peak_kib / 1024}))
    figures["load"] = json.loads(loaded.read_text())

    port = free_port()
    server = subprocess.Popen([args.binary, "--warehouse", str(wh), "serve", "--no-demo", "--listen",
                               f"127.0.0.1:{port}"], env=env)
    try:
        conn = None
        for _ in range(600):
            try:
                conn = psycopg.connect(f"host=127.0.0.1 port={port} user=tracecube dbname=tracecube",
                                       autocommit=True)
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        if conn is None:
            sys.exit("the server did not start")
        figures["rss_start_mib"] = rss_mib(server.pid)
        cur = conn.cursor()
        cur.execute("DELETE FROM impact_weights")
        for axis, key, weight in WEIGHTS:
            cur.execute(f"INSERT INTO impact_weights VALUES ('{axis}', '{key}', {weight})")
        cur.execute("SELECT CAST(max(day) AS VARCHAR), to_char(max(minute) - INTERVAL '2 hours', '%Y-%m-%d %H:%M:%S') FROM traces")
        last_day, h2 = cur.fetchone()
        d30 = (dt.date.fromisoformat(last_day[:10]) - dt.timedelta(days=29)).isoformat()
        period = {"d30": d30, "h2": h2}
        cur.execute("SELECT name, rows, bytes, fresh FROM tracecube.cubes")
        figures["cubes"] = cur.fetchall()

        duck = duckdb.connect()
        duck.execute(f"SET threads = {os.cpu_count()}")
        duck.execute(f"CREATE VIEW traces AS SELECT * FROM read_parquet('{wh}/traces/*/*.parquet', "
                     f"hive_partitioning = true, hive_types = {{'day': DATE}})")

        # DuckDB on its own native tables: what a DuckDB user would do with the files.
        native = duckdb.connect(str(work / "duckdb-native.db"))
        native.execute(f"SET threads = {os.cpu_count()}")
        if not native.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'traces'").fetchone()[0]:
            t = time.perf_counter()
            native.execute(f"CREATE TABLE traces AS SELECT * FROM read_parquet('{wh}/traces/*/*.parquet', "
                           f"hive_partitioning = true, hive_types = {{'day': DATE}})")
            (work / "duckdb-native.json").write_text(json.dumps({"seconds": time.perf_counter() - t}))
        figures["native_load"] = json.loads((work / "duckdb-native.json").read_text())

        # The fixed cost of a query over the wire: a constant, and a one-row cube answer.
        cur.execute("SET tracecube.use_cubes = on")
        fixed = {}
        for label, sql in [("SELECT 1", "SELECT 1"),
                           ("one-row cube query", f"SELECT count(*) FROM traces WHERE channel = 'phone' "
                                                  f"AND day = DATE '{last_day[:10]}'")]:
            fixed[label] = timed(lambda: cur.execute(sql).fetchall(), 50)[:2]
        cur.execute("SELECT coalesce(cubes, '-') FROM tracecube.queries ORDER BY query_id DESC LIMIT 1")
        figures["fixed"] = (fixed, cur.fetchone()[0])

        def tracecube(sql, cubes):
            def run():
                cur.execute("SET tracecube.use_cubes = " + ("on" if cubes else "off"))
                cur.execute(sql)
                return cur.fetchall()
            return run

        results = []
        for name, tc_sql, duck_sql, runs in questions(period):
            if args.only and args.only not in name:
                continue
            if args.skip and args.skip in name:
                continue
            n = runs or args.runs
            on = timed(tracecube(tc_sql, True), n)
            cur.execute("SELECT coalesce(cubes, '-') FROM tracecube.queries ORDER BY query_id DESC LIMIT 1")
            cube = cur.fetchone()[0]
            off = timed(tracecube(tc_sql, False), n)
            dk = timed(lambda: duck.execute(duck_sql).fetchall(), n)
            dn = timed(lambda: native.execute(duck_sql).fetchall(), n)
            agree = same(on[2], off[2]) and same(off[2], dk[2]) and same(dk[2], dn[2])
            results.append((name, cube, on, off, dk, dn, agree, n))
            print(f"{name}: cubes {on[0]:.1f} ms ({cube}), off {off[0]:.1f} ms, duckdb {dk[0]:.1f} ms, "
                  f"duckdb native {dn[0]:.1f} ms, same answers: {agree}", flush=True)
        figures["rss_end_mib"] = rss_mib(server.pid)
        figures["rss_peak_mib"] = rss_mib(server.pid, "VmHWM")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    lines = [f"### contactbench: {args.rows:,} traces, {os.cpu_count()} cores, median / p95 of warm runs (ms)", "",
             "| question | cube | cubes on | cubes off | DuckDB (Parquet) | DuckDB (native table) "
             "| DuckDB ÷ on | native ÷ on | off ÷ DuckDB | same answers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, cube, on, off, dk, dn, agree, n in results:
        runs = "" if n == args.runs else f" ({n} runs)"
        lines.append(f"| {name}{runs} | {cube} | {on[0]:.1f} / {on[1]:.1f} | {off[0]:.1f} / {off[1]:.1f} | "
                     f"{dk[0]:.1f} / {dk[1]:.1f} | {dn[0]:.1f} / {dn[1]:.1f} | {dk[0] / on[0]:.1f}× | "
                     f"{dn[0] / on[0]:.1f}× | {off[0] / dk[0]:.2f}× | {'yes' if agree else '**no**'} |")
    fixed, fixed_cube = figures["fixed"]
    lines += ["", "Fixed cost per query over the wire (psycopg, median / p95 of 50, ms): " +
              ", ".join(f"{label} {m:.2f} / {p:.2f}" for label, (m, p) in fixed.items()) +
              f" (the one-row query answered by {fixed_cube})."]
    lines += [f"DuckDB native table built from the same Parquet in {figures['native_load']['seconds']:.1f} s."]
    load = figures["load"]
    lines += ["",
              f"Load (`tracecube load`, including the cube refresh): {load['seconds']:.1f} s, "
              f"{load['rows_per_s']:,.0f} rows/s, peak RSS {load['peak_rss_mib']:,.0f} MiB.",
              f"Server RSS: {figures['rss_start_mib']:,.0f} MiB after start, {figures['rss_end_mib']:,.0f} MiB "
              f"after the benchmark (peak {figures['rss_peak_mib']:,.0f} MiB).", "",
              "| cube | rows | bytes | fresh |", "|---|---|---|---|"]
    lines += [f"| {n} | {r:,} | {b:,} | {f} |" for n, r, b, f in figures["cubes"]]
    report = "\n".join(lines) + "\n"
    out = Path(args.out or work / "report.md")
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
