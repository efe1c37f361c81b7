//! Cross-channel journeys (SPEC §1.4): contacts of one customer about one need chained
//! while each comes at most the journey gap after the previous one.
//!
//! - [`reference`]: the definition as window functions over `traces`;
//! - [`chain`]: the same chaining in memory, for a set of whole journeys;
//! - [`maintain`]: the stored journeys every load keeps up to date;
//! - [`views`]: `journeys`, `journey_summary` and `channel_transitions`, read from the
//!   stored journeys when they are up to date, from `traces` otherwise.

pub mod chain;
pub mod maintain;
pub mod reference;
pub mod views;

pub use views::register;
