//! The taxonomies shipped with Tracecube: hierarchical reason trees for each axis.

use serde::Deserialize;

/// The e-commerce retailer's taxonomy (declaration, qualification and action trees).
const ECOMMERCE_JSON: &str = include_str!("../taxonomies/ecommerce.json");

/// Leaf paths of the three axes of one company's taxonomy.
#[derive(Debug, Clone, Deserialize)]
pub struct Taxonomy {
    /// What the customer declares (leaf paths, `/`-separated).
    pub declaration: Vec<String>,
    /// How the company qualifies the situation.
    pub qualification: Vec<String>,
    /// What the company did.
    pub action: Vec<String>,
}

impl Taxonomy {
    /// The shipped e-commerce taxonomy.
    pub fn ecommerce() -> Self {
        serde_json::from_str(ECOMMERCE_JSON).expect("shipped taxonomy is valid JSON")
    }

    /// Leaves of `axis` that are equal to `node` or lie under it.
    pub fn leaves_under<'a>(leaves: &'a [String], node: &str) -> Vec<&'a str> {
        leaves
            .iter()
            .map(String::as_str)
            .filter(|l| *l == node || (l.starts_with(node) && l[node.len()..].starts_with('/')))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecommerce_taxonomy_has_three_levels_everywhere() {
        let t = Taxonomy::ecommerce();
        assert_eq!(t.declaration.len(), 58);
        assert_eq!(t.qualification.len(), 48);
        assert_eq!(t.action.len(), 49);
        for leaf in t
            .declaration
            .iter()
            .chain(&t.qualification)
            .chain(&t.action)
        {
            assert_eq!(leaf.split('/').count(), 3, "{leaf}");
        }
    }

    #[test]
    fn leaves_under_matches_whole_segments_only() {
        let leaves = vec![
            "A/B/C".to_string(),
            "A/BB/C".to_string(),
            "A/B/D".to_string(),
        ];
        assert_eq!(
            Taxonomy::leaves_under(&leaves, "A/B"),
            vec!["A/B/C", "A/B/D"]
        );
        assert_eq!(Taxonomy::leaves_under(&leaves, "A/B/C"), vec!["A/B/C"]);
    }
}
