//! What a client asks of the server it is connected to: `version()` in PostgreSQL's form
//! (drivers such as SQLAlchemy parse it), and the connected user (`current_user`,
//! `session_user`, `user`).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The PostgreSQL version whose protocol and catalog Tracecube speaks.
pub const POSTGRES_VERSION: &str = "16.6";

/// `version()`: `PostgreSQL 16.6 (Tracecube x.y.z, Apache DataFusion 55.x) on <arch>-<os>`.
pub fn version_text() -> String {
    format!(
        "PostgreSQL {POSTGRES_VERSION} (Tracecube {}, Apache DataFusion {}) on {}-{}, 64-bit",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// A function of no arguments that returns one text for the whole session.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionText {
    name: &'static str,
    value: String,
    signature: Signature,
}

impl ScalarUDFImpl for SessionText {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.value.clone(),
        ))))
    }
}

fn session_text(name: &'static str, value: String) -> ScalarUDF {
    ScalarUDF::new_from_impl(SessionText {
        name,
        value,
        signature: Signature::nullary(Volatility::Stable),
    })
}

/// `version()`.
pub fn version() -> ScalarUDF {
    session_text("version", version_text())
}

/// `current_user`, `session_user` and `user` of a session connected as `user`.
pub fn user_functions(user: &str) -> [ScalarUDF; 3] {
    ["current_user", "session_user", "user"].map(|name| session_text(name, user.to_string()))
}
