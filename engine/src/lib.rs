//! Tracecube engine: configuration, the warehouse of Delta tables, loading, and the SQL
//! session and PostgreSQL server that serve it.

pub mod app;
pub mod catalog;
pub mod config;
pub mod cubes;
pub mod demo;
pub mod journeys;
pub mod load;
pub mod maintenance;
pub mod schema;
pub mod server;
pub mod storage;
pub mod system;
pub mod warehouse;
pub mod weights;

pub use config::Config;
pub use warehouse::Warehouse;
