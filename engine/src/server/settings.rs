//! `SET` and `SHOW` of what one connection may change: Tracecube's settings
//! (`tracecube.use_cubes`), DataFusion's (`datafusion.*`; the server's own
//! `datafusion.runtime.*` are refused earlier, by the policy) and the time zone; and `SHOW`
//! of the server's version. A change is made in the connection's own session config, so
//! the planner, the optimizer rules and functions such as `now()` see it, and no other
//! connection does.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{ParamValues, ToDFSchema};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    ContextModifier, Expr, Ident, ObjectName, Reset, Set, Statement, UnaryOperator,
};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::results::{
    DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::startup::ParameterStatus;

/// The time zone a session starts with, as the server reports it at connection.
pub const DEFAULT_TIME_ZONE: &str = "Etc/UTC";
/// Where the connection's time zone name is kept (the key `datafusion-postgres` reads).
const TIME_ZONE_KEY: &str = "timezone";

/// A setting `SET` or `SHOW` names.
#[derive(Debug, Clone, PartialEq)]
enum Named {
    TimeZone,
    /// A session option by its full dotted name, lower case: `tracecube.use_cubes`.
    Option(String),
    ServerVersion,
    ServerVersionNum,
}

impl Named {
    /// `parts` of a name as written (`"tracecube"."use_cubes"` names `tracecube.use_cubes`).
    fn of<'a>(parts: impl IntoIterator<Item = &'a str>) -> Option<Named> {
        let name = parts
            .into_iter()
            .map(|p| p.trim_matches('"').to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(".");
        match name.as_str() {
            "timezone" | "time.zone" => Some(Named::TimeZone),
            "server_version" => Some(Named::ServerVersion),
            "server_version_num" => Some(Named::ServerVersionNum),
            // (`SHOW transaction isolation level` is not one)
            n if n.starts_with("tracecube.") || n.starts_with("datafusion.") => {
                Some(Named::Option(name))
            }
            _ => None,
        }
    }

    fn of_idents(variable: &[Ident]) -> Option<Named> {
        Named::of(variable.iter().map(|i| i.value.as_str()))
    }

    /// The column name of its `SHOW`.
    fn column(&self) -> &str {
        match self {
            Named::TimeZone => "TimeZone",
            Named::Option(name) => name,
            Named::ServerVersion => "server_version",
            Named::ServerVersionNum => "server_version_num",
        }
    }
}

/// The parts of a setting's name as written (`"tracecube".use_cubes`: two parts).
fn name_parts(name: &ObjectName) -> impl Iterator<Item = &str> {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.as_str())
}

/// The hook answering these `SET`, `RESET` and `SHOW` statements of one connection.
#[derive(Debug)]
pub struct SettingsHook {
    /// The session's options when the connection opened: what `RESET` brings back.
    initial: ConfigOptions,
    /// The default `statement_timeout` (milliseconds; 0: none).
    statement_timeout_ms: u64,
}

impl SettingsHook {
    /// The hook of the connection whose session is `ctx`.
    pub fn new(ctx: &SessionContext, statement_timeout_ms: u64) -> Self {
        let initial = ctx.state_ref().read().config_options().as_ref().clone();
        SettingsHook {
            initial,
            statement_timeout_ms,
        }
    }

    async fn respond(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match statement {
            // `SET SESSION` is `SET` (`SET LOCAL` lasts until the end of a transaction:
            // outside one it changes nothing, as in PostgreSQL)
            Statement::Set(Set::SingleAssignment {
                scope: None | Some(ContextModifier::Session),
                hivevar: false,
                variable,
                values,
            }) => {
                let named = Named::of(name_parts(variable))?;
                let [value] = values.as_slice() else {
                    return Some(Err(invalid(named.column(), "a single value is expected")));
                };
                Some(self.set(&named, value, ctx, client).await)
            }
            Statement::Set(Set::SetTimeZone {
                local: false,
                value,
            }) => Some(self.set(&Named::TimeZone, value, ctx, client).await),
            Statement::Reset(reset) => Some(
                match &reset.reset {
                    Reset::ALL => self.reset_all(ctx, client).await,
                    Reset::ConfigurationParameter(name) => {
                        let parts: Vec<&str> = name_parts(name).collect();
                        self.reset(Named::of(parts.iter().copied()), &parts, ctx, client)
                            .await
                    }
                }
                .map(|()| Response::Execution(Tag::new("RESET"))),
            ),
            Statement::ShowVariable { variable } => {
                let named = Named::of_idents(variable)?;
                Some(show(&named, ctx, client).map(Response::Query))
            }
            _ => None,
        }
    }
}

