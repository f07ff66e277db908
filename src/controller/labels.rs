//! Labels (and annotations) as the caches keep them: one sorted boxed slice instead of a
//! `BTreeMap`, whose first node alone costs ~540 bytes even for one entry. At 20,000 pods with
//! three labels each that node was a third of what a cached pod cost (issue 11).

use std::collections::BTreeMap;
use std::fmt;

use kube::core::{Expression, Selector};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// `key → value`, sorted by key, keys unique.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn from_pairs(mut pairs: Vec<(Box<str>, Box<str>)>) -> Labels {
        // A repeated key keeps its last value, as a JSON object decoded into a map would.
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        Labels(pairs.into_boxed_slice())
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Labels::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
                .collect(),
        )
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(m: &BTreeMap<String, String>) -> Self {
        m.iter().collect()
    }
}

/// A JSON object of strings, or `null` (no labels).
impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Labels, D::Error> {
                d.deserialize_map(Pairs)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<Box<str>, Box<str>>()? {
                    pairs.push((k, v));
                }
                Ok(Labels::from_pairs(pairs))
            }
        }
        d.deserialize_option(Pairs)
    }
}

/// A label selector's requirements, taken out of a [`Selector`] once so that many label sets
/// can be matched against them (a `Selector` only matches a `BTreeMap`).
#[derive(Clone, Debug)]
pub struct LabelQuery(Vec<Expression>);

impl From<Selector> for LabelQuery {
    fn from(s: Selector) -> Self {
        LabelQuery(s.into_iter().collect())
    }
}

impl From<&Selector> for LabelQuery {
    fn from(s: &Selector) -> Self {
        LabelQuery::from(s.clone())
    }
}

impl LabelQuery {
    /// The requirements, in the selector's order.
    pub fn expressions(&self) -> &[Expression] {
        &self.0
    }

    /// Whether `labels` satisfy every requirement (the semantics of `Selector::matches`).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Expression::Exists(k) => labels.get(k).is_some(),
            Expression::DoesNotExist(k) => labels.get(k).is_none(),
            Expression::Equal(k, value) => labels.get(k) == Some(value.as_str()),
            Expression::NotEqual(k, value) => labels.get(k) != Some(value.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_map_or_null_and_looks_up_by_key() {
        let l: Labels =
            serde_json::from_value(serde_json::json!({"b": "2", "a": "1"})).expect("labels");
        assert_eq!(
            (l.get("a"), l.get("b"), l.get("c")),
            (Some("1"), Some("2"), None)
        );
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
        let none: Labels = serde_json::from_value(serde_json::Value::Null).expect("null");
        assert!(none.is_empty());
        assert!(serde_json::from_value::<Labels>(serde_json::json!({"a": 1})).is_err());
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let l: Labels = serde_json::from_str(r#"{"a": "1", "a": "2"}"#).expect("labels");
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", "2")]);
    }

    fn expression() -> impl Strategy<Value = Expression> {
        let key = prop::sample::select(vec!["app", "tier", "v"]).prop_map(String::from);
        let value = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
        let values = prop::collection::btree_set(value.clone(), 0..3);
        prop_oneof![
            (key.clone(), values.clone()).prop_map(|(k, v)| Expression::In(k, v)),
            (key.clone(), values).prop_map(|(k, v)| Expression::NotIn(k, v)),
            key.clone().prop_map(Expression::Exists),
            key.clone().prop_map(Expression::DoesNotExist),
            (key.clone(), value.clone()).prop_map(|(k, v)| Expression::Equal(k, v)),
            (key, value).prop_map(|(k, v)| Expression::NotEqual(k, v)),
        ]
    }

    proptest! {
        /// Matching the compact labels answers exactly like kube's `Selector` on a map.
        #[test]
        fn matches_like_kubes_selector(
            labels in prop::collection::btree_map(
                prop::sample::select(vec!["app", "tier", "v"]).prop_map(String::from),
                prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
                0..4,
            ),
            exprs in prop::collection::vec(expression(), 0..4),
        ) {
            let selector: Selector = exprs.into_iter().collect();
            let compact = Labels::from(&labels);
            prop_assert_eq!(LabelQuery::from(&selector).matches(&compact), selector.matches(&labels));
        }
    }
}
