//! Configuration: `tracecube.toml` (or `--config`), every key overridable by `TRACECUBE_…`
//! environment variables, and defaults that need no file at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// The whole configuration of a Tracecube process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the warehouse lives: a local path, `file://…` or `s3://bucket/prefix`.
    pub warehouse: String,
    /// Time zone in which local dates, hours and ages are computed (IANA name).
    pub time_zone: String,
    /// PostgreSQL listen address.
    pub listen: String,
    /// Options for the warehouse's object store (endpoint, credentials, region…).
    pub storage: BTreeMap<String, String>,
    /// Hourly handling cost per channel, used when a trace has no `cost`.
    pub hourly_cost: BTreeMap<String, f64>,
    /// Hourly cost of channels absent from `hourly_cost`.
    pub default_hourly_cost: f64,
    /// Generate the demo data set when the warehouse is empty at `serve`.
    pub demo: bool,
    /// Service-level threshold per channel in seconds (`sla_seconds`, `service_level`).
    pub sla_seconds: BTreeMap<String, i32>,
    /// Longest gap between two contacts of one journey, e.g. `"7 days"`, `"36 hours"`.
    pub journey_gap: String,
    /// The cubes kept next to `traces`, by name (SPEC §2.3). An empty table turns cubes off.
    pub cubes: BTreeMap<String, CubeConfig>,
    /// Memory the server may use to hold cubes as Arrow batches (smallest cubes first);
    /// the others are read from their Parquet files.
    pub cube_memory_mb: u64,
    /// Most client connections served at once; one more is refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// Who may connect, with which role and password verifier. None: loopback clients only,
    /// as the admin `tracecube`, and the server only listens on a loopback address.
    pub users: Vec<UserConfig>,
    /// TLS for PostgreSQL clients.
    pub tls: Option<TlsConfig>,
    /// Refuse connections without TLS (also accepted inside `[tls]`).
    pub tls_only: bool,
    /// The one server folder `COPY … TO` may write into (admins only); none: no file is
    /// ever written through SQL.
    pub export_dir: Option<String>,
    /// Locations external tables may read (`s3://bucket/prefix`, `/srv/shared/data`),
    /// admins only; none: no external table.
    pub external_locations: Vec<String>,
    /// Locations `COPY traces FROM` may read (`s3://bucket/exports`, `/srv/exports`), for
    /// loaders and admins; none: no load through SQL. Never inside the warehouse.
    pub load_locations: Vec<String>,
    /// Memory all queries of the server may use together (DataFusion's memory pool, fairly
    /// shared, spilling to disk where an operator can); 0: no limit.
    pub memory_limit_mb: u64,
    /// Memory a load may hold for the rows it has read and not yet written (each day's rows
    /// are written out, oldest first, past it).
    pub load_memory_mb: u64,
    /// Default statement timeout of every session (`SET statement_timeout` changes it for
    /// one session): milliseconds, or with a unit (`"30s"`, `"5min"`); 0: none.
    #[serde(deserialize_with = "timeout_ms")]
    pub statement_timeout: u64,
    /// Address of the HTTP endpoint serving `/metrics` and `/healthz`; empty: none.
    pub http_listen: String,
    /// How long files that `traces` or a cube no longer references (replaced by a
    /// compaction, staged by a load that stopped) are kept before a vacuum deletes them:
    /// longer than any query or load runs (`"1 day"`).
    pub vacuum_retention: String,
    /// How often the server compacts and vacuums the warehouse in the background
    /// (`"1 hour"`); `"off"`: never.
    pub maintenance_interval: String,
}

/// One user of the server.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub role: crate::server::policy::Role,
    /// A SCRAM-SHA-256 verifier (`tracecube passwd` prints one), never a plaintext password.
    pub password: String,
}

/// Never prints the verifier.
impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password", &"(redacted)")
            .finish()
    }
}

/// The server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub tls_only: bool,
}

/// A statement timeout written as PostgreSQL accepts it: a number of milliseconds, or a
/// number with a unit `ms`, `s`, `min`, `h` or `d` (`"30s"`, `"5 min"`).
pub fn parse_timeout_ms(value: &str) -> Result<u64, String> {
    let text = value.trim().trim_matches('\'').trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration (e.g. 30000, '30s', '5min')"))?;
    let unit = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1e3,
        "min" => 60e3,
        "h" => 3_600e3,
        "d" => 86_400e3,
        other => return Err(format!("unknown unit {other:?} (use ms, s, min, h or d)")),
    };
    let ms = (number * unit).round();
    if !(0.0..=i32::MAX as f64).contains(&ms) {
        return Err(format!("{value:?} is out of range (0 to {} ms)", i32::MAX));
    }
    Ok(ms as u64)
}