/// The DataFusion option that holds the session's time zone.
const TIME_ZONE_OPTION: &str = "datafusion.execution.time_zone";

impl SettingsHook {
    /// `SET named = value` in this connection's session (`DEFAULT`: `RESET named`).
    async fn set(
        &self,
        named: &Named,
        value: &Expr,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        if matches!(value, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
        {
            let parts: Vec<&str> = match named {
                Named::Option(name) => name.split('.').collect(),
                _ => vec![named.column()],
            };
            self.reset(Some(named.clone()), &parts, ctx, client).await?;
            return Ok(Response::Execution(Tag::new("SET")));
        }
        match named {
            Named::TimeZone => {
                let zone = time_zone(value, true)?;
                set_time_zone(ctx, client, zone).await?;
            }
            Named::Option(name) if name == TIME_ZONE_OPTION => {
                // DataFusion's spelling of the time zone: offsets count east of UTC
                let zone = time_zone(value, false)?;
                set_time_zone(ctx, client, zone).await?;
            }
            Named::Option(name) => {
                if value_parameters(value) {
                    return Err(invalid(name, "a constant is expected"));
                }
                let text = value_text(value);
                if !self.initial.entries().iter().any(|e| e.key == *name) {
                    return Err(unrecognized(name));
                }
                change(ctx, |options| options.set(name, &text))
                    .map_err(|e| invalid(name, &format!("\"{text}\": {}", e.strip_backtrace())))?;
            }
            Named::ServerVersion | Named::ServerVersionNum => {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "55P02".into(),
                    format!("parameter \"{}\" cannot be changed", named.column()),
                ))));
            }
        }
        Ok(Response::Execution(Tag::new("SET")))
    }

    /// `RESET` of one setting: its value when the connection opened. `parts` is the name
    /// as written, for settings kept by `datafusion-postgres` (`search_path`…).
    async fn reset(
        &self,
        named: Option<Named>,
        parts: &[&str],
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<()> {
        match named {
            Some(Named::TimeZone) => set_time_zone(ctx, client, None).await,
            Some(Named::Option(name)) if name == TIME_ZONE_OPTION => {
                set_time_zone(ctx, client, None).await
            }
            Some(Named::Option(name)) => {
                if !self.initial.entries().iter().any(|e| e.key == name) {
                    return Err(unrecognized(&name));
                }
                let initial = self.initial.clone();
                change(ctx, |options| {
                    let mut fresh = initial;
                    // every other setting keeps its value
                    for entry in options.entries() {
                        if entry.key != name
                            && let Some(value) = entry.value
                        {
                            let _ = fresh.set(&entry.key, &value);
                        }
                    }
                    *options = fresh;
                    Ok(())
                })
                .map_err(|e| invalid(&name, &e.strip_backtrace()))
            }
            Some(Named::ServerVersion | Named::ServerVersionNum) => Ok(()),
            None => {
                let name = parts.join(".").to_ascii_lowercase();
                if name == "statement_timeout" {
                    self.reset_statement_timeout(client);
                } else {
                    client.metadata_mut().remove(&name);
                }
                Ok(())
            }
        }
    }

    /// `RESET ALL`: every setting as when the connection opened.
    async fn reset_all(
        &self,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<()> {
        let initial = self.initial.clone();
        change(ctx, |options| {
            *options = initial;
            Ok(())
        })
        .map_err(|e| invalid("ALL", &e.strip_backtrace()))?;
        set_time_zone(ctx, client, None).await?;
        self.reset_statement_timeout(client);
        for name in [
            "datestyle",
            "bytea_output",
            "intervalstyle",
            "application_name",
            "extra_float_digits",
            "search_path",
        ] {
            client.metadata_mut().remove(name);
        }
        Ok(())
    }

    fn reset_statement_timeout(&self, client: &mut dyn HookClient) {
        let key = super::queries::STATEMENT_TIMEOUT_KEY.to_string();
        if self.statement_timeout_ms > 0 {
            client
                .metadata_mut()
                .insert(key, self.statement_timeout_ms.to_string());
        } else {
            client.metadata_mut().remove(&key);
        }
    }

    /// `DISCARD ALL` (what connection poolers send between clients): `RESET ALL`, and the
    /// connection's own tables, views and schemas dropped. (Its prepared statements are
    /// the query handler's.)
    pub async fn discard_all(
        &self,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<()> {
        self.reset_all(ctx, client).await?;
        drop_own_objects(ctx);
        Ok(())
    }
}

/// Drop the tables, views and schemas the connection created (`DISCARD TEMP`).
pub fn drop_own_objects(ctx: &SessionContext) {
    let catalogs = ctx.state().catalog_list().clone();
    let any: &dyn std::any::Any = catalogs.as_ref();
    if let Some(own) = any.downcast_ref::<crate::catalog::isolation::ConnectionCatalogs>() {
        own.clear();
    }
}

/// Set the session's time zone (`None`: the server's, UTC), tell the client.
async fn set_time_zone(
    ctx: &SessionContext,
    client: &mut dyn HookClient,
    zone: Option<(String, String)>,
) -> PgWireResult<()> {
    let offset = zone
        .as_ref()
        .map_or_else(|| "UTC".to_string(), |(_, offset)| offset.clone());
    change(ctx, |options| {
        options.execution.time_zone = Some(offset);
        Ok(())
    })
    .map_err(|e| invalid("TimeZone", &e.to_string()))?;
    let shown = zone.map_or_else(|| DEFAULT_TIME_ZONE.to_string(), |(name, _)| name);
    client
        .metadata_mut()
        .insert(TIME_ZONE_KEY.to_string(), shown.clone());
    client
        .send_message(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
            "TimeZone".into(),
            shown,
        )))
        .await?;
    Ok(())
}

