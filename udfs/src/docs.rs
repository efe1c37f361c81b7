//! Builds the `Documentation` each function reports (shown by
//! `information_schema.routines` and `SHOW FUNCTIONS`).

use datafusion::logical_expr::{DocSection, Documentation};

/// Documentation with a section label, description, SQL signature, example and
/// arguments.
pub(crate) fn function_doc(
    section: &'static str,
    description: &str,
    syntax: &str,
    example: &str,
    arguments: &[(&str, &str)],
) -> Documentation {
    let section = DocSection {
        include: true,
        label: section,
        description: None,
    };
    let builder = Documentation::builder(section, description, syntax)
        .with_sql_example(format!("```sql\n{example}\n```"));
    arguments
        .iter()
        .fold(builder, |b, (name, text)| b.with_argument(*name, *text))
        .build()
}
