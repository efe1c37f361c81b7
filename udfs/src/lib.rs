//! Tracecube SQL functions (SPEC §3): pure functions over Arrow arrays, no I/O.
//!
//! - [`path`]: `path_level`, `path_prefix`, `path_segment`, `path_is_under`, `path_child`
//! - [`kpi`]: `csat`, `nps`, `service_level`, `aht`, `sla_seconds`
//! - [`impact`]: `impact_weight`, `impact`, weight inheritance
//! - [`drilldown`]: the `drilldown(axis, node [, from_day, to_day])` table function
//!
//! [`Functions`] builds them all once; the engine registers them in its session.

pub mod catalog;
pub mod drilldown;
pub mod impact;
pub mod kpi;
pub mod path;
pub mod session;

mod docs;
mod text;

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use impact::{Axis, ImpactWeights, WeightsHandle};
pub use kpi::SlaTable;

/// Every Tracecube function, built once with the warehouse's configuration.
#[derive(Debug, Clone)]
pub struct Functions {
    /// `path_level(p)`
    pub path_level: Arc<ScalarUDF>,
    /// `path_prefix(p, n)`
    pub path_prefix: Arc<ScalarUDF>,
    /// `path_segment(p, n)`
    pub path_segment: Arc<ScalarUDF>,
    /// `path_is_under(p, node)`
    pub path_is_under: Arc<ScalarUDF>,
    /// `path_child(p, node)`
    pub path_child: Arc<ScalarUDF>,
    /// `sla_seconds(channel)`
    pub sla_seconds: Arc<ScalarUDF>,
    /// `impact_weight(declaration, qualification, action, channel, category)`
    pub impact_weight: Arc<ScalarUDF>,
    /// `csat(score)`
    pub csat: Arc<AggregateUDF>,
    /// `nps(score)`
    pub nps: Arc<AggregateUDF>,
    /// `service_level(channel, wait_s, abandoned)`
    pub service_level: Arc<AggregateUDF>,
    /// `aht(handle_s)`
    pub aht: Arc<AggregateUDF>,
    /// `impact(declaration, qualification, action, channel, category, effort)`
    pub impact: Arc<AggregateUDF>,
}

impl Functions {
    /// The functions with the channels' SLAs and the impact weights of `weights`.
    pub fn new(slas: SlaTable, weights: Arc<WeightsHandle>) -> Self {
        Self {
            path_level: Arc::new(ScalarUDF::new_from_impl(path::PathLevel::default())),
            path_prefix: Arc::new(ScalarUDF::new_from_impl(path::PathPrefix::default())),
            path_segment: Arc::new(ScalarUDF::new_from_impl(path::PathSegment::default())),
            path_is_under: Arc::new(ScalarUDF::new_from_impl(path::PathIsUnder::default())),
            path_child: Arc::new(ScalarUDF::new_from_impl(path::PathChild::default())),
            sla_seconds: Arc::new(ScalarUDF::new_from_impl(kpi::SlaSeconds::new(slas.clone()))),
            impact_weight: Arc::new(ScalarUDF::new_from_impl(impact::ImpactWeight::new(
                Arc::clone(&weights),
            ))),
            csat: Arc::new(AggregateUDF::new_from_impl(kpi::TallyKpi::csat())),
            nps: Arc::new(AggregateUDF::new_from_impl(kpi::TallyKpi::nps())),
            service_level: Arc::new(AggregateUDF::new_from_impl(kpi::TallyKpi::service_level(
                slas,
            ))),
            aht: Arc::new(AggregateUDF::new_from_impl(kpi::Aht::default())),
            impact: Arc::new(AggregateUDF::new_from_impl(impact::Impact::new(weights))),
        }
    }

    /// The scalar functions.
    pub fn scalars(&self) -> [&Arc<ScalarUDF>; 7] {
        [
            &self.path_level,
            &self.path_prefix,
            &self.path_segment,
            &self.path_is_under,
            &self.path_child,
            &self.sla_seconds,
            &self.impact_weight,
        ]
    }

    /// The aggregate functions.
    pub fn aggregates(&self) -> [&Arc<AggregateUDF>; 5] {
        [
            &self.csat,
            &self.nps,
            &self.service_level,
            &self.aht,
            &self.impact,
        ]
    }

    /// Registers every function in `ctx`, `drilldown` over the given `traces` table.
    pub fn register(&self, ctx: &SessionContext, traces: Arc<dyn TableProvider>) {
        for f in self.scalars() {
            ctx.register_udf(f.as_ref().clone());
        }
        for f in self.aggregates() {
            ctx.register_udaf(f.as_ref().clone());
        }
        ctx.register_udtf(
            "drilldown",
            Arc::new(drilldown::Drilldown::new(traces, self.clone())),
        );
    }
}
