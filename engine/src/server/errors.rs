//! Errors sent to clients with the PostgreSQL SQLSTATE of their class, so that drivers
//! and BI tools can tell a syntax error from a missing table or a refused statement.

use std::error::Error;

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};

use super::policy::Forbidden;

/// The SQLSTATE of an error raised while planning or running a statement.
pub fn sqlstate(error: &(dyn Error + 'static)) -> &'static str {
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<Forbidden>() {
            return "42501";
        }
        current = e.source();
    }
    if error.is::<ParserError>() {
        return "42601";
    }
    let Some(e) = error.downcast_ref::<DataFusionError>() else {
        return "XX000";
    };
    match e.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            _ => "42P16",
        },
        DataFusionError::Plan(m) if m.contains("not found") && m.contains("table") => "42P01",
        DataFusionError::Plan(m) if m.contains("Invalid function") => "42883",
        DataFusionError::Plan(_) => "42601",
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero => "22012",
            ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
            ArrowError::ArithmeticOverflow(_) => "22003",
            _ => "XX000",
        },
        DataFusionError::Execution(m) if m.to_ascii_lowercase().contains("divide by zero") => {
            "22012"
        }
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::Configuration(_) => "22023",
        _ => "XX000",
    }
}

/// `error` as the client should see it: an `ERROR` with its SQLSTATE.
pub fn with_sqlstate(error: PgWireError) -> PgWireError {
    match error {
        PgWireError::ApiError(e) => {
            let code = sqlstate(e.as_ref());
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                code.into(),
                e.to_string(),
            )))
        }
        other => other,
    }
}

/// A refusal as the client sees it.
pub fn forbidden(refusal: Forbidden) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "42501".into(),
        refusal.to_string(),
    )))
}

/// An `ERROR` with SQLSTATE `code`.
pub fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// The SQLSTATE of a failed `COPY … FROM`: PostgreSQL's for a missing file (`58P01`), a
/// bad source (`22P04`, bad_copy_file_format), a concurrent commit (`40001`).
pub fn load_sqlstate(error: &crate::load::LoadError) -> &'static str {
    use crate::load::LoadError::*;
    match error {
        BadUrl { .. } | NoFiles { .. } => "58P01",
        UnknownFormat { .. } | Read { .. } | MissingColumns { .. } | BadRows { .. } => "22P04",
        Contended { .. } => "40001",
        Stopped => "57014",
        _ => "XX000",
    }
}
