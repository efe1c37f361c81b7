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
    /// `TRACECUBE_SLA_SECONDS_<CHANNEL>`, `TRACECUBE_JOURNEY_GAP` and
    /// `TRACECUBE_STORAGE_<KEY>`.
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
                "DEMO" => {
                    self.demo = matches!(
                        value.to_ascii_lowercase().as_str(),
                        "1" | "true" | "on" | "yes"
                    )
                }
                "DEFAULT_HOURLY_COST" => self.default_hourly_cost = number(&value)?,
                "JOURNEY_GAP" => self.journey_gap = value,
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
                    } else if let Some(option) = name.strip_prefix("STORAGE_") {
                        self.storage.insert(option.to_ascii_lowercase(), value);
                    }
                }
            }
        }
        Ok(())
    }

    /// Check values that serde cannot: the time zone name and the listen address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tz()?;
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "listen".into(),
                value: self.listen.clone(),
                reason: e.to_string(),
            })?;
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
        Ok(())
    }

    /// The journey gap in seconds, from `journey_gap` (`<number> <unit>`, the unit one
    /// of seconds, minutes, hours, days, weeks, singular or plural).
    pub fn journey_gap_seconds(&self) -> Result<i64, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            key: "journey_gap".into(),
            value: self.journey_gap.clone(),
            reason: reason.into(),
        };
        let text = self.journey_gap.trim().to_ascii_lowercase();
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
            return Err(invalid("the gap must be positive"));
        }
        Ok(number * unit)
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
    fn bad_time_zone_is_a_clear_error() {
        let c = Config {
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("time_zone") && e.contains("Mars/Olympus"), "{e}");
    }
}
