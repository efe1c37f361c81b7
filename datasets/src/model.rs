//! The statistical model behind the generator: who contacts, why, on which channel, and how
//! it goes. Figures follow the field's typical shares and rates; every number here is a model parameter.

use rand::Rng;
use rand::distr::{Distribution, weighted::WeightedIndex};

use crate::taxonomy::Taxonomy;

/// Channels in a fixed order; indexes into the per-channel tables below.
pub const CHANNELS: [&str; 9] = [
    "phone", "email", "chat", "web", "app", "social", "mail", "store", "bot",
];
pub const PHONE: usize = 0;
pub const EMAIL: usize = 1;
pub const CHAT: usize = 2;

/// Share of *first* contacts of a journey per channel. Tuned so that the share of all
/// contacts lands on DOMAIN.md's (phone 40 %, email 18 %, chat 14 %, web 9 %, app 7 %,
/// social 5 %, mail 3 %, store 3 %, bot 1 %) once repeat contacts are added.
pub const FIRST_CHANNEL_WEIGHTS: [f64; 9] = [37.0, 18.7, 14.3, 10.3, 7.8, 5.3, 3.2, 3.1, 1.3];

/// Probability that a repeat contact stays on the previous contact's channel.
/// After a phone call 40 % move to another channel (Nice–BCG 2016).
pub const STAY_PROBABILITY: [f64; 9] = [0.60, 0.35, 0.30, 0.15, 0.20, 0.35, 0.40, 0.30, 0.05];

/// Where a customer goes when leaving a channel (weights over CHANNELS, own channel
/// excluded at draw time). Leaving phone, 16 % go to chat (6.4 % of all next contacts).
pub const SWITCH_WEIGHTS: [[f64; 9]; 9] = [
    // phone   email chat  web   app   social mail store bot
    [0.0, 42.0, 16.0, 14.0, 10.0, 8.0, 4.0, 5.0, 1.0], // from phone
    [70.0, 0.0, 12.0, 6.0, 4.0, 4.0, 2.0, 2.0, 0.0],   // from email (15 % of callers tried email)
    [60.0, 18.0, 0.0, 8.0, 6.0, 4.0, 1.0, 3.0, 0.0],   // from chat
    [55.0, 15.0, 20.0, 0.0, 4.0, 3.0, 1.0, 1.0, 1.0],  // from web
    [50.0, 12.0, 25.0, 8.0, 0.0, 3.0, 0.0, 2.0, 0.0],  // from app
    [45.0, 25.0, 15.0, 6.0, 5.0, 0.0, 2.0, 2.0, 0.0],  // from social
    [55.0, 30.0, 5.0, 5.0, 2.0, 1.0, 0.0, 2.0, 0.0],   // from mail
    [60.0, 15.0, 10.0, 6.0, 6.0, 2.0, 1.0, 0.0, 0.0],  // from store
    [55.0, 10.0, 25.0, 6.0, 4.0, 0.0, 0.0, 0.0, 0.0],  // from bot
];

/// Median wait before an answer (seconds) and lognormal σ, per channel; `None` for
/// self-service channels that have no queue. Phone: ~80 % answered within 90 s.
pub const WAIT: [Option<(f64, f64)>; 9] = [
    Some((40.0, 0.96)),     // phone
    Some((28_800.0, 1.1)),  // email: 8 h median, SLA 2 days
    Some((25.0, 0.9)),      // chat
    None,                   // web
    None,                   // app
    Some((5_400.0, 1.2)),   // social
    Some((432_000.0, 0.6)), // mail: 5 days
    Some((240.0, 0.8)),     // store
    None,                   // bot
];

/// Median handling time (seconds) and lognormal σ per channel. Phone median ~6 min,
/// chat mean ~13 min, email ~4 min.
pub const HANDLE: [(f64, f64); 9] = [
    (360.0, 0.6),  // phone
    (240.0, 0.7),  // email
    (620.0, 0.68), // chat: mean = median × e^(σ²/2) ≈ 780 s
    (150.0, 0.8),  // web
    (120.0, 0.8),  // app
    (300.0, 0.7),  // social
    (480.0, 0.6),  // mail
    (600.0, 0.5),  // store
    (90.0, 0.7),   // bot
];

