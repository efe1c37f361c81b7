// node-postgres against a running Tracecube server: TLS with the server's certificate,
// parameterized queries (extended protocol), rows as arrays. Settings from the libpq
// environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLROOTCERT), expected
// answers from EXPECT_TRACES and EXPECT_PHONE. Exits non-zero on the first wrong answer.
const fs = require('fs');
const { Client } = require('pg');

function check(name, got, expected) {
  if (got !== expected) {
    console.error(`${name}: got ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
    process.exit(1);
  }
}

async function main() {
  const client = new Client({
    ssl: { ca: fs.readFileSync(process.env.PGSSLROOTCERT), servername: process.env.PGHOST },
  });
  await client.connect();
  const traces = Number(process.env.EXPECT_TRACES);
  const phone = Number(process.env.EXPECT_PHONE);
  let r = await client.query('SELECT count(*) AS n FROM traces');
  check('count', Number(r.rows[0].n), traces);
  r = await client.query('SELECT count(*) AS n FROM traces WHERE channel = $1', ['phone']);
  check('parameter', Number(r.rows[0].n), phone);
  r = await client.query({
    text: 'SELECT channel, count(*) FROM traces GROUP BY channel ORDER BY channel',
    rowMode: 'array',
  });
  check('group by', r.rows.reduce((s, row) => s + Number(row[1]), 0), traces);
  r = await client.query('SELECT current_user AS u, version() AS v');
  check('user', r.rows[0].u, process.env.PGUSER);
  check('version', r.rows[0].v.startsWith('PostgreSQL 16.'), true);
  try {
    await client.query('DELETE FROM impact_weights');
    check('reader delete', 'succeeded', 'refused');
  } catch (e) {
    check('refusal code', e.code, '42501');
  }
  await client.end();
  console.log('ok node-postgres');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