fn timeout_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Timeout {
        Millis(u64),
        Text(String),
    }
    match Timeout::deserialize(d)? {
        Timeout::Millis(ms) => Ok(ms),
        Timeout::Text(text) => parse_timeout_ms(&text).map_err(serde::de::Error::custom),
    }
}

/// One cube: its dimensions (columns of `traces`, `path_prefix(<path column>, <level>)` or
/// `date_trunc('month', day)`) and how far back it keeps rows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CubeConfig {
    pub dimensions: Vec<String>,
    /// Keep only rows whose time dimension (`minute` or `day`) is within this duration of
    /// the newest one, e.g. `"7 days"`.
    #[serde(default)]
    pub retention: Option<String>,
}

impl CubeConfig {
    fn new(dimensions: &[&str], retention: Option<&str>) -> Self {
        CubeConfig {
            dimensions: dimensions.iter().map(|d| d.to_string()).collect(),
            retention: retention.map(str::to_string),
        }
    }

    /// Parse the value of a `TRACECUBE_CUBES_<NAME>` variable: `dim, dim, …` optionally
    /// followed by `; retention <duration>`.
    fn parse(text: &str) -> Option<Self> {
        let (dims, retention) = match text.split_once(';') {
            Some((d, r)) => (
                d,
                Some(r.trim().strip_prefix("retention")?.trim().to_string()),
            ),
            None => (text, None),
        };
        // Commas inside parentheses belong to an expression (`path_prefix(declaration, 2)`).
        let mut dimensions: Vec<String> = Vec::new();
        let (mut depth, mut current) = (0i32, String::new());
        for c in dims.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    dimensions.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        dimensions.push(current);
        let dimensions: Vec<String> = dimensions
            .iter()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        (!dimensions.is_empty()).then_some(CubeConfig {
            dimensions,
            retention,
        })
    }
}

