//! The cross-channel journey views of SPEC §1.4 as window functions over `traces`:
//! `journeys` (one row per contact with `journey_id`, `journey_seq`, `prev_channel`),
//! `journey_summary` (one row per journey, with FCR and give-up) and
//! `channel_transitions`. The definition the stored journeys are checked against, and
//! what the views read when the stored journeys are not up to date.
//!
//! A journey is the chain of contacts of one customer about one need (the first
//! declaration segment), each at most the configured gap after the previous one.
//! Every window shares one partitioning and order — (customer, need) by (`ts`,
//! `contact_id`) — so the traces are sorted once.

use super::views::View;
use crate::schema::traces_schema;

/// The `SELECT` of `view` for a journey gap of `gap_seconds`.
pub fn select(view: View, gap_seconds: i64) -> String {
    let [journeys, summary, transitions] = selects(gap_seconds);
    match view {
        View::Journeys => journeys,
        View::Summary => summary,
        View::Transitions => transitions,
    }
}

fn selects(gap_seconds: i64) -> [String; 3] {
    let gap = format!("INTERVAL '{gap_seconds} seconds'");
    let columns = traces_schema()
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    // One partitioning and order for every window, on plain columns, so the second
    // window re-uses the first one's sort.
    let window = "PARTITION BY customer_id, journey_need ORDER BY ts, contact_id";
    let chain = format!(
        "WITH base AS ( \
           SELECT {columns}, path_segment(declaration, 1) AS journey_need FROM traces \
         ), ordered AS ( \
           SELECT *, lag(ts) OVER w AS journey_prev_ts, lag(channel) OVER w AS journey_prev_channel, \
             row_number() OVER w AS journey_rn \
           FROM base WINDOW w AS ({window}) \
         ), starts AS ( \
           SELECT *, (journey_prev_ts IS NULL OR journey_prev_ts + {gap} < ts) AS journey_start \
           FROM ordered \
         ), marked AS ( \
           SELECT *, \
             max(CASE WHEN journey_start THEN journey_rn END) OVER s AS journey_start_rn, \
             last_value(CASE WHEN journey_start THEN contact_id END) IGNORE NULLS OVER s AS journey_id \
           FROM starts WINDOW s AS ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) \
         )"
    );
    let journeys = format!(
        "{chain} \
         SELECT {columns}, journey_id, \
           CAST(journey_rn - journey_start_rn + 1 AS INT) AS journey_seq, \
           CASE WHEN journey_start THEN NULL ELSE journey_prev_channel END AS prev_channel \
         FROM marked"
    );
    // Grouped by the window keys plus the journey's first row number.
    let summary = format!(
        "{chain} \
         SELECT max(journey_id) AS journey_id, customer_id, journey_need AS need, \
           min(ts) AS started_at, max(ts) AS ended_at, count(*) AS contacts, \
           count(DISTINCT channel) AS channels, \
           first_value(channel ORDER BY ts, contact_id) AS first_channel, \
           last_value(channel ORDER BY ts, contact_id) AS last_channel, \
           (count(*) = 1 AND bool_and(resolved)) AS fcr, \
           (NOT last_value(resolved ORDER BY ts, contact_id) \
             AND max(ts) + {gap} < (SELECT max(ts) FROM traces)) AS gave_up \
         FROM marked \
         GROUP BY customer_id, journey_need, journey_start_rn"
    );
    // A transition is a contact that continues a journey: the previous contact of the
    // same customer and need is at most the gap before it. One window, no journey ids.
    let transitions = format!(
        "SELECT journey_prev_channel AS from_channel, channel AS to_channel, count(*) AS contacts \
         FROM ( \
           SELECT channel, ts, lag(ts) OVER w AS journey_prev_ts, \
             lag(channel) OVER w AS journey_prev_channel \
           FROM (SELECT customer_id, contact_id, ts, channel, \
                   path_segment(declaration, 1) AS journey_need FROM traces) \
           WINDOW w AS ({window}) \
         ) \
         WHERE journey_prev_ts IS NOT NULL AND journey_prev_ts + {gap} >= ts \
         GROUP BY journey_prev_channel, channel"
    );
    [journeys, summary, transitions]
}
