"""Python clients against a running Tracecube server: psycopg 3 (binary results, server-side
prepared statements), psycopg2, asyncpg, and SQLAlchemy's inspector with pandas.read_sql.

Connection settings come from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE, PGSSLMODE, PGSSLROOTCERT); the expected answers from EXPECT_TRACES (rows of
traces) and EXPECT_PHONE (rows with channel 'phone'). The user is a reader. Exits non-zero
on the first wrong answer.
"""

import asyncio
import os
import sys

TRACES = int(os.environ["EXPECT_TRACES"])
PHONE = int(os.environ["EXPECT_PHONE"])
COUNT_CHANNEL = "SELECT count(*) FROM traces WHERE channel = %s"


def check(name, got, expected):
    if got != expected:
        sys.exit(f"{name}: got {got!r}, expected {expected!r}")


def psycopg3():
    import psycopg

    with psycopg.connect() as conn:
        check("psycopg server_version", conn.info.server_version // 10000, 16)
        check("psycopg TLS", conn.pgconn.ssl_in_use, True)
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT count(*) FROM traces")
            check("psycopg binary count", cur.fetchone()[0], TRACES)
            for _ in range(3):  # prepared on the server after the first runs
                cur.execute(COUNT_CHANNEL, ("phone",), prepare=True)
                check("psycopg prepared count", cur.fetchone()[0], PHONE)
            cur.execute("SELECT ts, effort FROM traces ORDER BY ts LIMIT 1")
            ts, effort = cur.fetchone()
            check("psycopg timestamptz", ts.tzinfo is not None, True)
            check("psycopg double", isinstance(effort, float), True)
        try:
            conn.execute("DELETE FROM impact_weights")
            sys.exit("psycopg: a reader deleted impact_weights")
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
        conn.execute("DEALLOCATE ALL")
    print("ok psycopg3")


def psycopg2_client():
    import psycopg2

    conn = psycopg2.connect("")
    try:
        cur = conn.cursor()
        cur.execute(COUNT_CHANNEL, ("phone",))
        check("psycopg2 count", cur.fetchone()[0], PHONE)
        cur.execute("SELECT channel, count(*) FROM traces GROUP BY channel")
        check("psycopg2 group by", sum(n for _, n in cur.fetchall()), TRACES)
        check("psycopg2 server_version", conn.server_version // 10000, 16)
        conn.commit()
    finally:
        conn.close()
    print("ok psycopg2")


async def asyncpg_client():
    import asyncpg

    conn = await asyncpg.connect()
    try:
        got = await conn.fetchval("SELECT count(*) FROM traces WHERE channel = $1", "phone")
        check("asyncpg count", got, PHONE)
        rows = await conn.fetch("SELECT channel, count(*) AS n FROM traces GROUP BY channel")
        check("asyncpg group by", sum(r["n"] for r in rows), TRACES)
        stmt = await conn.prepare("SELECT count(*) FROM traces WHERE wait_s > $1")
        check("asyncpg prepared", await stmt.fetchval(-1) <= TRACES, True)
    finally:
        await conn.close()
    print("ok asyncpg")


def sqlalchemy_pandas():
    import pandas
    import sqlalchemy

    env = os.environ
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg2",
        username=env["PGUSER"],
        password=env["PGPASSWORD"],
        host=env["PGHOST"],
        port=int(env["PGPORT"]),
        database=env["PGDATABASE"],
        query={"sslmode": env["PGSSLMODE"], "sslrootcert": env.get("PGSSLROOTCERT", "")},
    )
    engine = sqlalchemy.create_engine(url)
    inspector = sqlalchemy.inspect(engine)
    tables = inspector.get_table_names()
    check("sqlalchemy tables", "traces" in tables and "impact_weights" in tables, True)
    views = inspector.get_view_names()
    check("sqlalchemy views", "journeys" in views, True)
    columns = {c["name"] for c in inspector.get_columns("traces")}
    check("sqlalchemy columns", {"channel", "declaration", "effort"} <= columns, True)
    check("sqlalchemy schemas", "tracecube" in inspector.get_schema_names(), True)
    frame = pandas.read_sql(
        "SELECT channel, count(*) AS n FROM traces GROUP BY channel ORDER BY channel", engine
    )
    check("pandas rows", int(frame["n"].sum()), TRACES)
    frame = pandas.read_sql(
        sqlalchemy.text("SELECT count(*) AS n FROM traces WHERE channel = :c"),
        engine,
        params={"c": "phone"},
    )
    check("pandas parameter", int(frame["n"][0]), PHONE)
    engine.dispose()
    print("ok sqlalchemy+pandas")


if __name__ == "__main__":
    psycopg3()
    psycopg2_client()
    asyncio.run(asyncpg_client())
    sqlalchemy_pandas()
