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
use datafusion::sql::sqlparser::ast::{Expr, Ident, Set, Statement, UnaryOperator};
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
#[derive(Debug, PartialEq)]
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

/// The hook answering these `SET` and `SHOW` statements.
#[derive(Debug)]
pub struct SettingsHook;

impl SettingsHook {
    async fn respond(
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match statement {
            Statement::Set(Set::SingleAssignment {
                scope: None,
                hivevar: false,
                variable,
                values,
            }) => {
                let named = Named::of(
                    variable
                        .0
                        .iter()
                        .filter_map(|p| p.as_ident())
                        .map(|i| i.value.as_str()),
                )?;
                let [value] = values.as_slice() else {
                    return Some(Err(invalid(named.column(), "a single value is expected")));
                };
                Some(set(&named, value, ctx, client).await)
            }
            Statement::Set(Set::SetTimeZone {
                local: false,
                value,
            }) => Some(set(&Named::TimeZone, value, ctx, client).await),
            Statement::ShowVariable { variable } => {
                let named = Named::of_idents(variable)?;
                Some(show(&named, ctx, client).map(Response::Query))
            }
            _ => None,
        }
    }
}

/// `SET named = value` in this connection's session.
async fn set(
    named: &Named,
    value: &Expr,
    ctx: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    match named {
        Named::TimeZone => {
            let zone = time_zone(value)?;
            change(ctx, |options| {
                options.execution.time_zone = zone.as_ref().map(|(_, offset)| offset.clone());
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
        }
        Named::Option(name) => {
            let text = value_text(value);
            let known = {
                let state = ctx.state_ref();
                let state = state.read();
                state
                    .config_options()
                    .entries()
                    .iter()
                    .any(|e| e.key == *name)
            };
            if !known {
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
/// (`now()`, `to_timestamp`…) the new values, as DataFusion's own `SET` does. Nothing
/// changes when `edit` fails.
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
        .filter_map(|f| f.inner().with_updated_config(&options))
        .collect();
    for function in updated {
        state.register_udf(Arc::new(function))?;
    }
    Ok(())
}

/// The text of a `SET` value: a string's contents, a name, a number or a boolean.
fn value_text(value: &Expr) -> String {
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
/// of UTC (`SET TIME ZONE -5`), a name is a zone of the IANA database (`Europe/Paris`,
/// `UTC`), and a POSIX offset (`'+3'`, `'UTC+3'`, `'-05:30'`) counts hours *west* of UTC.
fn time_zone(value: &Expr) -> PgWireResult<Option<(String, String)>> {
    let bad = |text: &str| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "22023".into(),
            format!("invalid value for parameter \"TimeZone\": \"{text}\""),
        )))
    };
    let number = match value {
        Expr::Value(v) => matches!(v.value, datafusion::sql::sqlparser::ast::Value::Number(..)),
        Expr::UnaryOp { expr, .. } => {
            matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, datafusion::sql::sqlparser::ast::Value::Number(..)))
        }
        _ => false,
    };
    let text = value_text(value);
    if number {
        let hours: f64 = text.parse().map_err(|_| bad(&text))?;
        let offset = offset_text(hours).ok_or_else(|| bad(&text))?;
        return Ok(Some((offset.clone(), offset)));
    }
    if matches!(value, Expr::Identifier(_))
        && ["local", "default"].contains(&text.to_ascii_lowercase().as_str())
    {
        return Ok(None);
    }
    if let Some(west) = posix_offset(&text) {
        let offset = offset_text(-west).ok_or_else(|| bad(&text))?;
        return Ok(Some((text, offset)));
    }
    match Tz::from_str(&text) {
        Ok(_) if !text.starts_with(['+', '-']) => Ok(Some((text.clone(), text))),
        _ => Err(bad(&text)),
    }
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
        Self::respond(statement, ctx, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let columns = match statement {
            Statement::Set(Set::SingleAssignment {
                scope: None,
                hivevar: false,
                variable,
                ..
            }) => {
                Named::of(
                    variable
                        .0
                        .iter()
                        .filter_map(|p| p.as_ident())
                        .map(|i| i.value.as_str()),
                )?;
                vec![]
            }
            Statement::Set(Set::SetTimeZone { local: false, .. }) => vec![],
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
        Self::respond(statement, ctx, client).await
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
        assert_eq!(offset_text(-3.0).as_deref(), Some("-03:00"));
        assert_eq!(offset_text(5.75).as_deref(), Some("+05:45"));
        assert_eq!(offset_text(16.0), None);
    }
}