/// Whether a `SET` value holds a parameter (`$1`) or an expression: only constants are
/// settings.
fn value_parameters(value: &Expr) -> bool {
    match value {
        Expr::Value(v) => matches!(
            v.value,
            datafusion::sql::sqlparser::ast::Value::Placeholder(_)
        ),
        Expr::Identifier(_) => false,
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => value_parameters(expr),
        _ => true,
    }
}

/// The current value of `named` in this connection.
fn show(
    named: &Named,
    ctx: &SessionContext,
    client: &dyn HookClient,
) -> PgWireResult<QueryResponse> {
    let value = match named {
        Named::TimeZone => client
            .metadata()
            .get(TIME_ZONE_KEY)
            .cloned()
            .unwrap_or_else(|| DEFAULT_TIME_ZONE.to_string()),
        Named::Option(name) => {
            let state = ctx.state_ref();
            let state = state.read();
            let entry = state
                .config_options()
                .entries()
                .into_iter()
                .find(|e| e.key == *name)
                .ok_or_else(|| unrecognized(name))?;
            entry.value.unwrap_or_default()
        }
        Named::ServerVersion => tracecube_udfs::session::POSTGRES_VERSION.to_string(),
        Named::ServerVersionNum => {
            let version = tracecube_udfs::session::POSTGRES_VERSION;
            let (major, minor) = version.split_once('.').unwrap_or((version, "0"));
            let num =
                major.parse::<u32>().unwrap_or(0) * 10_000 + minor.parse::<u32>().unwrap_or(0);
            num.to_string()
        }
    };
    show_response(named.column(), &value)
}

