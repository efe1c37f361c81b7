//! End-to-end tests, in one test binary (one link instead of one per file): each module
//! drives Tracecube as a user would, through the CLI, the loader or the PostgreSQL wire
//! protocol. Run one area with `cargo test --workspace --test e2e load::`.

mod common;

mod cli;
mod cubes;
mod functions;
mod journeys;
mod load;
mod s3;
mod server;
mod sql;