/// Share of contacts abandoned before an answer, per channel (phone 5–8 %).
pub const ABANDON: [f64; 9] = [0.065, 0.0, 0.04, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0];

/// Contact categories in output order.
pub const CATEGORIES: [&str; 4] = ["avoidable", "help", "selfcare", "mandatory"];
/// Target share of each category over all contacts (DOMAIN.md).
pub const CATEGORY_TARGET: [f64; 4] = [0.35, 0.30, 0.25, 0.10];

/// Zipf exponent over ranked declaration leaves: the top one ("Where is my order") gets
/// ~17 % of journeys.
pub const ZIPF_EXPONENT: f64 = 0.87;

/// Declarations by popularity, most frequent first; leaves not listed follow in taxonomy order.
const DECLARATION_RANKING: [&str; 15] = [
    "Order/Status/Where is my order",
    "Delivery/Tracking/Parcel not received",
    "Returns & refunds/Refund/Refund status",
    "Delivery/Tracking/Delivery late",
    "Returns & refunds/Return/How to return",
    "Account/Access/Password reset",
    "Order/Modification/Cancel order",
    "Delivery/Incident/Marked delivered not received",
    "Order/Modification/Change delivery address",
    "Payment & billing/Charges/Double charge",
    "Delivery/Incident/Parcel damaged",
    "Product/After-sale/Defective item",
    "Returns & refunds/Refund/Refund not received",
    "Order/Placement/Payment declined",
    "Delivery/Tracking/Tracking not updating",
];

/// A weighted list of taxonomy nodes (a leaf or an inner node, whose leaves share the weight).
type NodeWeights = &'static [(&'static str, f64)];

/// What lies behind a declaration node: likely qualifications, actions and categories
/// (weights for avoidable, help, selfcare, mandatory before calibration).
struct Rule {
    declaration: &'static str,
    qualification: NodeWeights,
    action: NodeWeights,
    category: [f64; 4],
}

