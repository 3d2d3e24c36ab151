// node-postgres's own kinds of traffic, printed as a deterministic transcript (one line per check).
//
// Usage: node pgml_pg.js TARGET_URL UPSTREAM_URL [pgml]
// tests/test_node_pg.py runs it with TARGET_URL = the upstream directly and = pgml-server, and
// compares the transcripts. UPSTREAM_URL is always the upstream: LISTEN runs on TARGET_URL and
// NOTIFY comes both from UPSTREAM_URL and from TARGET_URL. With "pgml" it also calls pgml.*
// (through the server only) in lines "pgml.*". Lines "*.pid_matches" compare backend pids; nothing
// else printed differs between two connections (no pids, no now()).
'use strict';

const pg = require('pg');
const Cursor = require('pg-cursor');

const [target, upstreamUrl, mode] = process.argv.slice(2);

function out(name, value) {
  console.log(`${name}: ${typeof value === 'string' ? value : JSON.stringify(value)}`);
}

function errorText(err) {
  const parts = [err.code, err.severity, err.message];
  for (const key of ['detail', 'hint', 'position', 'table', 'constraint', 'routine']) {
    if (err[key] !== undefined && err[key] !== null) parts.push(`${key}=${err[key]}`);
  }
  return parts.join(' | ');
}

function plain(value) {
  if (value instanceof Date) return `Date(${value.toISOString()})`;
  if (Buffer.isBuffer(value)) return `Buffer(${value.toString('hex')})`;
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

async function connect(url) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return client;
}

async function check(name, body) {
  try {
    await body();
  } catch (err) {
    out(`${name}.UNEXPECTED`, err.code ? errorText(err) : String(err && err.stack || err));
  }
}

async function attempt(name, promise) {
  try {
    const res = await promise;
    out(name, res && res.rows ? plain(res.rows) : plain(res));
  } catch (err) {
    out(name, err.code ? errorText(err) : `client error: ${err.message}`);
  }
}

function waitNotification(client, ms = 10000) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => { client.removeListener('notification', onMsg); resolve(null); }, ms);
    function onMsg(msg) { clearTimeout(timer); client.removeListener('notification', onMsg); resolve(msg); }
    client.on('notification', onMsg);
  });
}

