//! Cubes (SPEC §2.3): pre-aggregated Delta tables of `traces` at a coarser grain, kept
//! up to date by every load, compacted by `tracecube compact`, and used by the
//! aggregate-aware rewrite ([`rewrite`]) whenever they reflect the current `traces`.
//!
//! - [`CubeDef`]: a cube's name, dimensions, retention and folder;
//! - [`build`]: computing cube rows (from a load's new rows or from `traces`), appending
//!   them, rebuilding a stale cube, compacting;
//! - [`registry`]: what the server knows of each cube (freshness, size) and the
//!   `tracecube.cubes` system table;
//! - [`rewrite`]: the optimizer rule, with [`measures`] (aggregates from measures) and
//!   [`time_filters`] (`ts` filters answered by `day` or `minute`).

pub mod build;
pub mod dictionary;
pub mod dimensions;
pub mod measures;
pub mod memory;
pub mod partials;
pub mod registry;
pub mod rewrite;
pub mod time_filters;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::config::{ConfigError, CubeConfig, parse_duration};
pub use dimensions::{Derivation, Dimension};

/// Delta application id whose transaction version is the `traces` version a cube reflects.
pub const TRACES_VERSION_TXN: &str = "tracecube.traces";
/// Delta application id whose transaction version is the first instant (µs) from which a
/// cube with a retention holds every trace.
pub const COMPLETE_FROM_TXN: &str = "tracecube.complete_from";

/// How a measure is computed from trace rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// A count: Int64, never NULL; re-aggregated with `sum`.
    Count,
    /// A sum: NULL when nothing was summed; re-aggregated with `sum`.
    Sum,
}

/// The additive measures of every cube (SPEC §2.3), with their types and the SQL that
/// computes them from `traces` rows (`{sla}` stands for the row's SLA threshold).
pub const MEASURES: [(&str, MeasureKind, &str); 18] = [
    ("contacts", MeasureKind::Count, "count(*)"),
    ("handle_s_sum", MeasureKind::Sum, "sum(handle_s)"),
    ("handle_n", MeasureKind::Count, "count(handle_s)"),
    ("wait_s_sum", MeasureKind::Sum, "sum(wait_s)"),
    ("wait_n", MeasureKind::Count, "count(wait_s)"),
    (
        "sla_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE {sla} IS NOT NULL AND wait_s IS NOT NULL)",
    ),
    (
        "sla_met_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE {sla} IS NOT NULL AND wait_s IS NOT NULL AND NOT abandoned AND wait_s <= {sla})",
    ),
    (
        "abandoned_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE abandoned)",
    ),
    (
        "resolved_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE resolved)",
    ),
    ("csat_n", MeasureKind::Count, "count(csat)"),
    (
        "csat_sat_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE csat >= 4)",
    ),
    ("nps_n", MeasureKind::Count, "count(nps)"),
    (
        "nps_promoters_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE nps >= 9)",
    ),
    (
        "nps_detractors_n",
        MeasureKind::Count,
        "count(*) FILTER (WHERE nps <= 6)",
    ),
    (
        "sentiment_sum",
        MeasureKind::Sum,
        "sum(CAST(sentiment AS DOUBLE))",
    ),
    ("sentiment_n", MeasureKind::Count, "count(sentiment)"),
    ("cost_sum", MeasureKind::Sum, "sum(cost)"),
    ("effort_sum", MeasureKind::Sum, "sum(effort)"),
];

/// Type of a measure column: the floating sums are `Float64`, counts and the sums of
/// integer seconds `Int64`.
fn measure_type(name: &str) -> DataType {
    match name {
        "sentiment_sum" | "cost_sum" | "effort_sum" => DataType::Float64,
        _ => DataType::Int64,
    }
}

/// The time dimension a retention counts back on, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `minute` or `day`.
    pub column: String,
    pub seconds: i64,
}

/// A cube: its name, dimensions (columns of `traces` or expressions of one, see
/// [`dimensions`]) and optional retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubeDef {
    pub name: String,
    pub dimensions: Vec<Dimension>,
    pub retention: Option<Retention>,
}

