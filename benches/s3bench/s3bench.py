"""The object-storage benchmark (see benches/README.md, issue 13).

On the loopback S3 server of tests/s3 (Ceph radosgw): generates N traces in files of F rows
with `tracecube gen`, uploads them to s3://<bucket>/s3bench/exports/, loads them with
`tracecube load 's3://…/*.parquet'` into a warehouse on the same bucket (timed, peak RSS),
then serves that warehouse and times, over the PostgreSQL protocol, the first run of each
question after the server started and its repeated runs (median): with cubes, without
cubes (a scan of `traces` on S3), and over an external table on the exports.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wire import free_port, normal, same  # noqa: E402

QUESTIONS = [
    ("drilldown('declaration', 'Delivery')", "SELECT * FROM drilldown('declaration', 'Delivery')"),
    ("volume by declaration level 1",
     "SELECT path_prefix(declaration, 1) AS d, count(*) FROM traces GROUP BY 1 ORDER BY 1"),
    ("leaves under Delivery/Tracking × qualification, CSAT",
     "SELECT declaration, qualification, count(*), csat(csat) FROM traces "
     "WHERE path_is_under(declaration, 'Delivery/Tracking') GROUP BY 1, 2 ORDER BY 1, 2"),
]


def ms(t):
    return (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--file-rows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--scan-runs", type=int, default=5,
                    help="repeats of the questions that scan (no cubes, external table)")
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    bucket = "tracecube-test"  # the bucket tests/s3/up creates
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                      aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                      region_name=os.environ.get("AWS_REGION", "us-east-1"))
    env = dict(os.environ, RUST_LOG="warn", TRACECUBE_DEMO="false")

    src = work / f"src-{args.rows}-{args.file_rows}"
    if not (src / ".done").exists():
        subprocess.run(["rm", "-rf", str(src)], check=True)
        subprocess.run([args.binary, "gen", "--rows", str(args.rows), "--seed", "42",
                        "--file-rows", str(args.file_rows), "--out", str(src)], check=True, env=env)
        (src / ".done").touch()
    files = sorted(src.rglob("*.parquet"))
    total_bytes = sum(f.stat().st_size for f in files)
    prefix = f"s3bench/exports-{args.rows}-{args.file_rows}/"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
    if listed != len(files):
        t = time.perf_counter()
        for f in files:
            s3.upload_file(str(f), bucket, prefix + f.name)
        print(f"uploaded {len(files)} objects, {total_bytes / 1e6:.1f} MB in {ms(t) / 1e3:.1f} s")
    print(f"== source: {args.rows} traces in {len(files)} objects, {total_bytes / 1e6:.1f} MB")

    run_id = time.strftime("%Y%m%d-%H%M%S")
    wh = f"s3://{bucket}/s3bench/warehouse-{run_id}"
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", args.binary, "--warehouse", wh, "load",
                           f"s3://{bucket}/{prefix}*.parquet"], env=env, capture_output=True, text=True)
    wall = ms(t) / 1e3
    if proc.returncode != 0:
        sys.exit(f"the load failed:\n{proc.stdout}\n{proc.stderr}")
    peak_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024
    print(proc.stdout.strip())
    print(f"== load from S3 into {wh}: {wall:.1f} s, {args.rows / wall:,.0f} rows/s, "
          f"{total_bytes / 1e6 / wall:.1f} MB/s of Parquet, peak RSS {peak_mib:,.0f} MiB")

    local = work / "local-warehouse"
    subprocess.run(["rm", "-rf", str(local)], check=True)
    t = time.perf_counter()
    subprocess.run([args.binary, "--warehouse", str(local), "load", str(src)], env=env, check=True,
                   capture_output=True)
    lwall = ms(t) / 1e3
    print(f"== the same files from the local disk into a local warehouse: {lwall:.1f} s, "
          f"{args.rows / lwall:,.0f} rows/s")

    port = free_port()
    senv = dict(env, TRACECUBE_EXTERNAL_LOCATIONS=f"s3://{bucket}/{prefix}")
    server = subprocess.Popen([args.binary, "--warehouse", wh, "serve", "--no-demo", "--listen",
                               f"127.0.0.1:{port}"], env=senv)
    try:
        dsn = f"host=127.0.0.1 port={port} user=tracecube dbname=tracecube"
        deadline = time.time() + 120
        while True:
            try:
                conn = psycopg.connect(dsn, autocommit=True)
                break
            except psycopg.OperationalError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
        print(f"\n{'question':58} {'first ms':>9} {'repeat median ms':>17}")

        def measure(label, sql, setup=(), runs=args.runs):
            with conn.cursor() as cur:
                for s in setup:
                    cur.execute(s)
                t = time.perf_counter()
                cur.execute(sql)
                first_rows = [tuple(normal(v) for v in r) for r in cur.fetchall()]
                first = ms(t)
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    cur.execute(sql)
                    rows = [tuple(normal(v) for v in r) for r in cur.fetchall()]
                    times.append(ms(t))
                assert same(rows, first_rows, rel_tol=1e-9), f"{label}: repeated answer differs"
            print(f"{label:58} {first:9.1f} {statistics.median(times):17.1f}")

        for name, sql in QUESTIONS:
            measure(f"{name} (cubes)", sql)
        for name, sql in QUESTIONS:
            measure(f"{name} (no cubes)", sql, ["SET tracecube.use_cubes = off"], args.scan_runs)
        with conn.cursor() as cur:
            cur.execute("SET tracecube.use_cubes = on")
            cur.execute(f"CREATE EXTERNAL TABLE exports STORED AS PARQUET "
                        f"LOCATION 's3://{bucket}/{prefix}'")
        measure("external table: count(*) by channel",
                "SELECT channel, count(*) FROM exports GROUP BY 1 ORDER BY 1", runs=args.scan_runs)
        measure("external table: drill-down level 1 on one day",
                "SELECT path_prefix(declaration, 1), count(*) FROM exports "
                "WHERE ts >= TIMESTAMP '2026-03-01' AND ts < TIMESTAMP '2026-03-02' GROUP BY 1 ORDER BY 1",
                runs=args.scan_runs)
        conn.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
