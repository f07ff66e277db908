//! What the operator's caches hold per object, measured with a counting allocator:
//! `cargo bench --bench cache_memory` (or `make bench-cache-memory`). The objects are real ones
//! from a `make bench-scale` cluster (benches/data, as the API server sends them), cached the
//! way the controller caches them; sizes default to the full bench preset and are set with
//! `PODS`, `DEPLOYMENTS`, `MIGRATIONS`. Then `MAX_MIGRATIONS` (default 500) migrations of
//! the largest size one author can make (issue 23), cached as the operator caches them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use phasegate::api::DatabaseMigration;
use phasegate::controller::cache;
use phasegate::controller::pod_index::PodCache;
use phasegate::controller::views::{DeploymentView, ExecutorPodView, JobView, PodView};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    LIVE.fetch_add(by, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        grew(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` copies of a sample, each with its own name (and labels, as a Deployment's pods have).
fn samples(file: &str, n: usize, rename: impl Fn(&mut serde_json::Value, usize)) -> Vec<String> {
    let path = format!("{}/benches/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let base: serde_json::Value = serde_json::from_str(&text).expect("sample JSON");
    (0..n)
        .map(|i| {
            let mut v = base.clone();
            rename(&mut v, i);
            v.to_string()
        })
        .collect()
}

/// Decodes each text as `T`, keeps it as `keep` says, and prints what the kept objects cost.
fn measure<T: serde::de::DeserializeOwned, K>(
    what: &str,
    texts: &[String],
    mut keep: impl FnMut(T) -> K,
) -> Vec<K> {
    let before = live();
    let kept: Vec<K> = texts
        .iter()
        .map(|t| keep(serde_json::from_str(t).expect("decodes")))
        .collect();
    let bytes = live() - before;
    println!(
        "| {what:<44} | {:>7} | {:>10.1} | {:>8} |",
        texts.len(),
        bytes as f64 / 1_048_576.0,
        bytes / texts.len().max(1) as isize
    );
    kept
}

fn main() {
    let (pods, deployments, migrations) = (
        env("PODS", 20_000),
        env("DEPLOYMENTS", 5_000),
        env("MIGRATIONS", 1_000),
    );
    let per = pods / deployments.max(1);
    let pod_texts = samples("pod.json", pods, |v, i| {
        let app = format!("app-{:05}", i / per.max(1));
        v["metadata"]["name"] = format!("{app}-7fd55776ff-{i:05}").into();
        v["metadata"]["labels"]["app"] = app.into();
    });
    let deployment_texts = samples("deployment.json", deployments, |v, i| {
        v["metadata"]["name"] = format!("app-{i:05}").into();
    });
    let migration_texts = samples("migration.json", migrations, |v, i| {
        v["metadata"]["name"] = format!("mig-{i:05}").into();
    });
    let job_texts = samples("job.json", migrations, |v, i| {
        v["metadata"]["name"] = format!("mig-{i:05}-expand-1").into();
    });
    let executor_texts = samples("executor-pod.json", migrations, |v, i| {
        v["metadata"]["name"] = format!("mig-{i:05}-expand-1-abcde").into();
    });

    println!("| object, as cached                            |   count |  heap MiB | B/object |");
    println!("|----------------------------------------------|---------|-----------|----------|");
    let start = live();
    let full_pods = measure(
        "pod, k8s-openapi Pod (for comparison)",
        &pod_texts,
        |p: Pod| p,
    );
    drop(full_pods);
    let index = PodCache::default();
    index.apply(&Event::Init);
    measure(
        "pod, PodView in the label index",
        &pod_texts,
        |p: PodView| {
            index.apply(&Event::InitApply(p));
        },
    );
    index.apply(&Event::InitDone);
    let d = measure(
        "Deployment, DeploymentView",
        &deployment_texts,
        |d: DeploymentView| d,
    );
    let m = measure(
        "DatabaseMigration (no managedFields)",
        &migration_texts,
        |mut m: DatabaseMigration| {
            cache::prune_migration(&mut m);
            m
        },
    );
    let j = measure("executor Job, JobView", &job_texts, |j: JobView| j);
    // What the cache held before ExecutorPodView: the k8s Pod without spec and managedFields.
    let pruned = measure(
        "executor pod, k8s Pod w/o spec (comparison)",
        &executor_texts,
        |mut p: Pod| {
            p.spec = None;
            p.metadata.managed_fields = None;
            p
        },
    );
    drop(pruned);
    let e = measure(
        "executor pod, ExecutorPodView",
        &executor_texts,
        |p: ExecutorPodView| p,
    );
    println!(
        "\ncache_memory: pods={pods} deployments={deployments} migrations={migrations} heap_mib={:.1} (pods indexed: {})",
        (live() - start) as f64 / 1_048_576.0,
        index.len()
    );
    drop((d, m, j, e));
    max_size_migrations(env("MAX_MIGRATIONS", 500));
}

/// The largest migration one author can make: inline SQL at the CRD's bound in both phases
/// (131,057 bytes each), a backfill at its bound (65,536), 200 KiB of their own annotations
/// (the API server allows 256 KiB) and kubectl's last-applied copy of all that, which makes it
/// about 1 MB, as `kubectl apply` stores it. A larger job template (the CRD cannot bound one)
/// is cut to its size by the cache, so it costs less than the SQL.
fn max_size_migration(v: &mut serde_json::Value, i: usize) {
    let sql = |n: usize| format!("SELECT 1; --{}", "x".repeat(n - 12));
    v["metadata"]["name"] = format!("max-{i:05}").into();
    v["spec"]["expand"] = serde_json::json!({"sql": sql(131_057)});
    v["spec"]["contract"]["sql"] = sql(131_057).into();
    v["spec"]["backfill"] = serde_json::json!({"table": "users", "key": "id",
        "sql": format!("UPDATE users SET a = b WHERE id > $1 AND id <= $2; --{}", "x".repeat(65_536 - 55))});
    v["metadata"]["labels"] = serde_json::json!({"app.kubernetes.io/part-of": "shop"});
    v["metadata"]["annotations"] = serde_json::json!({"example.com/notes": "n".repeat(200 * 1024)});
    v["metadata"]["managedFields"] = serde_json::json!([{"manager": "kubectl-client-side-apply",
        "operation": "Update", "apiVersion": "phasegate.dev/v1alpha1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:expand": {"f:sql": {}}, "f:contract": {"f:sql": {}}}}}]);
    let applied = v.to_string();
    v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        applied.into();
}

fn max_size_migrations(n: usize) {
    let texts = samples("migration.json", n, max_size_migration);
    let bytes: usize = texts.iter().map(String::len).sum();
    println!(
        "\n{n} maximum-size migrations, {:.2} MiB of JSON each as the API server sends them:\n",
        bytes as f64 / n.max(1) as f64 / 1_048_576.0
    );
    println!("| object, as cached                            |   count |  heap MiB | B/object |");
    println!("|----------------------------------------------|---------|-----------|----------|");
    let full = measure(
        "max-size migration, unpruned",
        &texts,
        |m: DatabaseMigration| m,
    );
    drop(full);
    let base = live();
    let m = measure(
        "max-size migration, pruned (the operator)",
        &texts,
        |mut m: DatabaseMigration| {
            cache::prune_migration(&mut m);
            m
        },
    );
    let cached = live() - base;
    // A relist decodes one page (MIGRATION_PAGE_SIZE, 20 objects) whole before pruning it,
    // next to the page's JSON and the cache it replaces.
    let page_text: usize = texts.iter().take(20).map(String::len).sum();
    let before = live();
    let page: Vec<DatabaseMigration> = texts
        .iter()
        .take(20)
        .map(|t| serde_json::from_str(t).expect("decodes"))
        .collect();
    let page_heap = live() - before;
    let mib = |b: f64| b / 1_048_576.0;
    let page_bytes = page_heap as f64 + page_text as f64;
    // kube-runtime's reflector fills a new map during a relist and swaps it in at the end:
    // the old cache and the new one live side by side, plus the page being decoded.
    println!(
        "\ncache_memory: max_migrations={n} cached_mib={:.1} relist_page_mib={:.1} \
         (20 decoded: {:.1}, their JSON: {:.1}) relist_peak_mib={:.1} (2 caches + 1 page)",
        mib(cached as f64),
        mib(page_bytes),
        mib(page_heap as f64),
        mib(page_text as f64),
        mib(2.0 * cached as f64 + page_bytes),
    );
    drop((m, page));
}
