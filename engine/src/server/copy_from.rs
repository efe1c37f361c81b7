//! `COPY traces FROM '<url>' [WITH] (FORMAT parquet|csv|json, ON_ERROR 'quarantine')`: a
//! load run by the server for a `loader` or `admin`, from a location of `load_locations`,
//! with the guarantees of `tracecube load` (atomic, idempotent, checked).
//!
//! The statement is recognised from its tokens before the SQL parser sees it (the parser
//! knows neither `ON_ERROR` nor a load), and answered `COPY <rows loaded>`.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::load::source::Format;
use crate::load::{LoadOptions, OnError};

/// A `COPY … FROM` statement.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFrom {
    /// The table named (`traces`, maybe qualified), as written.
    pub table: Vec<String>,
    /// The source: a path, a `file://` or object-store URL, a folder or a glob.
    pub source: String,
    pub format: Option<Format>,
    pub on_error: OnError,
}

impl CopyFrom {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            format: self.format,
            on_error: self.on_error,
            progress: false,
            stop: None,
            report: None,
        }
    }
}

/// `sql` read as `COPY <table> FROM …`: `None` when it is not one (a `COPY … TO` or any
/// other statement), an error (PostgreSQL's wording, SQLSTATE 42601 or 0A000) when it is
/// one this server does not run.
pub fn parse(sql: &str) -> Option<Result<CopyFrom, (&'static str, String)>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut tokens = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .peekable();
    if !matches!(tokens.next(), Some(Token::Word(w)) if w.keyword == Keyword::COPY) {
        return None;
    }
    // the table name: words separated by dots
    let mut table = Vec::new();
    loop {
        match tokens.next() {
            Some(Token::Word(w)) => {
                table.push(match w.quote_style {
                    Some(_) => w.value,
                    None => w.value.to_ascii_lowercase(),
                });
            }
            _ => return None,
        }
        match tokens.peek() {
            Some(Token::Period) => {
                tokens.next();
            }
            _ => break,
        }
    }
    let syntax = |message: String| Some(Err(("42601", message)));
    match tokens.next() {
        Some(Token::Word(w)) if w.keyword == Keyword::FROM => {}
        Some(Token::LParen) => {
            return Some(Err((
                "0A000",
                "COPY … FROM with a column list is not supported: the source's columns are matched by name".into(),
            )));
        }
        _ => return None,
    }
    let source = match tokens.next() {
        Some(Token::SingleQuotedString(s)) => s,
        Some(Token::Word(w))
            if matches!(
                w.keyword,
                Keyword::STDIN | Keyword::PROGRAM | Keyword::STDOUT
            ) =>
        {
            return Some(Err((
                "0A000",
                format!(
                    "COPY … FROM {} is not supported: name a file or URL the server can read (COPY traces FROM 's3://bucket/exports/*.parquet'), or use `tracecube load`",
                    w.value.to_ascii_uppercase()
                ),
            )));
        }
        other => {
            return syntax(format!(
                "expected a quoted file or URL after FROM, found {}",
                shown(other)
            ));
        }
    };
    let mut copy = CopyFrom {
        table,
        source,
        format: None,
        on_error: OnError::Fail,
    };
    if matches!(tokens.peek(), Some(Token::Word(w)) if w.keyword == Keyword::WITH) {
        tokens.next();
    }
    if matches!(tokens.peek(), Some(Token::LParen)) {
        tokens.next();
        loop {
            let name = match tokens.next() {
                Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
                other => return syntax(format!("expected a COPY option, found {}", shown(other))),
            };
            // an option's value: a word, a quoted string or a number, or none
            let value = match tokens.peek() {
                Some(Token::Word(w)) => Some(w.value.clone()),
                Some(Token::SingleQuotedString(s)) => Some(s.clone()),
                Some(Token::Number(n, _)) => Some(n.clone()),
                _ => None,
            };
            if value.is_some() {
                tokens.next();
            }
            match (name.as_str(), value) {
                ("format", Some(v)) => match Format::parse(&v) {
                    Some(f) => copy.format = Some(f),
                    None => {
                        return syntax(format!(
                            "COPY format \"{v}\" not recognized: use parquet, csv or json (newline-delimited)"
                        ));
                    }
                },
                ("on_error", Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "stop" | "fail" => copy.on_error = OnError::Fail,
                    "quarantine" => copy.on_error = OnError::Quarantine,
                    _ => {
                        return syntax(format!(
                            "COPY ON_ERROR \"{v}\" not recognized: use 'stop' (the default: a bad row fails the whole load) or 'quarantine' (good rows are loaded, bad rows kept in rejects; none is ever dropped)"
                        ));
                    }
                },
                // CSV sources name their columns in a header row
                ("header", None) => {}
                ("header", Some(v))
                    if matches!(
                        v.to_ascii_lowercase().as_str(),
                        "true" | "on" | "1" | "match"
                    ) => {}
                ("header", Some(_)) => {
                    return Some(Err((
                        "0A000",
                        "CSV sources need a header row (their columns are matched by name)".into(),
                    )));
                }
                (name, _) => {
                    return Some(Err((
                        "0A000",
                        format!("COPY option \"{name}\" is not supported: FORMAT and ON_ERROR are"),
                    )));
                }
            }
            match tokens.next() {
                Some(Token::Comma) => continue,
                Some(Token::RParen) => break,
                other => {
                    return syntax(format!(
                        "expected , or ) in the COPY options, found {}",
                        shown(other)
                    ));
                }
            }
        }
    }
    match tokens.next() {
        None | Some(Token::EOF) => Some(Ok(copy)),
        Some(Token::SemiColon) if matches!(tokens.next(), None | Some(Token::EOF)) => {
            Some(Ok(copy))
        }
        Some(Token::SemiColon) => Some(Err((
            "0A000",
            "COPY … FROM must be sent as a statement of its own".into(),
        ))),
        other => syntax(format!(
            "unexpected {} after the COPY statement",
            shown(other)
        )),
    }
}