const RULES: &[Rule] = &[
    Rule {
        declaration: "Order/Placement",
        qualification: &[
            ("Payment risk/Payment failure", 3.0),
            ("Digital platform/Bug/Checkout bug", 2.0),
            ("Digital platform/Bug/Promo engine bug", 1.0),
            ("Digital platform/Communication/Notification not sent", 1.0),
            ("Customer side/Misunderstanding", 1.0),
            ("Payment risk/Fraud review/Order held fraud review", 1.0),
        ],
        action: &[
            ("Order action/Unblock", 3.0),
            ("Order action/Sell", 2.0),
            ("Inform/Explain/Explain policy", 1.0),
            ("Escalation/Internal/Notify it bug", 1.0),
            ("Account action/Verification", 0.5),
        ],
        category: [0.5, 0.3, 0.15, 0.1],
    },
    Rule {
        declaration: "Order/Modification",
        qualification: &[
            ("Customer side/Customer error", 4.0),
            ("Service handling/No defect/Information need", 2.0),
            ("Fulfilment/Dispatch/Dispatch sla missed", 0.5),
        ],
        action: &[
            ("Order action/Modify", 5.0),
            ("Inform/Redirect", 2.0),
            ("No action/Declined", 1.0),
        ],
        category: [0.1, 0.5, 0.35, 0.05],
    },
    Rule {
        declaration: "Order/Status",
        qualification: &[
            ("Carrier/Transit/Carrier delay", 3.0),
            ("Fulfilment/Dispatch/Dispatch sla missed", 2.0),
            ("Fulfilment/Stock/Backorder delay", 1.0),
            ("Carrier/Tracking/Tracking feed gap", 2.0),
            ("Digital platform/Communication/Notification not sent", 1.0),
            (
                "Payment risk/Payment failure/Card failure shipment suspended",
                1.0,
            ),
            ("Service handling/No defect/Information need", 2.0),
        ],
        action: &[
            ("Inform/Explain/Give tracking status", 5.0),
            ("Inform/Explain/Give delivery eta", 3.0),
            ("Inform/Redirect/Send self service link", 2.0),
            ("Logistics action/Carrier/Open carrier investigation", 1.0),
            ("Order action/Unblock/Send payment retry link", 0.5),
        ],
        category: [0.45, 0.05, 0.5, 0.0],
    },
    Rule {
        declaration: "Delivery/Tracking",
        qualification: &[
            ("Carrier/Transit", 5.0),
            ("Carrier/Tracking", 2.0),
            ("Carrier/Last mile", 2.0),
            (
                "Payment risk/Payment failure/Card failure shipment suspended",
                1.0,
            ),
            ("Fulfilment/Dispatch", 1.0),
            ("Customer side/Customer error/Wrong address entered", 0.5),
        ],
        action: &[
            ("Inform/Explain/Give tracking status", 3.0),
            ("Logistics action/Carrier/Open carrier investigation", 3.0),
            ("Logistics action/Reship/Reship full order", 1.5),
            ("Financial action/Refund/Full refund", 0.5),
            ("Logistics action/Carrier/Reschedule delivery", 1.0),
        ],
        category: [0.7, 0.1, 0.2, 0.0],
    },
    Rule {
        declaration: "Delivery/Incident",
        qualification: &[
            ("Carrier/Last mile", 3.0),
            ("Fulfilment/Pick & pack", 3.0),
            ("Product supplier/Quality/Damaged before dispatch", 1.0),
            ("Carrier/Transit/Lost in transit", 1.0),
        ],
        action: &[
            ("Logistics action/Reship", 4.0),
            ("Financial action/Refund", 2.0),
            ("Logistics action/Carrier/Open carrier investigation", 2.0),
            ("Financial action/Compensation/Goodwill voucher", 1.0),
        ],
        category: [0.85, 0.1, 0.05, 0.0],
    },
    Rule {
        declaration: "Delivery/Options",
        qualification: &[
            ("Service handling/No defect/Information need", 3.0),
            ("Carrier/Last mile/Failed attempt no notice", 1.0),
            ("Policy process/Commercial", 1.0),
            ("Customer side/Misunderstanding", 1.0),
        ],
        action: &[
            ("Logistics action/Carrier/Reschedule delivery", 2.0),
            ("Logistics action/Carrier/Redirect to pickup point", 2.0),
            ("Inform/Explain", 2.0),
            ("Inform/Redirect", 1.0),
        ],
        category: [0.2, 0.4, 0.4, 0.0],
    },
    Rule {
        declaration: "Returns & refunds/Return",
        qualification: &[
            ("Customer side/Customer error/Wrong size ordered", 2.0),
            ("Customer side/Customer error/Changed mind", 2.0),
            ("Customer side/Misunderstanding/Policy misread", 1.0),
            (
                "Customer side/Misunderstanding/Info available not found",
                2.0,
            ),
            ("Policy process/Returns/Return window exceeded", 1.0),
            ("Carrier/Last mile/Failed attempt no notice", 0.5),
        ],
        action: &[
            ("Logistics action/Return", 5.0),
            ("Inform/Redirect", 2.0),
            ("Inform/Explain/Explain policy", 1.0),
            ("No action/Declined", 0.5),
        ],
        category: [0.15, 0.25, 0.6, 0.0],
    },
    Rule {
        declaration: "Returns & refunds/Refund",
        qualification: &[
            ("Policy process/Returns/Return received not processed", 3.0),
            ("Payment risk/Billing error/Refund not triggered", 3.0),
            ("Payment risk/Billing error/Wrong amount charged", 1.0),
            ("Service handling/No defect/Information need", 2.0),
            (
                "Service handling/Prior contact failure/Promise not kept",
                1.0,
            ),
        ],
        action: &[
            ("Inform/Explain", 2.0),
            ("Financial action/Refund", 4.0),
            ("Escalation/Internal/Escalate tier2", 1.0),
            ("Financial action/Compensation", 0.5),
        ],
        category: [0.55, 0.1, 0.35, 0.0],
    },
    Rule {
        declaration: "Returns & refunds/Exchange",
        qualification: &[
            ("Customer side/Customer error/Wrong size ordered", 3.0),
            ("Product supplier/Content/Size chart inaccurate", 2.0),
            ("Fulfilment/Stock/Oversold out of stock", 1.0),
        ],
        action: &[
            ("Logistics action/Return/Issue return label", 2.0),
            ("Order action/Modify/Change item", 3.0),
            ("Financial action/Refund/Refund to store credit", 1.0),
        ],
        category: [0.25, 0.45, 0.3, 0.0],
    },
    Rule {
        declaration: "Product/Pre-sale",
        qualification: &[
            ("Service handling/No defect/Sales opportunity", 4.0),
            ("Service handling/No defect/Information need", 3.0),
            ("Product supplier/Content/Description inaccurate", 1.0),
            ("Fulfilment/Stock/Oversold out of stock", 1.0),
        ],
        action: &[
            ("Inform/Explain/Product advice", 5.0),
            ("Order action/Sell/Place order on behalf", 2.0),
            ("Inform/Redirect/Send faq article", 1.0),
        ],
        category: [0.05, 0.75, 0.2, 0.0],
    },
    Rule {
        declaration: "Product/After-sale",
        qualification: &[
            ("Product supplier/Quality/Manufacturing defect", 4.0),
            ("Product supplier/Quality/Damaged before dispatch", 1.0),
            ("Customer side/Misunderstanding/Expectation mismatch", 2.0),
            ("Service handling/No defect/Information need", 1.0),
        ],
        action: &[
            ("Logistics action/Return/Issue return label", 2.0),
            ("Logistics action/Reship/Reship missing item", 1.0),
            ("Financial action/Refund", 2.0),
            ("Escalation/Internal/Notify product team", 1.0),
            ("Inform/Explain/Product advice", 2.0),
        ],
        category: [0.45, 0.45, 0.1, 0.0],
    },
    Rule {
        declaration: "Payment & billing/Charges",
        qualification: &[
            ("Payment risk/Billing error", 5.0),
            ("Payment risk/Fraud review/Account takeover suspected", 1.0),
            ("Customer side/Misunderstanding/Policy misread", 1.0),
        ],
        action: &[
            ("Financial action/Billing/Cancel duplicate charge", 3.0),
            ("Financial action/Refund", 2.0),
            ("Inform/Explain/Explain policy", 1.0),
            ("Account action/Verification", 1.0),
        ],
        category: [0.75, 0.15, 0.05, 0.05],
    },
    Rule {
        declaration: "Payment & billing/Invoice",
        qualification: &[
            ("Service handling/No defect/Information need", 3.0),
            ("Digital platform/Communication/Notification not sent", 1.0),
            ("Policy process/Compliance/KYC identity check required", 0.5),
        ],
        action: &[
            ("Financial action/Billing/Issue invoice", 5.0),
            ("Inform/Redirect", 2.0),
        ],
        category: [0.1, 0.1, 0.6, 0.2],
    },
    Rule {
        declaration: "Payment & billing/Means",
        qualification: &[
            ("Service handling/No defect/Information need", 3.0),
            ("Service handling/No defect/Sales opportunity", 1.0),
            (
                "Customer side/Misunderstanding/Info available not found",
                2.0,
            ),
        ],
        action: &[
            ("Inform/Explain/Explain policy", 3.0),
            ("Inform/Redirect", 2.0),
            ("Order action/Sell", 1.0),
        ],
        category: [0.05, 0.35, 0.6, 0.0],
    },
    Rule {
        declaration: "Account/Access",
        qualification: &[
            ("Digital platform/Bug/Account system bug", 2.0),
            (
                "Customer side/Misunderstanding/Info available not found",
                2.0,
            ),
            ("Payment risk/Fraud review/Account takeover suspected", 1.0),
            ("Policy process/Compliance/KYC identity check required", 1.0),
        ],
        action: &[
            ("Account action/Access", 5.0),
            ("Account action/Verification", 1.0),
            ("Inform/Redirect/Send self service link", 2.0),
        ],
        category: [0.3, 0.05, 0.5, 0.15],
    },
    Rule {
        declaration: "Account/Profile",
        qualification: &[
            ("Policy process/Compliance/GDPR request", 2.0),
            ("Service handling/No defect/Information need", 2.0),
            ("Policy process/Compliance/KYC identity check required", 2.0),
        ],
        action: &[
            ("Account action/Data", 5.0),
            ("Account action/Verification", 2.0),
        ],
        category: [0.05, 0.1, 0.35, 0.5],
    },
    Rule {
        declaration: "Account/Loyalty",
        qualification: &[
            ("Digital platform/Bug/Promo engine bug", 1.0),
            ("Service handling/No defect/Information need", 2.0),
            ("Policy process/Commercial", 1.0),
        ],
        action: &[
            ("Financial action/Compensation/Loyalty points credit", 3.0),
            ("Inform/Explain/Explain policy", 2.0),
        ],
        category: [0.35, 0.3, 0.35, 0.0],
    },
    Rule {
        declaration: "Pricing & promotions/Price",
        qualification: &[
            ("Policy process/Commercial/Price adjustment policy", 4.0),
            ("Service handling/No defect/Sales opportunity", 1.0),
        ],
        action: &[
            ("Financial action/Refund/Partial refund", 2.0),
            ("No action/Declined/Request declined per policy", 2.0),
            ("Inform/Explain/Explain policy", 2.0),
            ("Financial action/Compensation/Goodwill voucher", 1.0),
        ],
        category: [0.2, 0.6, 0.2, 0.0],
    },
    Rule {
        declaration: "Pricing & promotions/Promotion",
        qualification: &[
            ("Digital platform/Bug/Promo engine bug", 2.0),
            ("Policy process/Commercial/Restrictive promo terms", 3.0),
            ("Customer side/Misunderstanding/Policy misread", 2.0),
        ],
        action: &[
            ("Order action/Sell/Apply promo code", 3.0),
            ("Inform/Explain/Explain policy", 2.0),
            ("Financial action/Compensation/Goodwill voucher", 1.0),
            ("No action/Declined", 1.0),
        ],
        category: [0.4, 0.3, 0.3, 0.0],
    },
    Rule {
        declaration: "Feedback/Complaint",
        qualification: &[
            ("Service handling/Prior contact failure", 4.0),
            ("Carrier/Last mile", 2.0),
            ("Carrier/Transit/Carrier delay", 1.0),
        ],
        action: &[
            ("Escalation", 4.0),
            ("Financial action/Compensation", 2.0),
            ("Inform/Explain/Explain policy", 1.0),
        ],
        category: [0.7, 0.3, 0.0, 0.0],
    },
    Rule {
        declaration: "Feedback/Other",
        qualification: &[
            ("Service handling/No defect/Information need", 3.0),
            ("Service handling/No defect/Sales opportunity", 1.0),
        ],
        action: &[
            ("No action/Closed/No action needed", 5.0),
            ("Escalation/Internal/Notify product team", 1.0),
        ],
        category: [0.0, 0.9, 0.1, 0.0],
    },
];

