//! The cache of workload pods, indexed by namespace and label, so that judging a target reads
//! only the pods its selector can match. With one flat cache every reconcile matched each
//! target's selector against every pod of the namespace: at 20,000 pods that is ~100,000
//! label matches per migration, per reconcile (issue 11).
//!
//! It mirrors the watch the way kube's reflector store does: a relist (`Init` … `InitDone`)
//! fills a new index that replaces the old one whole, so pods deleted while the watch was
//! down vanish, and a reader never sees half a list.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use kube::core::Expression;
use kube::runtime::watcher;

use super::labels::LabelQuery;
use super::views::{PodFacts, PodView};

type Name = Arc<str>;

#[derive(Default)]
struct Namespace {
    pods: HashMap<Name, Arc<PodFacts>>,
    /// label key → label value → the pods carrying it.
    by_label: HashMap<Box<str>, HashMap<Box<str>, HashSet<Name>>>,
}

impl Namespace {
    fn insert(&mut self, pod: Arc<PodFacts>) {
        let name = pod.name.clone();
        self.remove(&name);
        for (k, v) in pod.labels.iter() {
            let values = match self.by_label.get_mut(k) {
                Some(values) => values,
                None => self.by_label.entry(k.into()).or_default(),
            };
            match values.get_mut(v) {
                Some(names) => names.insert(name.clone()),
                None => values.entry(v.into()).or_default().insert(name.clone()),
            };
        }
        self.pods.insert(name, pod);
    }

    fn remove(&mut self, name: &str) {
        let Some(old) = self.pods.remove(name) else {
            return;
        };
        for (k, v) in old.labels.iter() {
            let Some(values) = self.by_label.get_mut(k) else {
                continue;
            };
            if let Some(names) = values.get_mut(v) {
                names.remove(name);
                if names.is_empty() {
                    values.remove(v);
                }
            }
            if values.is_empty() {
                self.by_label.remove(k);
            }
        }
    }

    fn carrying(&self, key: &str, value: &str) -> Option<&HashSet<Name>> {
        self.by_label.get(key)?.get(value)
    }

    /// The pods `query` matches: candidates from its narrowest `key=value` requirement
    /// (every pod of the namespace when it has none), each checked against the whole query.
    fn matching(&self, query: &LabelQuery) -> Vec<Arc<PodFacts>> {
        let narrowest = query
            .expressions()
            .iter()
            .filter_map(|e| match e {
                Expression::Equal(k, v) => Some((k.as_str(), v.as_str())),
                Expression::In(k, values) if values.len() == 1 => {
                    values.first().map(|v| (k.as_str(), v.as_str()))
                }
                _ => None,
            })
            .min_by_key(|(k, v)| self.carrying(k, v).map_or(0, HashSet::len));
        let selected = |p: &&Arc<PodFacts>| query.matches(&p.labels);
        match narrowest {
            None => self.pods.values().filter(selected).cloned().collect(),
            Some((k, v)) => self
                .carrying(k, v)
                .into_iter()
                .flatten()
                .filter_map(|n| self.pods.get(n))
                .filter(selected)
                .cloned()
                .collect(),
        }
    }
}

#[derive(Default)]
struct Index {
    namespaces: HashMap<String, Namespace>,
}

impl Index {
    fn insert(&mut self, pod: &PodView) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let namespace = match self.namespaces.get_mut(ns) {
            Some(n) => n,
            None => self.namespaces.entry(ns.to_string()).or_default(),
        };
        namespace.insert(pod.pod.clone());
    }

    fn remove(&mut self, pod: &PodView) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(n) = self.namespaces.get_mut(ns) {
            n.remove(&pod.pod.name);
            if n.pods.is_empty() {
                self.namespaces.remove(ns);
            }
        }
    }
}