async function core(c) {
  await c.query('DROP TABLE IF EXISTS node_items');

  await check('setup', async () => {
    await c.query('CREATE TABLE node_items (id int PRIMARY KEY, label text NOT NULL, price float8, tags text[])');
    const res = await c.query(
      "INSERT INTO node_items SELECT g, 'item ' || g, g * 0.25, ARRAY['t' || g % 3] FROM generate_series(1, 1000) g");
    out('setup.insert', `${res.command} ${res.rowCount}`);
  });

  await check('params', async () => {
    const res = await c.query(
      'SELECT $1::int + 1 AS i, upper($2::text) AS t, $3::float8 * 2 AS f, $4::int IS NULL AS n, $5::int[] AS a, '
      + "$6::timestamptz + interval '1 day' AS d, $7::text[] AS ta, $8::jsonb AS j, $9::bytea AS b, $10::bool AS bo, "
      + '$11::int8 * 2 AS big, $12::numeric AS num',
      [41, 'ü ok', 1.25, null, [1, 2, null], new Date(Date.UTC(2024, 1, 28, 12, 34, 56, 789)), ['a,b', '"q"', '{x}', null],
        { k: [1, 'é'] }, Buffer.from([0, 1, 254, 255]), true, '9007199254740993', '12345678901234567890.5']);
    out('params.row', plain(res.rows[0]));
    out('params.fields', res.fields.map((f) => `${f.name}:${f.dataTypeID}:${f.format}`));
    out('params.untyped', plain((await c.query('SELECT $1 AS x, $2 AS y', [42, null])).rows));
    out('params.array_mode', plain((await c.query({ text: 'SELECT $1::int AS a, $2::text AS b', values: [7, 'x'], rowMode: 'array' })).rows));
    const lookup = 'SELECT id, label, price, tags FROM node_items WHERE id = ANY($1::int[]) ORDER BY id';
    out('params.any', plain((await c.query(lookup, [[3, 500, 999, 5000]])).rows));
    out('params.simple', plain((await c.query("SELECT 1 AS one, 'two' AS two, NULL AS three")).rows));
    const multi = await c.query("SELECT 1 AS a; UPDATE node_items SET label = label WHERE id <= 5; SELECT 'b' AS b");
    out('params.multi', multi.map((r) => `${r.command} ${r.rowCount} ${JSON.stringify(r.rows)}`));
    out('params.empty', (await c.query('')).command);
    // Results in binary format (pg-types parses these from binary; its binary timestamptz is wrong, so none here).
    const bin = await c.query({ text: 'SELECT $1::int4 AS i, $2::text AS t, $3::float8 AS f, $4::bool AS b, $5::int8 AS big',
      values: [7, 'bïn', 2.5, false, '42'], binary: true });
    out('params.binary', plain(bin.rows));
    out('params.binary_fields', bin.fields.map((f) => `${f.name}:${f.dataTypeID}:${f.format}`));
    out('params.extended_no_values', plain((await c.query({ text: "SELECT 'x' AS x", queryMode: 'extended' })).rows));
    await attempt('params.multi_error', c.query('SELECT 1 AS a; SELECT 1/0; SELECT 3 AS c'));
    out('params.after_multi_error', (await c.query('SELECT 4 AS d')).rows);
  });

  await check('named', async () => {
    for (let i = 0; i < 6; i++) {   // the same name again: Bind/Execute of the statement prepared once
      const res = await c.query({ name: 'node-item', text: 'SELECT label, price FROM node_items WHERE id = $1 OR label = $2', values: [i * 100 + 1, i % 2 ? null : 'item 7'] });
      out(`named.item.${i}`, plain(res.rows));
    }
    for (let i = 0; i < 3; i++) {
      const res = await c.query({ name: 'node-update', text: 'UPDATE node_items SET price = price + $1 WHERE id <= $2', values: [1, (i + 1) * 10] });
      out(`named.update.${i}`, `${res.command} ${res.rowCount}`);
    }
    out('named.statements', plain((await c.query('SELECT name, statement, parameter_types::text FROM pg_prepared_statements ORDER BY name')).rows));
    await attempt('named.error', c.query({ name: 'node-int', text: 'SELECT $1::int AS v', values: ['abc'] }));
    await attempt('named.after_error', c.query({ name: 'node-int', text: 'SELECT $1::int AS v', values: ['12'] }));
  });

  await check('errors', async () => {
    const failing = [
      ['SELECT * FROM node_missing_table'],
      ["INSERT INTO node_items (id, label) VALUES (1, 'dup')"],
      ['INSERT INTO node_items (id) VALUES ($1)', [7001]],
      ['SELECT 1/0'],
      ['SELECT $1::int / $2', [1, 0]],
      ['SELEC 1'],
      ['SELECT $1::int', ['x']],
      ['SELECT $1::int', [1, 2]],
    ];
    for (let i = 0; i < failing.length; i++) await attempt(`errors.${i}`, c.query(...failing[i]));
    // Several queries queued at once, one failing in the middle: the others are unaffected.
    const queued = await Promise.allSettled([1, 2, 3, 4, 5].map((i) => c.query(i === 3 ? 'SELECT 1/0' : 'SELECT $1::int * 10 AS v', i === 3 ? [] : [i])));
    out('errors.queued', queued.map((r) => (r.status === 'fulfilled' ? r.value.rows[0].v : r.reason.code)));
    const notices = [];
    const onNotice = (n) => notices.push(`${n.severity} ${n.code} ${n.message}`);
    c.on('notice', onNotice);
    await c.query("DO $$ BEGIN RAISE NOTICE 'notice %', 42; RAISE WARNING 'warning %', 'ü'; END $$");
    c.removeListener('notice', onNotice);
    out('errors.notices', notices);
    out('errors.usable', (await c.query("SELECT 'usable' AS u")).rows);
  });

  await check('transaction', async () => {
    await c.query('BEGIN');
    await c.query("INSERT INTO node_items (id, label) VALUES ($1, 'tx1')", [5001]);
    await c.query('SAVEPOINT a');
    await attempt('transaction.dup', c.query("INSERT INTO node_items (id, label) VALUES ($1, 'again')", [5001]));
    await attempt('transaction.aborted', c.query('SELECT $1::int AS one', [1]));
    await c.query('ROLLBACK TO SAVEPOINT a');
    await c.query("INSERT INTO node_items (id, label) VALUES ($1, 'tx2')", [5002]);
    await c.query('COMMIT');
    out('transaction.committed', (await c.query('SELECT array_agg(id ORDER BY id) AS ids FROM node_items WHERE id > 5000')).rows);
    await c.query('BEGIN');
    await c.query('DELETE FROM node_items WHERE id > 5000');
    out('transaction.in_tx', (await c.query('SELECT count(*) AS n FROM node_items WHERE id > 5000')).rows);
    await c.query('ROLLBACK');
    out('transaction.rolled_back', (await c.query('SELECT count(*) AS n FROM node_items WHERE id > 5000')).rows);
    await c.query('BEGIN');
    await attempt('transaction.error', c.query('SELECT 1/0'));
    await attempt('transaction.commit_after_error', c.query('COMMIT'));
    out('transaction.serializable', (await c.query("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT current_setting('transaction_isolation') AS iso; COMMIT"))[1].rows);
  });

  await check('cursor', async () => {
    // Outside a transaction block: pg-cursor sends Execute(max_rows) + Flush and no Sync until it is done.
    const cursor = c.query(new Cursor('SELECT id, label FROM node_items WHERE id <= $1 ORDER BY id', [1000]));
    let n = 0; let sum = 0; let reads = 0;
    for (;;) {
      const rows = await cursor.read(10);
      if (rows.length === 0) break;
      reads++; n += rows.length; sum += rows.reduce((s, r) => s + r.id, 0);
    }
    await cursor.close();
    out('cursor.read', `${n} rows in ${reads} reads, sum=${sum}`);
    await c.query('BEGIN');
    const a = c.query(new Cursor('SELECT g FROM generate_series(1, 55) g'));
    const first = await a.read(7);
    await a.close();   // closed before the end: Close portal
    out('cursor.closed_early', first.map((r) => r.g));
    out('cursor.after_close', (await c.query('SELECT count(*)::int AS n FROM node_items')).rows);
    const b = c.query(new Cursor('SELECT 1/(3 - g) AS x FROM generate_series(1, 5) g'));
    await attempt('cursor.error', b.read(10));
    await attempt('cursor.in_failed_tx', c.query('SELECT 1'));
    await c.query('ROLLBACK');
    out('cursor.usable', (await c.query('SELECT 2 AS two')).rows);
  });
}