impl CubeDef {
    /// Check a configured cube: a SQL identifier for a name, known and distinct
    /// dimensions, a retention only on a cube with a `minute` or `day` dimension.
    pub fn new(name: &str, config: &CubeConfig) -> Result<Self, ConfigError> {
        let invalid = |key: String, value: String, reason: String| ConfigError::Invalid {
            key,
            value,
            reason,
        };
        let key = format!("cubes.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(invalid(
                key,
                name.into(),
                "a cube name is lower-case letters, digits and _".into(),
            ));
        }
        let mut dimensions: Vec<Dimension> = Vec::new();
        for text in &config.dimensions {
            let d = Dimension::parse(text).ok_or_else(|| {
                invalid(
                    format!("{key}.dimensions"),
                    text.clone(),
                    "not a column of traces, path_prefix(<declaration|qualification|action>, <1-9>) \
                     or date_trunc('month', day)"
                        .into(),
                )
            })?;
            if MEASURES.iter().any(|(m, ..)| *m == d.name)
                || dimensions.iter().any(|e| e.name == d.name)
            {
                return Err(invalid(
                    format!("{key}.dimensions"),
                    text.clone(),
                    "a dimension is named once and is not a measure name".into(),
                ));
            }
            dimensions.push(d);
        }
        if dimensions.is_empty() {
            return Err(invalid(
                format!("{key}.dimensions"),
                String::new(),
                "a cube needs at least one dimension".into(),
            ));
        }
        let retention = match &config.retention {
            None => None,
            Some(text) => {
                let seconds = parse_duration(&format!("{key}.retention"), text)?;
                let column = ["minute", "day"]
                    .into_iter()
                    .find(|c| {
                        dimensions
                            .iter()
                            .any(|d| d.name == *c && d.derivation == Derivation::Column)
                    })
                    .ok_or_else(|| {
                        invalid(
                            format!("{key}.retention"),
                            text.clone(),
                            "a retention needs a `minute` or `day` dimension".into(),
                        )
                    })?;
                Some(Retention {
                    column: column.to_string(),
                    seconds,
                })
            }
        };
        Ok(CubeDef {
            name: name.to_string(),
            dimensions,
            retention,
        })
    }

    /// Every cube of a configuration, finest (most dimensions) first.
    pub fn all(cubes: &BTreeMap<String, CubeConfig>) -> Result<Vec<CubeDef>, ConfigError> {
        let mut defs = cubes
            .iter()
            .map(|(name, c)| CubeDef::new(name, c))
            .collect::<Result<Vec<_>, _>>()?;
        defs.sort_by(|a, b| {
            b.dimensions
                .len()
                .cmp(&a.dimensions.len())
                .then(a.name.cmp(&b.name))
        });
        Ok(defs)
    }

    /// Folder of the cube under the warehouse root. It names a fingerprint of what the
    /// rows depend on (dimensions, retention, the measures' names, types and SQL, SLAs),
    /// so that a changed definition starts a new table instead of mixing rows of two
    /// definitions. The fingerprint hashes a text spelled out here (FNV-1a), so it is the
    /// same for every build.
    pub fn dir(&self, slas: &BTreeMap<String, i32>) -> String {
        let mut text = format!("dimensions={};", self.definitions().join(","));
        if let Some(r) = &self.retention {
            text.push_str(&format!("retention={}:{};", r.column, r.seconds));
        }
        for (name, kind, sql) in MEASURES {
            let kind = match kind {
                MeasureKind::Count => "count",
                MeasureKind::Sum => "sum",
            };
            text.push_str(&format!(
                "measure={name}:{kind}:{}:{sql};",
                measure_type(name)
            ));
        }
        for (channel, seconds) in slas {
            text.push_str(&format!("sla={channel}={seconds};"));
        }
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("cubes/{}-{:08x}", self.name, hash as u32)
    }

    /// Whether `column` is a column (dimension) of the cube.
    pub fn has_dimension(&self, column: &str) -> bool {
        self.dimensions.iter().any(|d| d.name == column)
    }

    /// The dimensions as configured, spelled one way.
    pub fn definitions(&self) -> Vec<String> {
        self.dimensions.iter().map(Dimension::definition).collect()
    }

    /// Whether every dimension of `self` can be computed from rows of `finer`: `finer` has
    /// the same column, or the source column of an expression dimension.
    pub fn derives_from(&self, finer: &CubeDef) -> bool {
        self.dimensions.iter().all(|d| {
            finer.has_dimension(&d.name)
                || finer
                    .dimensions
                    .iter()
                    .any(|f| f.derivation == Derivation::Column && f.name == d.source)
        })
    }

    /// The time dimension rows are sorted on first, if any.
    pub fn time_dimension(&self) -> Option<&str> {
        ["minute", "day", "month"]
            .into_iter()
            .find(|c| self.has_dimension(c))
    }

    /// Schema of the cube table: the dimensions (typed as their source column, a month as
    /// a date), then the measures.
    pub fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .dimensions
            .iter()
            .map(|d| Field::new(&d.name, d.data_type(), true))
            .collect();
        fields.extend(MEASURES.iter().map(|(name, kind, _)| {
            Field::new(*name, measure_type(name), *kind == MeasureKind::Sum)
        }));
        Arc::new(Schema::new(fields))
    }
}