fn shown(token: Option<Token>) -> String {
    match token {
        None | Some(Token::EOF) => "the end of the statement".into(),
        Some(Token::Whitespace(Whitespace::Newline)) => "a new line".into(),
        Some(t) => format!("\"{t}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> CopyFrom {
        parse(sql).expect("a COPY FROM").expect("valid")
    }

    #[test]
    fn copy_from_statements_are_read_with_their_options() {
        let c = ok("COPY traces FROM 's3://b/x/*.parquet'");
        assert_eq!(c.table, vec!["traces"]);
        assert_eq!(c.source, "s3://b/x/*.parquet");
        assert_eq!(c.format, None);
        assert_eq!(c.on_error, OnError::Fail);
        let c =
            ok("copy public.Traces from '/data/a.txt' with (format csv, on_error 'quarantine');");
        assert_eq!(c.table, vec!["public", "traces"]);
        assert_eq!(c.format, Some(Format::Csv));
        assert_eq!(c.on_error, OnError::Quarantine);
        let c = ok("COPY \"traces\" FROM 'x.json' (FORMAT 'json', HEADER, ON_ERROR stop) ;");
        assert_eq!(c.format, Some(Format::Ndjson));
        assert_eq!(c.on_error, OnError::Fail);
    }

    #[test]
    fn other_statements_are_not_copy_from() {
        assert!(parse("SELECT 1").is_none());
        assert!(parse("COPY (SELECT 1) TO '/tmp/x.csv'").is_none());
        assert!(parse("COPY traces TO '/tmp/x.parquet'").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn unsupported_copy_from_is_a_clear_error() {
        let err = |sql: &str| parse(sql).expect("a COPY FROM").expect_err("refused");
        assert_eq!(err("COPY traces FROM STDIN").0, "0A000");
        assert_eq!(err("COPY traces (a, b) FROM '/x'").0, "0A000");
        assert_eq!(err("COPY traces FROM $1").0, "42601");
        assert!(
            err("COPY traces FROM '/x' WITH (FORMAT xml)")
                .1
                .contains("xml")
        );
        assert!(
            err("COPY traces FROM '/x' WITH (ON_ERROR ignore)")
                .1
                .contains("quarantine")
        );
        assert!(
            err("COPY traces FROM '/x' WITH (DELIMITER ';')")
                .1
                .contains("delimiter")
        );
        assert!(err("COPY traces FROM '/x'; SELECT 1").1.contains("own"));
        assert_eq!(err("COPY traces FROM '/x' WITH (HEADER false)").0, "0A000");
    }
}