/// The default cube lattice, chosen from `benches/contactbench` (see `benches/README.md`):
/// each dashboard question finds a cube hundreds of times smaller than `traces`.
pub fn default_cubes() -> BTreeMap<String, CubeConfig> {
    let axes = [
        "declaration",
        "qualification",
        "action",
        "channel",
        "category",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        axes.iter().copied().chain(extra.iter().copied()).collect()
    };
    [
        ("cube_day", CubeConfig::new(&with(&["day"]), None)),
        ("cube_axes", CubeConfig::new(&axes, None)),
        (
            "cube_channel_day",
            CubeConfig::new(&["channel", "category", "day"], None),
        ),
        (
            "cube_declaration_day",
            CubeConfig::new(&["declaration", "channel", "category", "day"], None),
        ),
        (
            "cube_life_cycle",
            CubeConfig::new(
                &["life_stage", "tenure_year", "channel", "category", "day"],
                None,
            ),
        ),
        (
            "cube_hour",
            CubeConfig::new(&["weekday", "hour", "channel", "category", "day"], None),
        ),
        (
            "cube_l2_day",
            CubeConfig::new(
                &[
                    "path_prefix(declaration, 2)",
                    "path_prefix(qualification, 2)",
                    "channel",
                    "category",
                    "day",
                ],
                None,
            ),
        ),
        (
            "cube_l2_month",
            CubeConfig::new(
                &[
                    "path_prefix(declaration, 2)",
                    "path_prefix(qualification, 2)",
                    "channel",
                    "category",
                    "date_trunc('month', day)",
                ],
                None,
            ),
        ),
        (
            "cube_minute",
            CubeConfig::new(&["declaration", "channel", "minute"], Some("7 days")),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl Default for Config {
    fn default() -> Self {
        let hourly_cost = [
            ("phone", 45.0),
            ("store", 40.0),
            ("chat", 35.0),
            ("email", 35.0),
            ("social", 35.0),
            ("mail", 35.0),
            ("app", 2.0),
            ("web", 2.0),
            ("bot", 2.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Config {
            warehouse: "./tracecube-data".into(),
            time_zone: "UTC".into(),
            listen: "127.0.0.1:5433".into(),
            storage: BTreeMap::new(),
            hourly_cost,
            default_hourly_cost: 35.0,
            demo: true,
            sla_seconds: [
                ("phone", 90),
                ("chat", 60),
                ("email", 172_800),
                ("mail", 1_728_000),
                ("social", 86_400),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            journey_gap: "7 days".into(),
            cubes: default_cubes(),
            cube_memory_mb: 1024,
            max_connections: 100,
            users: Vec::new(),
            tls: None,
            tls_only: false,
            export_dir: None,
            external_locations: Vec::new(),
            load_locations: Vec::new(),
            memory_limit_mb: 8192,
            load_memory_mb: 1024,
            statement_timeout: 0,
            http_listen: "127.0.0.1:9187".into(),
            vacuum_retention: "1 day".into(),
            maintenance_interval: "1 hour".into(),
        }
    }
}

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "tracecube.toml";

impl Config {
    /// Read `path` (or `./tracecube.toml` when present), then apply `TRACECUBE_*` overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?
            }
            None => Config::default(),
        };
        config.apply_env(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Apply `TRACECUBE_WAREHOUSE`, `TRACECUBE_TIME_ZONE`, `TRACECUBE_LISTEN`,
    /// `TRACECUBE_DEMO`, `TRACECUBE_DEFAULT_HOURLY_COST`, `TRACECUBE_HOURLY_COST_<CHANNEL>`,
    /// `TRACECUBE_SLA_SECONDS_<CHANNEL>`, `TRACECUBE_JOURNEY_GAP`, `TRACECUBE_CUBE_MEMORY_MB`,
    /// `TRACECUBE_CUBES_<NAME>` (`dim, dim, …[; retention <duration>]`, or `off` to drop the
    /// cube; `TRACECUBE_CUBES_ALL=off` drops them all), `TRACECUBE_STORAGE_<KEY>`,
    /// `TRACECUBE_MAX_CONNECTIONS`, `TRACECUBE_MEMORY_LIMIT_MB`, `TRACECUBE_STATEMENT_TIMEOUT`,
    /// `TRACECUBE_HTTP_LISTEN`, `TRACECUBE_EXPORT_DIR`, `TRACECUBE_EXTERNAL_LOCATIONS`,
    /// `TRACECUBE_LOAD_LOCATIONS`
    /// (comma-separated), `TRACECUBE_TLS_CERT`, `TRACECUBE_TLS_KEY`, `TRACECUBE_TLS_ONLY`
    /// and `TRACECUBE_USERS_<NAME>` (`<role>:<verifier>`).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("TRACECUBE_") else {
                continue;
            };
            let number = |v: &str| {
                v.parse::<f64>().map_err(|e| ConfigError::Invalid {
                    key: key.clone(),
                    value: v.to_string(),
                    reason: e.to_string(),
                })
            };
            match name {
                "WAREHOUSE" => self.warehouse = value,
                "TIME_ZONE" => self.time_zone = value,
                "LISTEN" => self.listen = value,
                "DEMO" => self.demo = truthy(&value),
                "DEFAULT_HOURLY_COST" => self.default_hourly_cost = number(&value)?,
                "CUBE_MEMORY_MB" => self.cube_memory_mb = number(&value)? as u64,
                "MAX_CONNECTIONS" => self.max_connections = number(&value)? as usize,
                "MEMORY_LIMIT_MB" => self.memory_limit_mb = number(&value)? as u64,
                "LOAD_MEMORY_MB" => self.load_memory_mb = number(&value)? as u64,
                "STATEMENT_TIMEOUT" => {
                    self.statement_timeout =
                        parse_timeout_ms(&value).map_err(|reason| ConfigError::Invalid {
                            key: key.clone(),
                            value: value.clone(),
                            reason,
                        })?
                }
                "HTTP_LISTEN" => self.http_listen = value,
                "EXPORT_DIR" => self.export_dir = Some(value).filter(|v| !v.is_empty()),
                "EXTERNAL_LOCATIONS" => self.external_locations = comma_list(&value),
                "LOAD_LOCATIONS" => self.load_locations = comma_list(&value),
                "TLS_ONLY" => self.tls_only = truthy(&value),
                "TLS_CERT" | "TLS_KEY" => {
                    let tls = self.tls.get_or_insert_with(|| TlsConfig {
                        cert: String::new(),
                        key: String::new(),
                        tls_only: false,
                    });
                    if name == "TLS_CERT" {
                        tls.cert = value;
                    } else {
                        tls.key = value;
                    }
                }
                "JOURNEY_GAP" => self.journey_gap = value,
                "VACUUM_RETENTION" => self.vacuum_retention = value,
                "MAINTENANCE_INTERVAL" => self.maintenance_interval = value,
                "CUBES_ALL" if matches!(value.trim(), "off" | "none") => self.cubes.clear(),
                _ => {
                    if let Some(channel) = name.strip_prefix("HOURLY_COST_") {
                        let cost = number(&value)?;
                        self.hourly_cost.insert(channel.to_ascii_lowercase(), cost);
                    } else if let Some(channel) = name.strip_prefix("SLA_SECONDS_") {
                        let seconds = value.parse::<i32>().map_err(|e| ConfigError::Invalid {
                            key: key.clone(),
                            value: value.clone(),
                            reason: e.to_string(),
                        })?;
                        self.sla_seconds
                            .insert(channel.to_ascii_lowercase(), seconds);
                    } else if let Some(cube) = name.strip_prefix("CUBES_") {
                        let cube = cube.to_ascii_lowercase();
                        if matches!(value.trim(), "off" | "none" | "") {
                            self.cubes.remove(&cube);
                        } else {
                            let def =
                                CubeConfig::parse(&value).ok_or_else(|| ConfigError::Invalid {
                                    key: key.clone(),
                                    value: value.clone(),
                                    reason:
                                        "expected `dim, dim, …[; retention <duration>]` or `off`"
                                            .into(),
                                })?;
                            self.cubes.insert(cube, def);
                        }
                    } else if let Some(user) = name.strip_prefix("USERS_") {
                        // TRACECUBE_USERS_<NAME>=<role>:<verifier>
                        let invalid = |reason: &str| ConfigError::Invalid {
                            key: key.clone(),
                            value: "(redacted)".into(),
                            reason: reason.into(),
                        };
                        let (role, password) = value
                            .split_once(':')
                            .ok_or_else(|| invalid("expected <role>:<SCRAM-SHA-256 verifier>"))?;
                        let role = crate::server::policy::Role::parse(role)
                            .ok_or_else(|| invalid("the role must be reader, loader or admin"))?;
                        let name = user.to_ascii_lowercase();
                        self.users.retain(|u| u.name != name);
                        self.users.push(UserConfig {
                            name,
                            role,
                            password: password.to_string(),
                        });
                    } else if let Some(option) = name.strip_prefix("STORAGE_") {
                        self.storage.insert(option.to_ascii_lowercase(), value);
                    }
                }
            }
        }
        Ok(())
    }

    /// Check values that serde cannot: the time zone name, the listen addresses, the users.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tz()?;
        self.vacuum_retention_seconds()?;
        self.maintenance_interval_seconds()?;
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "listen".into(),
                value: self.listen.clone(),
                reason: e.to_string(),
            })?;
        self.http_addr()?;
        let mut names = std::collections::BTreeSet::new();
        for user in &self.users {
            let key = format!("users.{}", user.name);
            if user.name.is_empty() || !names.insert(user.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "users".into(),
                    value: user.name.clone(),
                    reason: "user names must be unique and not empty".into(),
                });
            }
            // the value is never shown: it may be a plaintext password
            crate::server::scram::Verifier::parse(&user.password).map_err(|reason| {
                ConfigError::Invalid {
                    key: format!("{key}.password"),
                    value: "(redacted)".into(),
                    reason: format!(
                        "{reason}; a plaintext password is refused: store the verifier that \
                         `tracecube passwd` prints"
                    ),
                }
            })?;
        }
        if let Some(tls) = &self.tls
            && (tls.cert.is_empty() || tls.key.is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "tls".into(),
                value: format!("cert = {:?}, key = {:?}", tls.cert, tls.key),
                reason: "both cert and key (PEM files) are needed".into(),
            });
        }
        if self.requires_tls() && self.tls.is_none() {
            return Err(ConfigError::Invalid {
                key: "tls_only".into(),
                value: "true".into(),
                reason: "TLS needs [tls] cert and key".into(),
            });
        }
        for (channel, cost) in &self.hourly_cost {
            if !(cost.is_finite() && *cost >= 0.0) {
                return Err(ConfigError::Invalid {
                    key: format!("hourly_cost.{channel}"),
                    value: cost.to_string(),
                    reason: "must be a non-negative number".into(),
                });
            }
        }
        for (channel, seconds) in &self.sla_seconds {
            if *seconds < 0 {
                return Err(ConfigError::Invalid {
                    key: format!("sla_seconds.{channel}"),
                    value: seconds.to_string(),
                    reason: "must be a non-negative number of seconds".into(),
                });
            }
        }
        self.journey_gap_seconds()?;
        for (name, cube) in &self.cubes {
            crate::cubes::CubeDef::new(name, cube)?;
        }
        Ok(())
    }

    /// Whether plain (non-TLS) connections are refused.
    pub fn requires_tls(&self) -> bool {
        self.tls_only || self.tls.as_ref().is_some_and(|t| t.tls_only)
    }

    /// The address of the metrics endpoint, if any.
    pub fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let text = self.http_listen.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                key: "http_listen".into(),
                value: self.http_listen.clone(),
                reason: e.to_string(),
            })
    }

    /// The journey gap in seconds, from `journey_gap`.
    pub fn journey_gap_seconds(&self) -> Result<i64, ConfigError> {
        parse_duration("journey_gap", &self.journey_gap)
    }

    /// `vacuum_retention` in seconds.
    pub fn vacuum_retention_seconds(&self) -> Result<i64, ConfigError> {
        parse_duration("vacuum_retention", &self.vacuum_retention)
    }

    /// `maintenance_interval` in seconds; `None` when off.
    pub fn maintenance_interval_seconds(&self) -> Result<Option<i64>, ConfigError> {
        match self
            .maintenance_interval
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "off" | "none" | "never" => Ok(None),
            _ => parse_duration("maintenance_interval", &self.maintenance_interval).map(Some),
        }
    }

    /// The configured time zone.
    pub fn tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        self.time_zone
            .parse::<chrono_tz::Tz>()
            .map_err(|e| ConfigError::Invalid {
                key: "time_zone".into(),
                value: self.time_zone.clone(),
                reason: e.to_string(),
            })
    }

    /// Hourly cost of `channel`.
    pub fn hourly_cost_of(&self, channel: &str) -> f64 {
        self.hourly_cost
            .get(channel)
            .copied()
            .unwrap_or(self.default_hourly_cost)
    }
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes"
    )
}