/// SQL of the SLA threshold of a row's channel, from the configured table.
pub fn sla_case(slas: &BTreeMap<String, i32>) -> String {
    if slas.is_empty() {
        return "CAST(NULL AS INT)".into();
    }
    let arms: String = slas
        .iter()
        .map(|(channel, seconds)| format!(" WHEN '{}' THEN {seconds}", channel.replace('\'', "''")))
        .collect();
    format!("(CASE channel{arms} END)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cubes_are_valid_and_finest_first() {
        let defs = CubeDef::all(&crate::config::default_cubes()).unwrap();
        assert_eq!(defs[0].name, "cube_day");
        assert!(
            defs.windows(2)
                .all(|w| w[0].dimensions.len() >= w[1].dimensions.len())
        );
        let minute = defs.iter().find(|d| d.name == "cube_minute").unwrap();
        assert_eq!(minute.retention.as_ref().unwrap().seconds, 7 * 86_400);
    }

    #[test]
    fn folder_changes_with_the_slas() {
        let def = CubeDef::new(
            "c",
            &CubeConfig {
                dimensions: vec!["channel".into()],
                retention: None,
            },
        )
        .unwrap();
        let mut slas = BTreeMap::from([("phone".to_string(), 90)]);
        let before = def.dir(&slas);
        assert_eq!(before, def.dir(&slas));
        slas.insert("phone".into(), 60);
        assert_ne!(before, def.dir(&slas));
    }

    #[test]
    fn folder_fingerprint_is_spelled_out_not_debug_output() {
        let def = CubeDef::new(
            "cube_channel",
            &CubeConfig {
                dimensions: vec!["channel".into(), "day".into()],
                retention: Some("7 days".into()),
            },
        )
        .unwrap();
        let slas = BTreeMap::from([("phone".to_string(), 90)]);
        // Recomputed from the documented recipe: a change of the recipe, the measures or
        // their SQL must show here.
        let mut text = "dimensions=channel,day;retention=day:604800;".to_string();
        for (name, kind, sql) in MEASURES {
            let kind = if kind == MeasureKind::Count {
                "count"
            } else {
                "sum"
            };
            text.push_str(&format!(
                "measure={name}:{kind}:{}:{sql};",
                measure_type(name)
            ));
        }
        text.push_str("sla=phone=90;");
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        assert_eq!(
            def.dir(&slas),
            format!("cubes/cube_channel-{:08x}", hash as u32)
        );
        assert!(
            !text.contains("Some("),
            "no Debug output in the fingerprint"
        );
    }

    #[test]
    fn bad_definitions_are_named() {
        let bad = |dims: &[&str], retention: Option<&str>| {
            CubeDef::new(
                "c",
                &CubeConfig {
                    dimensions: dims.iter().map(|d| d.to_string()).collect(),
                    retention: retention.map(str::to_string),
                },
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad(&["colour"], None).contains("colour"));
        assert!(bad(&["channel"], Some("7 days")).contains("minute"));
        assert!(bad(&["channel", "channel"], None).contains("once"));
    }
}