/// The reader and the writer of the pod cache (cheap to clone, shared).
#[derive(Clone)]
pub struct PodCache {
    live: Arc<RwLock<Index>>,
    /// The index a relist is filling, swapped in at `InitDone`.
    building: Arc<Mutex<Option<Index>>>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache {
            live: Default::default(),
            building: Default::default(),
            ready: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl PodCache {
    /// Applies one watch event (call it for every event, in order).
    pub fn apply(&self, event: &watcher::Event<PodView>) {
        match event {
            watcher::Event::Init => {
                if let Ok(mut b) = self.building.lock() {
                    *b = Some(Index::default());
                }
            }
            watcher::Event::InitApply(p) => {
                if let Ok(mut b) = self.building.lock() {
                    b.get_or_insert_with(Index::default).insert(p);
                }
            }
            watcher::Event::InitDone => {
                let built = self.building.lock().ok().and_then(|mut b| b.take());
                if let (Some(built), Ok(mut live)) = (built, self.live.write()) {
                    *live = built;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(p) => {
                if let Ok(mut live) = self.live.write() {
                    live.insert(p);
                }
            }
            watcher::Event::Delete(p) => {
                if let Ok(mut live) = self.live.write() {
                    live.remove(p);
                }
            }
        }
    }

    /// Resolves once the first full list is in.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// The pods of `ns` that `query` matches.
    pub fn matching(&self, ns: &str, query: &LabelQuery) -> Vec<Arc<PodFacts>> {
        self.live
            .read()
            .ok()
            .and_then(|i| i.namespaces.get(ns).map(|n| n.matching(query)))
            .unwrap_or_default()
    }

    /// How many pods the cache holds.
    pub fn len(&self) -> usize {
        self.live
            .read()
            .map(|i| i.namespaces.values().map(|n| n.pods.len()).sum())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::core::{Selector, SelectorExt};
    use proptest::prelude::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodView {
        let labels: std::collections::BTreeMap<_, _> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels}
        }))
        .expect("pod")
    }

    fn selector(v: serde_json::Value) -> Selector {
        let s: LabelSelector = serde_json::from_value(v).expect("selector");
        Selector::try_from(s).expect("valid selector")
    }

    fn query(v: serde_json::Value) -> LabelQuery {
        LabelQuery::from(&selector(v))
    }

    fn names(pods: Vec<Arc<PodFacts>>) -> Vec<String> {
        let mut v: Vec<_> = pods.iter().map(|p| p.name.to_string()).collect();
        v.sort();
        v
    }

    fn listed(pods: Vec<PodView>) -> PodCache {
        let c = PodCache::default();
        c.apply(&watcher::Event::Init);
        for p in pods {
            c.apply(&watcher::Event::InitApply(p));
        }
        c.apply(&watcher::Event::InitDone);
        c
    }

    #[test]
    fn a_selector_gets_its_pods_of_its_namespace_only() {
        let c = listed(vec![
            pod("shop", "api-1", &[("app", "api"), ("v", "1")]),
            pod("shop", "api-2", &[("app", "api"), ("v", "2")]),
            pod("shop", "web-1", &[("app", "web")]),
            pod("other", "api-1", &[("app", "api")]),
        ]);
        let api = query(serde_json::json!({"matchLabels": {"app": "api"}}));
        assert_eq!(names(c.matching("shop", &api)), ["api-1", "api-2"]);
        let api_v2 = query(serde_json::json!({"matchLabels": {"app": "api", "v": "2"}}));
        assert_eq!(names(c.matching("shop", &api_v2)), ["api-2"]);
        // Only set-based requirements: every pod of the namespace is checked.
        let exists =
            query(serde_json::json!({"matchExpressions": [{"key": "v", "operator": "Exists"}]}));
        assert_eq!(names(c.matching("shop", &exists)), ["api-1", "api-2"]);
        let none = query(serde_json::json!({"matchLabels": {"app": "gone"}}));
        assert!(c.matching("shop", &none).is_empty());
        assert!(c.matching("nowhere", &api).is_empty());
    }

    #[test]
    fn a_relabelled_or_deleted_pod_leaves_its_old_postings() {
        let c = listed(vec![pod("shop", "p", &[("app", "api")])]);
        let api = query(serde_json::json!({"matchLabels": {"app": "api"}}));
        let web = query(serde_json::json!({"matchLabels": {"app": "web"}}));
        c.apply(&watcher::Event::Apply(pod("shop", "p", &[("app", "web")])));
        assert!(c.matching("shop", &api).is_empty());
        assert_eq!(names(c.matching("shop", &web)), ["p"]);
        c.apply(&watcher::Event::Delete(pod("shop", "p", &[("app", "web")])));
        assert!(c.matching("shop", &web).is_empty());
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn a_relist_replaces_the_index_whole_at_init_done() {
        let c = listed(vec![pod("shop", "gone", &[("app", "api")])]);
        c.wait_until_ready().await;
        let api = query(serde_json::json!({"matchLabels": {"app": "api"}}));
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(pod(
            "shop",
            "new",
            &[("app", "api")],
        )));
        // Until the relist is complete, readers see the old list.
        assert_eq!(names(c.matching("shop", &api)), ["gone"]);
        c.apply(&watcher::Event::InitDone);
        assert_eq!(names(c.matching("shop", &api)), ["new"]);
    }

    proptest! {
        /// Whatever the events, the index answers as a full scan of the live pods would.
        #[test]
        fn the_index_answers_like_a_scan(
            events in prop::collection::vec((0u8..4, 0u8..6, 0u8..3, 0u8..3), 0..60),
            sel in (0u8..3, prop::option::of(0u8..3)),
        ) {
            let c = listed(Vec::new());
            let mut truth: std::collections::BTreeMap<String, PodView> = Default::default();
            for (op, name, app, tier) in events {
                let name = format!("p{name}");
                let (app, tier) = (format!("a{app}"), format!("t{tier}"));
                let p = pod("shop", &name, &[("app", app.as_str()), ("tier", tier.as_str())]);
                if op == 0 {
                    c.apply(&watcher::Event::Delete(p));
                    truth.remove(&name);
                } else {
                    c.apply(&watcher::Event::Apply(p.clone()));
                    truth.insert(name, p);
                }
            }
            let mut labels = serde_json::Map::new();
            labels.insert("app".into(), format!("a{}", sel.0).into());
            if let Some(t) = sel.1 {
                labels.insert("tier".into(), format!("t{t}").into());
            }
            let s = selector(serde_json::json!({"matchLabels": labels}));
            let expected: Vec<String> = truth
                .iter()
                .filter(|(_, p)| {
                    let labels = p.pod.labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
                    s.matches(&labels.collect())
                })
                .map(|(n, _)| n.clone())
                .collect();
            prop_assert_eq!(names(c.matching("shop", &LabelQuery::from(&s))), expected);
            prop_assert_eq!(c.len(), truth.len());
        }
    }
}