/// The items of a comma-separated list, trimmed, empty ones dropped.
fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Seconds of a duration written `<number> <unit>`, the unit one of seconds, minutes,
/// hours, days or weeks, singular or plural (`"7 days"`, `"36 hours"`).
pub fn parse_duration(key: &str, value: &str) -> Result<i64, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    };
    let text = value.trim().to_ascii_lowercase();
    let (number, unit) = text
        .split_once(char::is_whitespace)
        .ok_or_else(|| invalid("expected a number and a unit, e.g. \"7 days\""))?;
    let number: i64 = number
        .parse()
        .map_err(|_| invalid("the number must be a whole number"))?;
    let unit = match unit.trim().trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        "week" => 604_800,
        _ => {
            return Err(invalid(
                "the unit must be seconds, minutes, hours, days or weeks",
            ));
        }
    };
    if number <= 0 {
        return Err(invalid("the duration must be positive"));
    }
    Ok(number * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:5433");
        assert_eq!(c.hourly_cost_of("phone"), 45.0);
        assert_eq!(c.hourly_cost_of("bot"), 2.0);
        assert_eq!(c.hourly_cost_of("fax"), 35.0);
        assert_eq!(c.sla_seconds["phone"], 90);
        assert_eq!(c.journey_gap_seconds().unwrap(), 7 * 86_400);
        c.validate().unwrap();
    }

    #[test]
    fn env_overrides_file_values() {
        let mut c: Config =
            toml::from_str("time_zone = 'Europe/Paris'\n[hourly_cost]\nphone = 50.0").unwrap();
        c.apply_env([
            ("TRACECUBE_LISTEN".to_string(), "127.0.0.1:6000".to_string()),
            ("TRACECUBE_HOURLY_COST_CHAT".to_string(), "30".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ])
        .unwrap();
        assert_eq!(c.time_zone, "Europe/Paris");
        assert_eq!(c.listen, "127.0.0.1:6000");
        assert_eq!(c.hourly_cost_of("phone"), 50.0);
        assert_eq!(c.hourly_cost_of("chat"), 30.0);
    }

    #[test]
    fn cube_env_value_keeps_commas_inside_expressions() {
        let c = CubeConfig::parse(
            "path_prefix(declaration, 2), channel, date_trunc('month', day); retention 30 days",
        )
        .unwrap();
        assert_eq!(
            c.dimensions,
            [
                "path_prefix(declaration, 2)",
                "channel",
                "date_trunc('month', day)"
            ]
        );
        assert_eq!(c.retention.as_deref(), Some("30 days"));
    }

    #[test]
    fn bad_time_zone_is_a_clear_error() {
        let c = Config {
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("time_zone") && e.contains("Mars/Olympus"), "{e}");
    }
}