/// Apply `edit` to the session's options, and give the functions that depend on them
/// (`now()`…) the new values, as DataFusion's own `SET` does. Nothing changes when `edit`
/// fails. The `to_timestamp` functions keep reading in UTC: given the session's zone,
/// DataFusion would read `to_timestamp(<integer>)`, an instant, as a local time.
fn change(
    ctx: &SessionContext,
    edit: impl FnOnce(&mut ConfigOptions) -> datafusion::common::Result<()>,
) -> datafusion::common::Result<()> {
    let state = ctx.state_ref();
    let mut state = state.write();
    let mut options = state.config_options().as_ref().clone();
    edit(&mut options)?;
    *state.config_mut().options_mut() = options;
    let options = state.config_options().clone();
    let updated: Vec<_> = state
        .scalar_functions()
        .values()
        .filter(|f| !f.name().starts_with("to_timestamp"))
        .filter_map(|f| f.inner().with_updated_config(&options))
        .collect();
    for function in updated {
        state.register_udf(Arc::new(function))?;
    }
    Ok(())
}

/// The text of a `SET` value: a string's contents, a name, a number or a boolean.
pub(super) fn value_text(value: &Expr) -> String {
    match value {
        Expr::Value(v) => v.clone().into_string().unwrap_or_else(|| v.to_string()),
        Expr::Identifier(i) => i.value.clone(),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => format!("-{}", value_text(expr)),
        other => other.to_string(),
    }
}

/// The zone of `SET TIME ZONE value` as (name shown, zone DataFusion reads), or `None`
/// for the server's default (`LOCAL`, `DEFAULT`). As in PostgreSQL: a number is hours east
/// of UTC (`SET TIME ZONE -5`, shown `<-05:00>+05:00`), a name is a zone of the IANA
/// database in any case (`Europe/Paris`, `utc`), and with `posix` an offset (`'+3'`,
/// `'UTC+3'`, `'<-05:30>+05:30'`) counts hours *west* of UTC; without it (DataFusion's
/// `datafusion.execution.time_zone`) an offset `'+05:30'` is east.
fn time_zone(value: &Expr, posix: bool) -> PgWireResult<Option<(String, String)>> {
    let bad = |text: &str| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "22023".into(),
            format!("invalid value for parameter \"TimeZone\": \"{text}\""),
        )))
    };
    let is_number = |e: &Expr| matches!(e, Expr::Value(v) if matches!(v.value, datafusion::sql::sqlparser::ast::Value::Number(..)));
    let number = match value {
        Expr::UnaryOp { expr, .. } => is_number(expr),
        other => is_number(other),
    };
    let text = value_text(value);
    if number {
        let hours: f64 = text.parse().map_err(|_| bad(&text))?;
        let east = offset_text(hours).ok_or_else(|| bad(&text))?;
        let west = offset_text(-hours).ok_or_else(|| bad(&text))?;
        return Ok(Some((format!("<{east}>{west}"), east)));
    }
    if matches!(value, Expr::Identifier(i) if i.quote_style.is_none())
        && ["local", "default"].contains(&text.to_ascii_lowercase().as_str())
    {
        return Ok(None);
    }
    if posix {
        if let Some(west) = posix_offset(&text) {
            let offset = offset_text(-west).ok_or_else(|| bad(&text))?;
            return Ok(Some((text, offset)));
        }
    } else if text.starts_with(['+', '-']) {
        return match Tz::from_str(&text) {
            Ok(_) => Ok(Some((text.clone(), text))),
            Err(_) => Err(bad(&text)),
        };
    }
    let zone = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|z| z.name().eq_ignore_ascii_case(&text))
        .ok_or_else(|| bad(&text))?;
    let name = zone.name().to_string();
    Tz::from_str(&name).map_err(|_| bad(&text))?;
    Ok(Some((name.clone(), name)))
}

/// `hours` east of UTC as `+HH:MM`, within PostgreSQL's ±15 h.
fn offset_text(hours: f64) -> Option<String> {
    if !hours.is_finite() || hours.abs() > 15.0 {
        return None;
    }
    let minutes = (hours * 60.0).round() as i64;
    let sign = if minutes < 0 { '-' } else { '+' };
    Some(format!(
        "{sign}{:02}:{:02}",
        minutes.abs() / 60,
        minutes.abs() % 60
    ))
}

