// pgJDBC's own kinds of traffic, printed as a deterministic transcript (one line per check).
//
// Usage: java -cp postgresql.jar:. PgmlJdbc JDBC_URL [pgml]
// tests/test_jdbc.py runs it against the upstream directly and through pgml-server and compares
// the transcripts; with "pgml" it also calls pgml.* (through the server only) in lines "pgml.*".
// Nothing that differs between two connections (backend pid, now(), temp schema names) is printed.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Array;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.jdbc.PreferQueryMode;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class PgmlJdbc {
    interface Body { void run() throws Exception; }

    static Connection conn;

    static void out(String name, Object value) {
        System.out.println(name + ": " + value);
    }

    /** One check: its lines, or its error's SQLSTATE; the connection is back in autocommit after it. */
    static void check(String name, Body body) {
        try {
            body.run();
        } catch (SQLException e) {
            out(name + ".UNEXPECTED", e.getSQLState() + " " + firstLine(e.getMessage()));
        } catch (Exception e) {
            out(name + ".UNEXPECTED", e.getClass().getSimpleName() + " " + firstLine(String.valueOf(e.getMessage())));
        }
        try {
            if (!conn.getAutoCommit()) {
                conn.rollback();
                conn.setAutoCommit(true);
            }
            conn.setReadOnly(false);
        } catch (SQLException e) {
            out(name + ".reset", e.getSQLState() + " " + firstLine(e.getMessage()));
        }
    }

    static String firstLine(String s) {
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }

    static String error(SQLException e) {
        StringBuilder sb = new StringBuilder(String.valueOf(e.getSQLState()));
        if (e instanceof PSQLException) {
            ServerErrorMessage m = ((PSQLException) e).getServerErrorMessage();
            if (m != null) {
                sb.append(" | ").append(m.getSeverity()).append(" | ").append(m.getMessage());
                if (m.getDetail() != null) sb.append(" | detail=").append(m.getDetail());
                if (m.getHint() != null) sb.append(" | hint=").append(m.getHint());
                if (m.getPosition() != 0) sb.append(" | position=").append(m.getPosition());
                if (m.getTable() != null) sb.append(" | table=").append(m.getTable());
                if (m.getConstraint() != null) sb.append(" | constraint=").append(m.getConstraint());
                if (m.getRoutine() != null) sb.append(" | routine=").append(m.getRoutine());
                return sb.toString();
            }
        }
        return sb.append(" | ").append(firstLine(e.getMessage())).toString();
    }

    static String sha(String s) throws Exception {
        byte[] d = MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8));
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 8; i++) sb.append(String.format("%02x", d[i]));
        return sb.toString();
    }

    static String rows(ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        List<String> rows = new ArrayList<>();
        while (rs.next()) {
            List<String> cols = new ArrayList<>();
            for (int i = 1; i <= md.getColumnCount(); i++) cols.add(String.valueOf(rs.getString(i)));
            rows.add(String.join(",", cols));
        }
        return rows.toString();
    }

    static String query(String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            return rows(rs);
        }
    }

    static void update(String sql) throws SQLException {
        try (Statement st = conn.createStatement()) {
            st.executeUpdate(sql);
        }
    }

    static boolean simpleMode() throws SQLException {
        return conn.unwrap(PGConnection.class).getPreferQueryMode() == PreferQueryMode.SIMPLE;
    }

    static boolean serverPrepared(PreparedStatement ps) throws SQLException {
        return ps.unwrap(PGStatement.class).isUseServerPrepare();
    }

    static void callables() throws SQLException {
        try (java.sql.CallableStatement cs = conn.prepareCall("{? = call upper(?)}")) {
            cs.registerOutParameter(1, Types.VARCHAR);
            cs.setString(2, "callable ü");
            cs.execute();
            out("more.callable", cs.getString(1));
        }
        update("CREATE OR REPLACE FUNCTION pg_temp.jdbc_add(a int, INOUT b int) AS $$ SELECT a + b $$ LANGUAGE sql");
        try (java.sql.CallableStatement cs = conn.prepareCall("{call pg_temp.jdbc_add(?, ?)}")) {
            cs.setInt(1, 40);
            cs.setInt(2, 2);
            cs.registerOutParameter(2, Types.INTEGER);
            cs.execute();
            out("more.callable_inout", cs.getInt(2));
        }
    }

    public static void main(String[] args) throws Exception {
        conn = DriverManager.getConnection(args[0]);
        boolean pgml = args.length > 1 && args[1].equals("pgml");
        DatabaseMetaData md = conn.getMetaData();
        out("connect", md.getDatabaseProductName() + " " + md.getDatabaseProductVersion() + " user="
                + md.getUserName() + " autocommit=" + conn.getAutoCommit());
        for (String t : new String[]{"jdbc_items", "jdbc_copy", "jdbc_serial"}) update("DROP TABLE IF EXISTS " + t);

        check("setup", () -> {
            try (Statement st = conn.createStatement()) {
                out("setup.create", st.executeUpdate(
                        "CREATE TABLE jdbc_items (id int PRIMARY KEY, label text NOT NULL, price float8, created timestamp)"));
                out("setup.insert", st.executeUpdate(
                        "INSERT INTO jdbc_items SELECT g, 'item ' || g, g * 0.5, timestamp '2024-01-01' + g * interval '1 hour'"
                                + " FROM generate_series(1, 1000) g"));
                out("setup.create_copy", st.executeUpdate("CREATE TABLE jdbc_copy (id int PRIMARY KEY, name text, v float8)"));
                out("setup.create_serial", st.executeUpdate("CREATE TABLE jdbc_serial (id serial PRIMARY KEY, label text)"));
            }
        });

        check("prepared", () -> {
            String sql = "SELECT ?::int4 + 1 AS i, upper(?::text) AS t, ?::float8 * 2 AS f,"
                    + " ?::timestamp + interval '1 day' AS ts, ?::int4 IS NULL AS n, ?::numeric AS num";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 0; i < 8; i++) {   // past prepareThreshold=5: a named server statement, binary results
                    ps.setInt(1, i);
                    ps.setString(2, "ü" + i);
                    ps.setDouble(3, i + 0.25);
                    ps.setTimestamp(4, Timestamp.valueOf("2024-02-28 12:34:56.789"));
                    ps.setNull(5, Types.INTEGER);
                    ps.setBigDecimal(6, new BigDecimal("12345678901234567890.123").add(BigDecimal.valueOf(i)));
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("prepared." + i, rs.getInt(1) + " " + rs.getString(2) + " " + rs.getDouble(3) + " "
                                + rs.getTimestamp(4) + " " + rs.getBoolean(5) + " " + rs.getBigDecimal(6)
                                + " server_prepared=" + serverPrepared(ps));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT label, price, created FROM jdbc_items WHERE id = ? OR label = ?")) {
                for (int i = 1; i <= 7; i++) {
                    ps.setInt(1, i * 100);
                    ps.setString(2, i % 2 == 0 ? null : "item 3");
                    try (ResultSet rs = ps.executeQuery()) {
                        out("prepared.lookup." + i, rows(rs));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int4[] AS a, array_length(?::text[], 1) AS n")) {
                for (int i = 0; i < 6; i++) {
                    ps.setArray(1, conn.createArrayOf("int4", new Integer[]{i, null, i * 2}));
                    ps.setArray(2, conn.createArrayOf("text", new String[]{"a,b", "\"q\"", "{x}", "ü"}));
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("prepared.array." + i, Arrays.toString((Object[]) rs.getArray(1).getArray()) + " " + rs.getInt(2));
                    }
                }
            }
            out("prepared.statements", query("SELECT name, statement FROM pg_prepared_statements ORDER BY name"));
        });

        check("update_counts", () -> {
            try (PreparedStatement ps = conn.prepareStatement("UPDATE jdbc_items SET price = price + ? WHERE id <= ?")) {
                for (int i = 1; i <= 7; i++) {
                    ps.setDouble(1, 0.5);
                    ps.setInt(2, i * 10);
                    out("update_counts." + i, ps.executeUpdate());
                }
            }
            try (Statement st = conn.createStatement()) {
                out("update_counts.delete", st.executeUpdate("DELETE FROM jdbc_items WHERE id > 990"));
                out("update_counts.ddl", st.executeUpdate("CREATE INDEX jdbc_items_label ON jdbc_items (label)"));
                boolean first = st.execute("SELECT 1 AS one; UPDATE jdbc_items SET label = label WHERE id <= 3; SELECT 'two' AS two");
                List<String> results = new ArrayList<>();
                boolean isRs = first;
                while (true) {
                    if (isRs) {
                        try (ResultSet rs = st.getResultSet()) { results.add("rows" + rows(rs)); }
                    } else {
                        int n = st.getUpdateCount();
                        if (n == -1) break;
                        results.add("count " + n);
                    }
                    isRs = st.getMoreResults();
                }
                out("update_counts.multi", results);
            }
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO jdbc_serial (label) VALUES (?)",
                    Statement.RETURN_GENERATED_KEYS)) {
                for (int i = 0; i < 6; i++) {
                    ps.setString(1, "s" + i);
                    ps.executeUpdate();
                    try (ResultSet keys = ps.getGeneratedKeys()) {
                        out("update_counts.generated." + i, rows(keys));
                    }
                }
            }
        });

        check("batch", () -> {
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO jdbc_items (id, label, price) VALUES (?, ?, ?)")) {
                for (int i = 2001; i <= 2100; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "batch " + i);
                    if (i % 7 == 0) ps.setNull(3, Types.DOUBLE); else ps.setDouble(3, i / 4.0);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                out("batch.counts", counts.length + " sum=" + Arrays.stream(counts).sum());
                for (int id : new int[]{3001, 3002, 1, 3003}) {    // the third is a duplicate key
                    ps.setInt(1, id);
                    ps.setString(2, "dup " + id);
                    ps.setDouble(3, 1.0);
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    out("batch.error", "none");
                } catch (BatchUpdateException e) {
                    out("batch.error", e.getSQLState() + " counts=" + Arrays.toString(e.getUpdateCounts()));
                    SQLException next = e.getNextException();
                    out("batch.error.next", next == null ? "null" : error(next));
                }
            }
            out("batch.after_error", query("SELECT count(*) FROM jdbc_items WHERE id > 3000"));
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.addBatch("UPDATE jdbc_items SET label = 'b' WHERE id BETWEEN 2001 AND 2010");
                st.addBatch("DELETE FROM jdbc_items WHERE id BETWEEN 2091 AND 2100");
                st.addBatch("INSERT INTO jdbc_items (id, label) VALUES (4000, 'x'), (4001, 'y')");
                out("batch.statement", Arrays.toString(st.executeBatch()));
            }
            conn.commit();
            out("batch.total", query("SELECT count(*), count(price), sum(id) FROM jdbc_items"));
        });

        check("cursor", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(10);   // a portal, Execute with max_rows 10, PortalSuspended until the end
                try (ResultSet rs = st.executeQuery("SELECT id, label, price FROM jdbc_items WHERE id <= 1000 ORDER BY id")) {
                    long n = 0, sum = 0;
                    StringBuilder labels = new StringBuilder();
                    while (rs.next()) {
                        n++;
                        sum += rs.getInt(1);
                        labels.append(rs.getString(2)).append(rs.getString(3));
                    }
                    out("cursor.statement", n + " sum=" + sum + " sha=" + sha(labels.toString()));
                }
            }
            try (PreparedStatement a = conn.prepareStatement("SELECT g, md5(g::text) FROM generate_series(1, ?) g");
                 PreparedStatement b = conn.prepareStatement("SELECT id FROM jdbc_items WHERE id > ? ORDER BY id DESC")) {
                a.setFetchSize(10);
                b.setFetchSize(7);
                for (int round = 0; round < 6; round++) {   // two portals open at once, named statements after 5
                    a.setInt(1, 95 + round);
                    b.setInt(1, 2000 + round);
                    try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
                        long na = 0, nb = 0, sb = 0;
                        StringBuilder md5s = new StringBuilder();
                        boolean moreA = true, moreB = true;
                        while (moreA || moreB) {   // interleaved: each fetch continues its own portal
                            if (moreA && (moreA = ra.next())) { na++; md5s.append(ra.getString(2)); }
                            if (moreB && (moreB = rb.next())) { nb++; sb += rb.getInt(1); }
                        }
                        out("cursor.interleaved." + round, na + " " + sha(md5s.toString()) + " " + nb + " sum=" + sb
                                + " server_prepared=" + serverPrepared(a));
                    }
                }
            }
            conn.commit();
        });

        check("copy", () -> {
            CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder csv = new StringBuilder();
            for (int i = 1; i <= 500; i++) {
                String name = i % 10 == 0 ? "" : "\"név " + i + ", \"\"q\"\"\"";
                csv.append(i).append(',').append(name).append(',').append(i / 8.0).append('\n');
            }
            out("copy.in", cm.copyIn("COPY jdbc_copy (id, name, v) FROM STDIN (FORMAT csv)", new StringReader(csv.toString())));
            StringWriter w = new StringWriter();
            out("copy.out", cm.copyOut("COPY (SELECT * FROM jdbc_copy ORDER BY id) TO STDOUT (FORMAT csv, HEADER)", w));
            String[] lines = w.toString().split("\n");
            out("copy.out.lines", lines.length + " " + lines[0] + " | " + lines[1] + " | " + lines[10] + " sha=" + sha(w.toString()));
            StringWriter t = new StringWriter();
            out("copy.out.text", cm.copyOut("COPY jdbc_copy TO STDOUT", t) + " sha=" + sha(t.toString()));
            try {
                cm.copyIn("COPY jdbc_copy (id, name, v) FROM STDIN (FORMAT csv)", new StringReader("9001,a,1\n9002,b,notanumber\n"));
                out("copy.bad", "none");
            } catch (SQLException e) {
                out("copy.bad", error(e));
            }
            try {
                cm.copyIn("COPY jdbc_copy (id, name, v) FROM STDIN (FORMAT csv)", new StringReader("9001,a,1\n1,dup,2\n"));
                out("copy.dup", "none");
            } catch (SQLException e) {
                out("copy.dup", error(e));
            }
            conn.setAutoCommit(false);
            out("copy.in_tx", cm.copyIn("COPY jdbc_copy FROM STDIN", new StringReader("9100\tin tx\t1.5\n9101\t\\N\t\\N\n")));
            out("copy.in_tx.visible", query("SELECT count(*) FROM jdbc_copy WHERE id >= 9000"));
            conn.rollback();
            conn.setAutoCommit(true);
            out("copy.after", query("SELECT count(*), count(name), sum(v) FROM jdbc_copy"));
        });

        check("transaction", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO jdbc_items (id, label) VALUES (5001, 'tx1')");
                Savepoint sp1 = conn.setSavepoint("sp1");
                st.executeUpdate("INSERT INTO jdbc_items (id, label) VALUES (5002, 'tx2')");
                conn.rollback(sp1);
                Savepoint sp2 = conn.setSavepoint();
                try {
                    st.executeUpdate("INSERT INTO jdbc_items (id, label) VALUES (5001, 'again')");
                    out("transaction.dup", "none");
                } catch (SQLException e) {
                    out("transaction.dup", error(e));
                }
                try {
                    st.executeQuery("SELECT 1");
                    out("transaction.aborted", "none");
                } catch (SQLException e) {
                    out("transaction.aborted", error(e));
                }
                conn.rollback(sp2);
                out("transaction.after_savepoint", query("SELECT array_agg(id ORDER BY id) FROM jdbc_items WHERE id > 5000"));
                conn.releaseSavepoint(sp1);
                conn.commit();
                out("transaction.committed", query("SELECT array_agg(id ORDER BY id) FROM jdbc_items WHERE id > 5000"));
                st.executeUpdate("DELETE FROM jdbc_items WHERE id > 5000");
                out("transaction.deleted_in_tx", query("SELECT count(*) FROM jdbc_items WHERE id > 5000"));
                conn.rollback();
                out("transaction.rolled_back", query("SELECT count(*) FROM jdbc_items WHERE id > 5000"));
                conn.commit();
            }
            conn.setAutoCommit(true);
            conn.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            conn.setAutoCommit(false);
            out("transaction.isolation", query("SELECT current_setting('transaction_isolation')"));
            conn.commit();
            conn.setAutoCommit(true);
            conn.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            conn.setReadOnly(true);
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO jdbc_items (id, label) VALUES (6001, 'ro')");
                out("transaction.read_only", "none");
            } catch (SQLException e) {
                out("transaction.read_only", error(e));
            }
            conn.rollback();
            conn.setAutoCommit(true);
            conn.setReadOnly(false);
            out("transaction.done", query("SELECT count(*) FROM jdbc_items WHERE id > 5000"));
        });

        check("errors", () -> {
            String[] failing = {
                    "SELECT * FROM jdbc_missing_table",
                    "INSERT INTO jdbc_items (id, label) VALUES (1, 'dup')",
                    "INSERT INTO jdbc_items (id) VALUES (7001)",
                    "SELECT 1/0",
                    "SELEC 1",
                    "SELECT 'x'::int",
                    "SELECT no_such_column FROM jdbc_items",
            };
            try (Statement st = conn.createStatement()) {
                for (int i = 0; i < failing.length; i++) {
                    try {
                        st.execute(failing[i]);
                        out("errors." + i, "none");
                    } catch (SQLException e) {
                        out("errors." + i, error(e));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + 1")) {
                for (int i = 0; i < 7; i++) {
                    ps.setString(1, i == 6 ? "abc" : String.valueOf(i));   // the last one fails after the switch
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("errors.prepared." + i, rs.getInt(1));
                    } catch (SQLException e) {
                        out("errors.prepared." + i, error(e));
                    }
                }
            }
            try (Statement st = conn.createStatement()) {
                st.execute("DO $$ BEGIN RAISE NOTICE 'notice %', 42; RAISE WARNING 'warning %', 'ü'; END $$");
                List<String> warnings = new ArrayList<>();
                for (SQLWarning w = st.getWarnings(); w != null; w = w.getNextWarning()) {
                    warnings.add(w.getSQLState() + " " + w.getMessage());
                }
                out("errors.warnings", warnings);
                st.setQueryTimeout(1);   // pgJDBC sends a CancelRequest with the BackendKeyData it was given
                try {
                    st.execute("SELECT pg_sleep(10)");
                    out("errors.timeout", "none");
                } catch (SQLException e) {
                    out("errors.timeout", error(e));
                }
                st.setQueryTimeout(0);
            }
            out("errors.usable", query("SELECT 'still usable'"));
        });

        check("more", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::bytea AS b, ?::uuid AS u, ?::jsonb -> 'k' AS j, ?::date AS d")) {
                for (int i = 0; i < 6; i++) {   // bytea and uuid go as binary parameters
                    if (simpleMode()) ps.setString(1, "\\x0001fe0" + i);   // simple mode cannot inline setBytes
                    else ps.setBytes(1, new byte[]{0, 1, (byte) 254, (byte) i});
                    ps.setObject(2, java.util.UUID.fromString("123e4567-e89b-12d3-a456-42661417400" + i));
                    ps.setString(3, "{\"k\": [1, \"é\", " + i + "]}");
                    ps.setDate(4, java.sql.Date.valueOf("2024-02-2" + i));
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("more.types." + i, Arrays.toString(rs.getBytes(1)) + " " + rs.getObject(2) + " " + rs.getString(3)
                                + " " + rs.getDate(4));
                    }
                }
            }
            if (!simpleMode()) callables();   // simple mode inlines OUT parameters into the SQL: PostgreSQL refuses it
            // An updatable ResultSet: pgJDBC looks up the primary key in the catalog, then runs UPDATE/INSERT/DELETE.
            try (Statement st = conn.createStatement(ResultSet.TYPE_SCROLL_INSENSITIVE, ResultSet.CONCUR_UPDATABLE);
                 ResultSet rs = st.executeQuery("SELECT id, label FROM jdbc_items WHERE id <= 3 ORDER BY id")) {
                rs.next();
                rs.updateString("label", "updated via ResultSet");
                rs.updateRow();
                rs.last();
                rs.deleteRow();
                rs.moveToInsertRow();
                rs.updateInt("id", 8001);
                rs.updateString("label", "inserted via ResultSet");
                rs.insertRow();
            }
            out("more.updatable", query("SELECT id, label FROM jdbc_items WHERE id <= 3 OR id = 8001 ORDER BY id"));
            // Large objects: pgJDBC's LargeObjectManager calls lo_* through the fastpath FunctionCall message.
            conn.setAutoCommit(false);
            org.postgresql.largeobject.LargeObjectManager lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO();
            try (org.postgresql.largeobject.LargeObject lo = lom.open(oid, org.postgresql.largeobject.LargeObjectManager.READWRITE)) {
                byte[] data = new byte[100000];
                for (int i = 0; i < data.length; i++) data[i] = (byte) (i * 7);
                lo.write(data);
                lo.seek(99990);
                out("more.large_object", lo.size() + " " + Arrays.toString(lo.read(10)));
            }
            lom.delete(oid);
            conn.commit();
            conn.setAutoCommit(true);
            conn.setClientInfo("ApplicationName", "pgml-jdbc-test");
            out("more.client_info", conn.getClientInfo("ApplicationName") + " " + query("SHOW application_name"));
            out("more.valid", conn.isValid(5));
            // LISTEN/NOTIFY on the same connection.
            PGConnection pgc = conn.unwrap(PGConnection.class);
            update("LISTEN jdbc_chan");
            update("NOTIFY jdbc_chan, 'from jdbc ü'");
            org.postgresql.PGNotification[] ns = pgc.getNotifications(5000);
            int pid = Integer.parseInt(query("SELECT pg_backend_pid()").replaceAll("[\\[\\]]", ""));
            out("more.notify", ns == null ? "none" : ns.length + " " + ns[0].getName() + " " + ns[0].getParameter());
            out("more.notify.pid_matches", ns != null && ns.length > 0 && ns[0].getPID() == pid);
            out("more.backend_key.pid_matches", pgc.getBackendPID() == pid);
            update("UNLISTEN *");
        });

        check("metadata", () -> {
            DatabaseMetaData m = conn.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = m.getTables(null, "public", "jdbc\\_%", new String[]{"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME") + "/" + rs.getString("TABLE_TYPE"));
            }
            out("metadata.tables", tables);
            try (ResultSet rs = m.getColumns(null, "public", "jdbc_items", "%")) {
                while (rs.next()) {
                    out("metadata.column." + rs.getString("COLUMN_NAME"), rs.getInt("ORDINAL_POSITION") + " "
                            + rs.getString("TYPE_NAME") + " " + rs.getInt("DATA_TYPE") + " size=" + rs.getInt("COLUMN_SIZE")
                            + " nullable=" + rs.getInt("NULLABLE") + " default=" + rs.getString("COLUMN_DEF"));
                }
            }
            try (ResultSet rs = m.getColumns(null, "public", "jdbc_serial", "id")) {
                rs.next();
                out("metadata.serial", rs.getString("TYPE_NAME") + " autoincrement=" + rs.getString("IS_AUTOINCREMENT"));
            }
            try (ResultSet rs = m.getPrimaryKeys(null, "public", "jdbc_items")) {
                while (rs.next()) out("metadata.pk", rs.getString("COLUMN_NAME") + " " + rs.getString("PK_NAME"));
            }
            List<String> indexes = new ArrayList<>();
            try (ResultSet rs = m.getIndexInfo(null, "public", "jdbc_items", false, false)) {
                while (rs.next()) indexes.add(rs.getString("INDEX_NAME") + "(" + rs.getString("COLUMN_NAME") + ") unique=" + !rs.getBoolean("NON_UNIQUE"));
            }
            out("metadata.indexes", indexes);
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = m.getSchemas(null, "p%")) {
                while (rs.next()) if (!rs.getString(1).startsWith("pg_temp") && !rs.getString(1).startsWith("pg_toast_temp")) schemas.add(rs.getString(1));
            }
            out("metadata.schemas", schemas);
            if (simpleMode()) return;   // preferQueryMode=simple cannot describe a statement before it runs
            try (PreparedStatement ps = conn.prepareStatement("SELECT id, label, price, created FROM jdbc_items WHERE id = ?")) {
                ResultSetMetaData r = ps.getMetaData();   // a Describe before any execution
                List<String> cols = new ArrayList<>();
                for (int i = 1; i <= r.getColumnCount(); i++) {
                    cols.add(r.getColumnLabel(i) + ":" + r.getColumnTypeName(i) + ":" + r.getTableName(i) + ":" + r.isNullable(i));
                }
                out("metadata.resultset", cols);
                out("metadata.parameters", ps.getParameterMetaData().getParameterCount() + " "
                        + ps.getParameterMetaData().getParameterTypeName(1));
            }
        });

        for (String t : new String[]{"jdbc_items", "jdbc_copy", "jdbc_serial"}) update("DROP TABLE IF EXISTS " + t);
        out("end", query("SELECT 'done'"));
        conn.close();

        if (pgml) {   // each part on its own connection: pgJDBC may give up on one
            for (Runnable part : new Runnable[]{PgmlJdbc::pgmlChecks, PgmlJdbc::pgmlDeclaredTypes}) {
                conn = DriverManager.getConnection(args[0]);
                part.run();
                if (!conn.isClosed()) conn.close();
            }
        }
    }

    static final String FEATURES = "ARRAY[sepal_length, sepal_width, petal_length, petal_width]";

    static void pgmlChecks() {
        check("pgml.load_dataset", () -> out("pgml.load_dataset", query("SELECT * FROM pgml.load_dataset('iris')")));
        check("pgml.train", () -> {
            String sql = "SELECT * FROM pgml.train(project_name => ?, task => ?, relation_name => ?, y_column_name => ?, algorithm => ?)";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setString(1, "jdbc_iris");
                ps.setString(2, "classification");
                ps.setString(3, "pgml.iris");
                ps.setString(4, "target");
                ps.setString(5, "linear");
                try (ResultSet rs = ps.executeQuery()) {
                    out("pgml.train", rows(rs));
                }
            }
        });
        check("pgml.predict", () -> {
            double[][] samples = {{5.1, 3.5, 1.4, 0.2}, {6.7, 3.0, 5.2, 2.3}, {5.9, 3.0, 4.2, 1.5}};
            int[] species = {0, 2, 1};   // setosa, virginica, versicolor
            try (PreparedStatement ps = conn.prepareStatement("SELECT pgml.predict(?, ?)")) {
                for (int i = 0; i < 8; i++) {   // past prepareThreshold: Bind/Execute of a named statement
                    double[] s = samples[i % 3];
                    ps.setString(1, "jdbc_iris");
                    ps.setArray(2, conn.createArrayOf("float8", new Double[]{s[0], s[1], s[2], s[3]}));
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("pgml.predict.float8." + i, "expected=" + species[i % 3] + " got=" + rs.getFloat(1) + " server_prepared=" + serverPrepared(ps));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT pgml.predict('jdbc_iris', ?::real[])")) {
                for (int i = 0; i < 6; i++) {
                    double[] s = samples[i % 3];
                    ps.setArray(1, conn.createArrayOf("float4", new Float[]{(float) s[0], (float) s[1], (float) s[2], (float) s[3]}));
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("pgml.predict.real." + i, "expected=" + species[i % 3] + " got=" + rs.getFloat(1));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT pgml.predict(?, ?)")) {
                for (int i = 0; i < 6; i++) {   // a primitive double[]: pgJDBC may send it as a binary float8[]
                    ps.setString(1, "jdbc_iris");
                    ps.setObject(2, samples[i % 3]);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("pgml.predict.primitive." + i, "expected=" + species[i % 3] + " got=" + rs.getFloat(1));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT pgml.predict_proba(?, ?)")) {
                ps.setString(1, "jdbc_iris");
                ps.setArray(2, conn.createArrayOf("float8", new Double[]{5.1, 3.5, 1.4, 0.2}));
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    Array a = rs.getArray(1);
                    Object[] probs = (Object[]) a.getArray();
                    double sum = 0;
                    for (Object p : probs) sum += ((Number) p).doubleValue();
                    out("pgml.predict_proba", probs.length + " argmax0=" + (((Number) probs[0]).doubleValue() > 0.5)
                            + " sum=" + Math.round(sum * 1000) / 1000.0);
                }
            }
        });
        check("pgml.table", () -> {
            out("pgml.table.stream", query("SELECT count(*), sum((p = target)::int), min(p), max(p) FROM ("
                    + "SELECT target, pgml.predict('jdbc_iris', " + FEATURES + ") AS p FROM pgml.iris) s"));
            try (PreparedStatement ps = conn.prepareStatement("SELECT target, pgml.predict(?, " + FEATURES
                    + ") AS p FROM pgml.iris WHERE target = ?")) {
                for (int t = 0; t < 3; t++) {
                    ps.setString(1, "jdbc_iris");
                    ps.setInt(2, t);
                    int n = 0, correct = 0;
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) { n++; if (Math.round(rs.getFloat(2)) == rs.getInt(1)) correct++; }
                    }
                    out("pgml.table.target." + t, n + " correct=" + correct);
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM pgml.iris WHERE pgml.predict(?, "
                    + FEATURES + ") = target")) {
                for (int i = 0; i < 6; i++) {
                    ps.setString(1, "jdbc_iris");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("pgml.table.where." + i, rs.getInt(1));
                    }
                }
            }
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("SELECT target, pgml.predict('jdbc_iris', " + FEATURES + ") FROM pgml.iris")) {
                ps.setFetchSize(10);
                int n = 0, correct = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) { n++; if (Math.round(rs.getFloat(2)) == rs.getInt(1)) correct++; }
                }
                out("pgml.table.fetch_size", n + " correct=" + correct);
            }
            conn.commit();
        });
        check("pgml.errors", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT pgml.predict(?, ?)")) {
                ps.setString(1, "jdbc_no_such_project");
                ps.setArray(2, conn.createArrayOf("float8", new Double[]{1.0, 2.0, 3.0, 4.0}));
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    out("pgml.errors.unknown_project", "none " + rs.getString(1));
                } catch (SQLException e) {
                    out("pgml.errors.unknown_project", e.getSQLState());
                }
                ps.setString(1, "jdbc_iris");
                ps.setNull(2, Types.ARRAY);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    out("pgml.errors.null_features", "value " + rs.getString(1));
                } catch (SQLException e) {
                    out("pgml.errors.null_features", e.getSQLState());
                }
            }
            out("pgml.errors.usable", query("SELECT 'usable'"));
            // In a transaction block: a failing pgml call aborts the upstream's transaction like any error.
            conn.setAutoCommit(false);
            out("pgml.errors.tx_predict", query("SELECT pgml.predict('jdbc_iris', ARRAY[5.1, 3.5, 1.4, 0.2]::float8[])"));
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM pgml.train('jdbc_iris')");
                out("pgml.errors.train_in_tx", "none");
            } catch (SQLException e) {
                out("pgml.errors.train_in_tx", e.getSQLState());
            }
            try {
                out("pgml.errors.after_train_in_tx", query("SELECT 1"));
            } catch (SQLException e) {
                out("pgml.errors.after_train_in_tx", e.getSQLState());
            }
            conn.rollback();
            Savepoint sp = conn.setSavepoint();
            try {
                query("SELECT pgml.predict('jdbc_no_such_project', ARRAY[1, 2, 3, 4])");
                out("pgml.errors.in_savepoint", "none");
            } catch (SQLException e) {
                out("pgml.errors.in_savepoint", e.getSQLState());
            }
            conn.rollback(sp);
            out("pgml.errors.after_savepoint", query("SELECT pgml.predict('jdbc_iris', ARRAY[5.1, 3.5, 1.4, 0.2])"));
            conn.commit();
        });
    }

    /** Lines "pgml.declared.*": predict over a table with parameters whose types pgJDBC declares in Parse
     * (setString: varchar, setLong: int8, a float4 array: real[]). PostgreSQL keeps declared types:
     * ParameterDescription echoes them, and a binary int8 or float4[] is read as what it was declared. */
    static void pgmlDeclaredTypes() {
        check("pgml.declared", () -> {
            String sql = "SELECT target, pgml.predict(?, " + FEATURES + ") AS p FROM pgml.iris WHERE target = ?";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 0; i < 6; i++) {   // the 5th: a named statement, Parse + Describe: ParameterDescription
                    ps.setString(1, "jdbc_iris");
                    ps.setInt(2, i % 3);
                    int n = 0;
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) n++;
                        out("pgml.declared.reuse." + i, n);
                    } catch (SQLException | RuntimeException e) {
                        out("pgml.declared.reuse." + i, e.getClass().getSimpleName() + " " + firstLine(String.valueOf(e.getMessage())));
                    }
                }
            }
            String[] extra = {"SELECT pgml.predict(?, ?) AS p, 1 AS one",
                    "SELECT pgml.predict(?, ?) AS p FROM pgml.iris WHERE target = 2 LIMIT 1"};
            for (int i = 0; i < extra.length; i++) {
                try (PreparedStatement ps = conn.prepareStatement(extra[i])) {
                    ps.setString(1, "jdbc_iris");   // a real[] parameter, which pgJDBC sends as a binary float4[]
                    ps.setArray(2, conn.createArrayOf("float4", new Float[]{6.7f, 3.0f, 5.2f, 2.3f}));
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("pgml.declared.real_array." + i, rs.getFloat(1));
                    } catch (SQLException | RuntimeException e) {
                        out("pgml.declared.real_array." + i, e.getClass().getSimpleName() + " " + firstLine(String.valueOf(e.getMessage())));
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setString(1, "jdbc_iris");
                ps.setLong(2, 1L);   // an int8 parameter, sent in binary
                int n = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) n++;
                    out("pgml.declared.int8", n);
                } catch (SQLException | RuntimeException e) {
                    out("pgml.declared.int8", e.getClass().getSimpleName() + " " + firstLine(String.valueOf(e.getMessage())));
                }
            }
        });
    }
}