async function listen(c) {
  const listener = await connect(target);
  const direct = await connect(upstreamUrl);
  try {
    await listener.query('LISTEN node_chan');
    const listenerPid = (await listener.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    out('listen.backend_key.pid_matches', listener.processID === listenerPid);
    for (const [name, sender] of [['direct', direct], ['target', c]]) {
      const senderPid = (await sender.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      let got = waitNotification(listener);
      await sender.query(`NOTIFY node_chan, 'from ${name} ü'`);
      let msg = await got;
      out(`listen.${name}.notify`, msg ? `${msg.channel} ${msg.payload}` : 'timeout');
      out(`listen.${name}.pid_matches`, msg ? msg.processId === senderPid : 'timeout');
      got = waitNotification(listener);
      await sender.query("BEGIN; SELECT pg_notify('node_chan', 'rolled back'); ROLLBACK");
      await sender.query("SELECT pg_notify($1, $2)", ['node_chan', `pg_notify from ${name}`]);
      msg = await got;
      out(`listen.${name}.pg_notify`, msg ? `${msg.channel} ${msg.payload}` : 'timeout');
    }
    // A notification that arrives while the listener is busy with its own query.
    const got = waitNotification(listener);
    const busy = listener.query('SELECT pg_sleep(0.3), 42 AS answer');
    await new Promise((r) => setTimeout(r, 50));
    await direct.query("NOTIFY node_chan, 'while busy'");
    out('listen.busy.query', (await busy).rows[0].answer);
    const msg = await got;
    out('listen.busy.notify', msg ? `${msg.channel} ${msg.payload}` : 'timeout');
    // Its own notification: the pid is the listener's own backend.
    const self = waitNotification(listener);
    await listener.query("NOTIFY node_chan, 'self'");
    const own = await self;
    out('listen.self.notify', own ? own.payload : 'timeout');
    out('listen.self.pid_matches', own ? own.processId === listenerPid : 'timeout');
    await listener.query('UNLISTEN *');
    const none = waitNotification(listener, 500);
    await direct.query("NOTIFY node_chan, 'after unlisten'");
    out('listen.unlisten', (await none) === null ? 'nothing' : 'still delivered');
  } finally {
    await listener.end();
    await direct.end();
  }
}

const FEATURES = 'ARRAY[sepal_length, sepal_width, petal_length, petal_width]';

async function pgml(c) {
  await check('pgml.load_dataset', async () => {
    out('pgml.load_dataset', (await c.query("SELECT * FROM pgml.load_dataset('iris')")).rows);
  });
  await check('pgml.train', async () => {
    const res = await c.query("SELECT * FROM pgml.train('node_iris', 'classification', 'pgml.iris', 'target', 'linear')");
    out('pgml.train', res.rows);
  });
  await check('pgml.predict', async () => {
    const samples = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]];
    const species = [0, 2, 1];
    const forms = [
      ['untyped', 'SELECT pgml.predict($1, $2) AS p'],
      ['float8', 'SELECT pgml.predict($1, $2::float8[]) AS p'],
      ['real', 'SELECT pgml.predict($1::text, $2::real[]) AS p'],
    ];
    for (const [kind, text] of forms) {
      for (let i = 0; i < 3; i++) {
        await attempt(`pgml.predict.${kind}.${i}`, c.query(text, ['node_iris', samples[i]]).then((r) => `expected=${species[i]} got=${r.rows[0].p}`));
      }
    }
    for (let i = 0; i < 6; i++) {   // a named statement, Bind/Execute only after the first
      await attempt(`pgml.predict.named.${i}`, c.query({ name: 'node-predict', text: 'SELECT pgml.predict($1, $2::float8[]) AS p', values: ['node_iris', samples[i % 3]] })
        .then((r) => `expected=${species[i % 3]} got=${r.rows[0].p}`));
    }
    await attempt('pgml.predict.binary', c.query({ text: 'SELECT pgml.predict($1, $2::float8[]) AS p', values: ['node_iris', samples[1]], binary: true })
      .then((r) => `expected=${species[1]} got=${r.rows[0].p} format=${r.fields[0].format}`));
    await attempt('pgml.predict_proba', c.query('SELECT pgml.predict_proba($1, $2::float8[]) AS p', ['node_iris', samples[0]])
      .then((r) => `${r.rows[0].p.length} argmax0=${r.rows[0].p[0] > 0.5} sum=${Math.round(r.rows[0].p.reduce((s, x) => s + x, 0) * 1000) / 1000}`));
    await attempt('pgml.predict.unknown_project', c.query('SELECT pgml.predict($1, $2::float8[]) AS p', ['node_no_such_project', samples[0]]).then((r) => r.rows[0].p));
    await attempt('pgml.predict.usable', c.query('SELECT 1 AS one'));
  });
  await check('pgml.table', async () => {
    // Without bind parameters: the stream path (target list) and the general path (WHERE).
    await attempt('pgml.table.stream', c.query(`SELECT target, pgml.predict('node_iris', ${FEATURES}) AS p FROM pgml.iris`)
      .then((r) => `${r.rows.length} correct=${r.rows.filter((x) => x.p === x.target).length}`));
    await attempt('pgml.table.where', c.query(`SELECT count(*)::int AS n FROM pgml.iris WHERE pgml.predict('node_iris', ${FEATURES}) = target`));
    await c.query('BEGIN');
    const cursor = c.query(new Cursor(`SELECT target, pgml.predict('node_iris', ${FEATURES}) AS p FROM pgml.iris`));
    let n = 0; let correct = 0;
    for (;;) {
      const rows = await cursor.read(10);
      if (rows.length === 0) break;
      n += rows.length; correct += rows.filter((r) => r.p === r.target).length;
    }
    await cursor.close();
    await c.query('COMMIT');
    out('pgml.table.cursor', `${n} correct=${correct}`);
    // With bind parameters. node-postgres's Parse declares no parameter types (PostgreSQL infers them all).
    await attempt('pgml.table.param.stream', c.query(`SELECT target, pgml.predict($1, ${FEATURES}) AS p FROM pgml.iris`, ['node_iris'])
      .then((r) => `${r.rows.length} correct=${r.rows.filter((x) => x.p === x.target).length}`));
    for (let t = 0; t < 3; t++) {
      await attempt(`pgml.table.param.target.${t}`, c.query({ name: 'node-predict-table', text: `SELECT target, pgml.predict($1, ${FEATURES}) AS p FROM pgml.iris WHERE target = $2`, values: ['node_iris', t] })
        .then((r) => `${r.rows.length} correct=${r.rows.filter((x) => x.p === x.target).length}`));
    }
    await attempt('pgml.table.param.where', c.query(`SELECT count(*)::int AS n FROM pgml.iris WHERE pgml.predict($1, ${FEATURES}) = target`, ['node_iris']));
    await attempt('pgml.table.param.aggregate', c.query(`SELECT count(*)::int AS n, sum((p = target)::int)::int AS correct FROM (SELECT target, pgml.predict($1, ${FEATURES}) AS p FROM pgml.iris) s`, ['node_iris']));
    // Not over a table, but the same path: a prediction next to another column.
    await attempt('pgml.table.param.extra_column', c.query('SELECT pgml.predict($1, $2::float8[]) AS p, 1::int4 AS one', ['node_iris', [6.7, 3.0, 5.2, 2.3]])
      .then((r) => `got=${r.rows[0].p} one=${r.rows[0].one}`));
    await attempt('pgml.table.usable', c.query('SELECT 1 AS one'));
  });
}

async function main() {
  const c = await connect(target);
  try {
    const info = await c.query("SELECT current_user AS u, current_setting('server_version_num') AS v, current_setting('TimeZone') AS tz");
    out('connect', plain(info.rows[0]));
    await core(c);
    await check('listen', () => listen(c));
    if (mode === 'pgml') await pgml(c);
    await c.query('DROP TABLE IF EXISTS node_items');
    out('end', (await c.query("SELECT 'done' AS d")).rows);
  } finally {
    await c.end();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