/// Probability that a qualification or action is drawn from the whole tree instead of the
/// declaration's rule: real data has noise.
pub const NOISE: f64 = 0.05;

/// Everything the generator draws from, resolved against a taxonomy once.
pub struct Model {
    pub taxonomy: Taxonomy,
    /// Declaration leaves, by index into `taxonomy.declaration`, with their journey weights.
    pub declaration_dist: WeightedIndex<f64>,
    /// Per declaration leaf: qualification leaf indexes and their distribution.
    pub qualification_dist: Vec<WeightedIndex<f64>>,
    /// Per declaration leaf: action leaf indexes and their distribution.
    pub action_dist: Vec<WeightedIndex<f64>>,
    /// Per declaration leaf: category distribution, calibrated to CATEGORY_TARGET.
    pub category_dist: Vec<WeightedIndex<f64>>,
    pub first_channel_dist: WeightedIndex<f64>,
    /// Per channel: where the next contact goes when the customer switches.
    pub switch_dist: Vec<WeightedIndex<f64>>,
}

impl Model {
    /// Resolve the rules against `taxonomy` and calibrate category weights.
    pub fn new(taxonomy: Taxonomy) -> Self {
        let declaration_weights = declaration_weights(&taxonomy.declaration);
        let rule_of = |leaf: &str| {
            RULES
                .iter()
                .find(|r| {
                    leaf.starts_with(r.declaration) && leaf[r.declaration.len()..].starts_with('/')
                })
                .unwrap_or_else(|| panic!("no generator rule covers declaration {leaf}"))
        };
        let node_dist = |leaves: &[String], weights: NodeWeights| {
            let mut w = vec![NOISE / leaves.len() as f64; leaves.len()];
            let total: f64 = weights.iter().map(|(_, x)| x).sum();
            for (node, x) in weights {
                let under = Taxonomy::leaves_under(leaves, node);
                assert!(!under.is_empty(), "rule names unknown node {node}");
                let share = (1.0 - NOISE) * x / total / under.len() as f64;
                for leaf in under {
                    let i = leaves
                        .iter()
                        .position(|l| l == leaf)
                        .expect("leaf of taxonomy");
                    w[i] += share;
                }
            }
            WeightedIndex::new(w).expect("positive weights")
        };
        let rules: Vec<&Rule> = taxonomy.declaration.iter().map(|d| rule_of(d)).collect();
        let qualification_dist = rules
            .iter()
            .map(|r| node_dist(&taxonomy.qualification, r.qualification))
            .collect();
        let action_dist = rules
            .iter()
            .map(|r| node_dist(&taxonomy.action, r.action))
            .collect();
        let raw_categories: Vec<[f64; 4]> = rules.iter().map(|r| r.category).collect();
        let calibrated = calibrate_categories(&declaration_weights, &raw_categories);
        let category_dist = calibrated
            .iter()
            .map(|w| WeightedIndex::new(w).expect("positive weights"))
            .collect();
        let switch_dist = SWITCH_WEIGHTS
            .iter()
            .map(|w| WeightedIndex::new(w).expect("positive weights"))
            .collect();
        Model {
            declaration_dist: WeightedIndex::new(&declaration_weights).expect("positive weights"),
            qualification_dist,
            action_dist,
            category_dist,
            first_channel_dist: WeightedIndex::new(FIRST_CHANNEL_WEIGHTS)
                .expect("positive weights"),
            switch_dist,
            taxonomy,
        }
    }