/// Hours west of UTC of a POSIX zone without daylight rule: `[name]±H[H][:MM]`, the name
/// (if any) three or more letters.
fn posix_offset(text: &str) -> Option<f64> {
    // `<-05:30>+05:30`: a quoted name, then the offset
    let text = match text.strip_prefix('<') {
        Some(rest) => &rest[rest.find('>')? + 1..],
        None => text,
    };
    let digits_at = text.find(|c: char| c.is_ascii_digit() || c == '+' || c == '-')?;
    let (name, offset) = text.split_at(digits_at);
    if !(name.is_empty() || (name.len() >= 3 && name.chars().all(|c| c.is_ascii_alphabetic()))) {
        return None;
    }
    let (sign, rest) = match offset.as_bytes().first()? {
        b'+' => (1.0, &offset[1..]),
        b'-' => (-1.0, &offset[1..]),
        _ => (1.0, offset),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let valid = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !valid(h, 2) || !valid(m, 2) {
        return None;
    }
    let (h, m): (f64, f64) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60.0).then_some(sign * (h + m / 60.0))
}

fn unrecognized(name: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "42704".into(),
        format!("unrecognized configuration parameter \"{name}\""),
    )))
}

fn invalid(name: &str, detail: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "22023".into(),
        format!("invalid value for parameter \"{name}\": {detail}"),
    )))
}

/// One row, one text column `name`.
pub fn show_response(name: &str, value: &str) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(QueryResponse::new(
        fields,
        futures::stream::once(async move { Ok(row) }),
    ))
}

#[async_trait]
impl QueryHook for SettingsHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.respond(statement, ctx, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let columns = match statement {
            Statement::Set(Set::SingleAssignment {
                scope: None | Some(ContextModifier::Session),
                hivevar: false,
                variable,
                ..
            }) => {
                Named::of(name_parts(variable))?;
                vec![]
            }
            Statement::Set(Set::SetTimeZone { local: false, .. }) | Statement::Reset(_) => {
                vec![]
            }
            Statement::ShowVariable { variable } => {
                let named = Named::of_idents(variable)?;
                vec![Field::new(named.column(), DataType::Utf8, false)]
            }
            _ => return None,
        };
        Some(
            Schema::new(columns)
                .to_dfschema()
                .map(|schema| {
                    LogicalPlan::EmptyRelation(EmptyRelation {
                        produce_one_row: true,
                        schema: Arc::new(schema),
                    })
                })
                .map_err(|e| PgWireError::ApiError(Box::new(e))),
        )
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.respond(statement, ctx, client).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_postgresql_reads_them() {
        assert_eq!(Named::of(["TimeZone"]), Some(Named::TimeZone));
        assert_eq!(Named::of(["time", "zone"]), Some(Named::TimeZone));
        assert_eq!(
            Named::of(["\"Tracecube\"", "use_cubes"]),
            Some(Named::Option("tracecube.use_cubes".into()))
        );
        assert_eq!(Named::of(["search_path"]), None);
        assert_eq!(Named::of(["transaction", "isolation", "level"]), None);
    }

    #[test]
    fn posix_offsets_count_west_numbers_east() {
        assert_eq!(posix_offset("+3"), Some(3.0));
        assert_eq!(posix_offset("UTC+3"), Some(3.0));
        assert_eq!(posix_offset("-05:30"), Some(-5.5));
        assert_eq!(posix_offset("EST5"), Some(5.0));
        assert_eq!(posix_offset("Europe/Paris"), None);
        assert_eq!(posix_offset("Etc/GMT+3"), None);
        assert_eq!(posix_offset("+3:75"), None);
        assert_eq!(posix_offset("<-09:30>+09:30"), Some(9.5));
        assert_eq!(offset_text(-3.0).as_deref(), Some("-03:00"));
        assert_eq!(offset_text(5.75).as_deref(), Some("+05:45"));
        assert_eq!(offset_text(16.0), None);
    }
}
