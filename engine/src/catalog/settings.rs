//! Tracecube's own session settings (prefix `tracecube.`), kept with DataFusion's in each
//! connection's session config: `SET tracecube.use_cubes = off` changes one connection,
//! `SHOW tracecube.use_cubes` and `information_schema.df_settings` show them, and the
//! optimizer rules read them from the options they are given.

use std::any::Any;
use std::fmt;
use std::str::FromStr;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::{DataFusionError, Result};

/// An on/off setting, written as PostgreSQL writes booleans: `on`/`off`, `true`/`false`,
/// `yes`/`no`, `1`/`0` (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "on" } else { "off" })
    }
}

impl FromStr for Switch {
    type Err = DataFusionError;

    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" | "t" | "y" => Ok(Switch(true)),
            "off" | "false" | "no" | "0" | "f" | "n" => Ok(Switch(false)),
            _ => Err(DataFusionError::Configuration(format!(
                "\"{value}\" is not on or off"
            ))),
        }
    }
}

/// Tracecube's settings of one session.
#[derive(Debug, Clone)]
pub struct TracecubeOptions {
    /// Whether aggregations over `traces` may be answered from cubes.
    pub use_cubes: Switch,
}

impl Default for TracecubeOptions {
    fn default() -> Self {
        TracecubeOptions {
            use_cubes: Switch(true),
        }
    }
}

impl ConfigExtension for TracecubeOptions {
    const PREFIX: &'static str = "tracecube";
}

impl ExtensionOptions for TracecubeOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    /// `key` without the prefix.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "use_cubes" => self.use_cubes = value.parse()?,
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unrecognized configuration parameter \"{}.{key}\"",
                    Self::PREFIX
                )));
            }
        }
        Ok(())
    }

    /// Each setting by its full name (DataFusion's own extension macro leaves the prefix
    /// out, so `df_settings` would show `use_cubes`).
    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.use_cubes", Self::PREFIX),
            value: Some(self.use_cubes.to_string()),
            description: "Whether aggregations over traces may be answered from cubes (on or off)",
        }]
    }
}

impl TracecubeOptions {
    /// The settings in `options` (the defaults when the session has none).
    pub fn of(options: &ConfigOptions) -> TracecubeOptions {
        options
            .extensions
            .get::<TracecubeOptions>()
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ConfigOptions {
        let mut options = ConfigOptions::new();
        options.extensions.insert(TracecubeOptions::default());
        options
    }

    #[test]
    fn use_cubes_is_on_by_default_and_set_per_options() {
        let mut options = options();
        assert_eq!(TracecubeOptions::of(&options).use_cubes, Switch(true));
        options.set("tracecube.use_cubes", "OFF").unwrap();
        assert_eq!(TracecubeOptions::of(&options).use_cubes, Switch(false));
        options.set("tracecube.use_cubes", "true").unwrap();
        assert_eq!(TracecubeOptions::of(&options).use_cubes, Switch(true));
        let entry = options
            .entries()
            .into_iter()
            .find(|e| e.key == "tracecube.use_cubes")
            .unwrap();
        assert_eq!(entry.value.as_deref(), Some("on"));
    }

    #[test]
    fn bad_values_and_names_are_errors() {
        let mut options = options();
        let e = options.set("tracecube.use_cubes", "sometimes").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        assert!(options.set("tracecube.no_such", "on").is_err());
        assert_eq!(TracecubeOptions::of(&options).use_cubes, Switch(true));
    }
}