    /// Channel of the contact after one on `prev`.
    pub fn next_channel<R: Rng>(&self, prev: usize, rng: &mut R) -> usize {
        if rng.random::<f64>() < STAY_PROBABILITY[prev] {
            prev
        } else {
            self.switch_dist[prev].sample(rng)
        }
    }
}

/// Zipf weights over declaration leaves in popularity order.
fn declaration_weights(leaves: &[String]) -> Vec<f64> {
    let mut ranked: Vec<&str> = DECLARATION_RANKING.to_vec();
    ranked.extend(
        leaves
            .iter()
            .map(String::as_str)
            .filter(|l| !DECLARATION_RANKING.contains(l)),
    );
    leaves
        .iter()
        .map(|leaf| {
            let rank = ranked.iter().position(|r| r == leaf).expect("ranked leaf") + 1;
            (rank as f64).powf(-ZIPF_EXPONENT)
        })
        .collect()
}

/// Scale each category's weight by one factor for all declarations (iterative proportional
/// fitting) so that the expected category shares over all journeys hit CATEGORY_TARGET
/// while each declaration keeps its own profile.
fn calibrate_categories(declaration_weights: &[f64], raw: &[[f64; 4]]) -> Vec<[f64; 4]> {
    let total: f64 = declaration_weights.iter().sum();
    let mut factor = [1.0; 4];
    let scaled = |factor: &[f64; 4]| -> Vec<[f64; 4]> {
        raw.iter()
            .map(|w| {
                let v: Vec<f64> = (0..4).map(|c| w[c] * factor[c]).collect();
                let s: f64 = v.iter().sum();
                [v[0] / s, v[1] / s, v[2] / s, v[3] / s]
            })
            .collect()
    };
    for _ in 0..200 {
        let current = scaled(&factor);
        for c in 0..4 {
            let share: f64 = current
                .iter()
                .zip(declaration_weights)
                .map(|(w, d)| w[c] * d / total)
                .sum();
            factor[c] *= CATEGORY_TARGET[c] / share;
        }
    }
    scaled(&factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declaration_has_a_rule_and_categories_calibrate() {
        let model = Model::new(Taxonomy::ecommerce());
        assert_eq!(model.qualification_dist.len(), 58);
        let weights = declaration_weights(&model.taxonomy.declaration);
        let raw: Vec<[f64; 4]> = model
            .taxonomy
            .declaration
            .iter()
            .map(|d| {
                RULES
                    .iter()
                    .find(|r| d.starts_with(r.declaration))
                    .unwrap()
                    .category
            })
            .collect();
        let cal = calibrate_categories(&weights, &raw);
        let total: f64 = weights.iter().sum();
        for c in 0..4 {
            let share: f64 = cal
                .iter()
                .zip(&weights)
                .map(|(w, d)| w[c] * d / total)
                .sum();
            assert!(
                (share - CATEGORY_TARGET[c]).abs() < 1e-6,
                "category {c}: {share}"
            );
        }
    }
}
