// pgjdbc against a running Tracecube server: TLS verified against the server's certificate,
// DatabaseMetaData (getTables, getColumns), prepared statements, a cursor fetched a few
// rows at a time. Settings from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,
// PGSSLROOTCERT; expected answers from EXPECT_TRACES and EXPECT_PHONE. Run with
// `java -cp postgresql.jar Jdbc.java`; exits non-zero on the first wrong answer.
import java.sql.*;
import java.util.*;

public class Jdbc {
    static void check(String name, Object got, Object expected) {
        if (!Objects.equals(got, expected)) {
            System.err.println(name + ": got " + got + ", expected " + expected);
            System.exit(1);
        }
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> env = System.getenv();
        String url = "jdbc:postgresql://" + env.get("PGHOST") + ":" + env.get("PGPORT") + "/"
                + env.get("PGDATABASE") + "?sslmode=verify-full&sslrootcert=" + env.get("PGSSLROOTCERT");
        long traces = Long.parseLong(env.get("EXPECT_TRACES"));
        long phone = Long.parseLong(env.get("EXPECT_PHONE"));
        try (Connection conn = DriverManager.getConnection(url, env.get("PGUSER"), env.get("PGPASSWORD"))) {
            DatabaseMetaData meta = conn.getMetaData();
            check("database major version", meta.getDatabaseMajorVersion(), 16);
            Set<String> tables = new TreeSet<>();
            try (ResultSet rs = meta.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check("getTables", tables.containsAll(List.of("traces", "impact_weights", "journeys")), true);
            Set<String> columns = new TreeSet<>();
            try (ResultSet rs = meta.getColumns(null, "public", "traces", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME"));
            }
            check("getColumns", columns.containsAll(List.of("channel", "declaration", "effort", "ts")), true);

            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT count(*) FROM traces WHERE channel = ?")) {
                for (int i = 0; i < 6; i++) { // server-prepared from the fifth run on
                    ps.setString(1, "phone");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check("prepared count", rs.getLong(1), phone);
                    }
                }
            }
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(100); // a portal fetched 100 rows at a time
                long rows = 0;
                try (ResultSet rs = st.executeQuery("SELECT contact_id FROM traces")) {
                    while (rs.next()) rows++;
                }
                check("fetched rows", rows, traces);
            }
            conn.commit();
            conn.setAutoCommit(true);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("DELETE FROM impact_weights");
                check("reader delete", "succeeded", "refused");
            } catch (SQLException e) {
                check("refusal code", e.getSQLState(), "42501");
            }
        }
        System.out.println("ok pgjdbc");
    }
}
