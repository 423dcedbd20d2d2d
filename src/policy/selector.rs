//! Label selectors, checked once when a policy is compiled and then
//! evaluated against pod and namespace labels (Kubernetes' `LabelSelector`:
//! `matchLabels` and `matchExpressions` are ANDed; an empty selector selects
//! everything). Pure.

use super::model::{LabelSelector, Labels};
use std::collections::BTreeSet;

/// A checked selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<(String, String)>,
    expressions: Vec<Expression>,
}

/// One checked `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expression {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether it selects everything (no requirement at all), whatever the
    /// labels.
    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.expressions.is_empty()
    }

    /// Checks an API selector. `Err` says which expression is invalid, as
    /// the API server's validation would (In/NotIn need values,
    /// Exists/DoesNotExist take none, no other operators).
    pub fn from_api(selector: &LabelSelector) -> Result<Self, String> {
        let mut expressions = Vec::with_capacity(selector.match_expressions.len());
        for requirement in &selector.match_expressions {
            let key = requirement.key.clone();
            let values: BTreeSet<String> = requirement.values.iter().cloned().collect();
            let expression = match requirement.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions {key:?} {} has no values",
                        requirement.operator
                    ));
                }
                "In" => Expression::In(key, values),
                "NotIn" => Expression::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions {key:?} {} must have no values",
                        requirement.operator
                    ));
                }
                "Exists" => Expression::Exists(key),
                "DoesNotExist" => Expression::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions {key:?} has unknown operator {other:?}"
                    ));
                }
            };
            expressions.push(expression);
        }
        Ok(Self {
            labels: selector
                .match_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            expressions,
        })
    }

    /// Whether these labels are selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                // NotIn matches a missing key too (Kubernetes' labels.Selector).
                Expression::NotIn(k, values) => !labels.get(k).is_some_and(|v| values.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::model::Requirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: vec![Requirement {
                key: key.into(),
                operator: operator.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_selector_selects_everything() {
        let s = Selector::from_api(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("pod", "a")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = Selector::from_api(&LabelSelector {
            match_labels: labels(&[("pod", "a"), ("tier", "web")]),
            ..Default::default()
        })
        .unwrap();
        assert!(s.matches(&labels(&[("pod", "a"), ("tier", "web"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[("pod", "b"), ("tier", "web")])));
    }

    #[test]
    fn the_four_operators_follow_kubernetes() {
        let s = |op, values: &[&str]| Selector::from_api(&expression("pod", op, values)).unwrap();
        let (a, b, none) = (
            labels(&[("pod", "a")]),
            labels(&[("pod", "b")]),
            labels(&[]),
        );
        assert!(s("In", &["a", "c"]).matches(&a));
        assert!(!s("In", &["a", "c"]).matches(&b));
        assert!(!s("In", &["a"]).matches(&none));
        assert!(!s("NotIn", &["a"]).matches(&a));
        assert!(s("NotIn", &["a"]).matches(&b));
        assert!(s("NotIn", &["a"]).matches(&none), "a missing key is not in");
        assert!(s("Exists", &[]).matches(&a));
        assert!(!s("Exists", &[]).matches(&none));
        assert!(s("DoesNotExist", &[]).matches(&none));
        assert!(!s("DoesNotExist", &[]).matches(&b));
    }

    #[test]
    fn invalid_expressions_are_refused_with_the_key() {
        for (op, values) in [
            ("In", &[][..]),
            ("NotIn", &[][..]),
            ("Exists", &["a"][..]),
            ("Gt", &["1"][..]),
        ] {
            let error = Selector::from_api(&expression("pod", op, values)).unwrap_err();
            assert!(error.contains("\"pod\""), "{error}");
        }
    }
}
