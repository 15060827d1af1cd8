//! `--cache DIR` (issue 16 item 5): a second job on the same model and graph
//! options restores the rewritten graph instead of building it, and gives the
//! same grids bit for bit; another option or other model bytes miss; a damaged
//! entry or changed external data is rebuilt with a warning.

use crate::common::*;
use attrpatch::graph_cache::CacheUse;
use attrpatch::jobs::JobOptions;
use attrpatch::onnx::pb::ModelProto;
use attrpatch::{Estimator, Grids, JobResult};
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Collects a job's warnings.
#[derive(Default)]
struct Warnings(Mutex<Vec<String>>);

impl attrpatch::Progress for Warnings {
    fn warn(&self, w: &str) {
        self.0.lock().unwrap().push(w.to_string());
    }
}

fn tiny() -> PathBuf {
    root().join("models/gpt2-tiny-random.onnx")
}

fn options(model: &Path, cache: Option<&Path>) -> (JobOptions, Arc<Warnings>) {
    let mut o = JobOptions::new(model.to_path_buf());
    o.tokenizer = Some(root().join("models/tokenizer.json"));
    o.prompts = Some(root().join("models/ioi-prompts.jsonl"));
    o.runtime.device = attrpatch::Device::Cpu;
    o.cache = cache.map(Path::to_path_buf);
    let w = Arc::new(Warnings::default());
    o.progress = Some(w.clone());
    (o, w)
}

fn attribute(o: &JobOptions) -> JobResult {
    attrpatch::jobs::run_job(o).unwrap().expect("not a shard")
}

/// Bit for bit: the restored graph is the same graph, run the same way.
fn assert_same(what: &str, a: &Grids, b: &Grids) {
    assert!(!a.heads.is_empty(), "{what}: empty heads grid");
    assert_eq!(a.heads, b.heads, "{what}: heads grids differ");
    assert_eq!(a.positions, b.positions, "{what}: positions grids differ");
}

/// The cache's entry folders (temporary folders start with '.').
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(cache).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'));
    v.sort();
    v
}

#[test]
fn second_run_restores_the_graph_and_gives_the_same_grids() {
    let cache = fresh_dir("cache-second-run");
    let (o, _) = options(&tiny(), Some(&cache));
    let first = attribute(&o);
    assert_eq!(first.seconds.cache, CacheUse::Miss);
    assert_eq!(entries(&cache).len(), 1, "one entry written");
    let second = attribute(&o);
    assert_eq!(second.seconds.cache, CacheUse::Hit);
    assert_eq!(second.seconds.rewrite, 0.0, "a hit rewrites nothing");
    assert_same("second run", &first.grids, &second.grids);
    assert_eq!(first.manifest.model_hash, second.manifest.model_hash);
    assert_eq!(first.manifest.hooks, second.manifest.hooks);
    assert_eq!(first.pair_metrics, second.pair_metrics);

    // ONNX Runtime's optimised graph was saved by the first session and loaded by the second.
    let from_cache = "optimised graph from the cache";
    assert!(!first.manifest.runtime.contains(from_cache), "{}", first.manifest.runtime);
    assert!(second.manifest.runtime.contains(from_cache), "{}", second.manifest.runtime);
    let saved = std::fs::read_dir(&entries(&cache)[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("ort-"))
        .expect("a folder of ONNX Runtime's optimised graph in the entry");
    // Cut short, it is not used: the graph is optimised (and saved) again.
    let data = saved.join("model.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len / 2).unwrap();
    let third = attribute(&o);
    assert_eq!(third.seconds.cache, CacheUse::Hit);
    assert!(!third.manifest.runtime.contains(from_cache), "{}", third.manifest.runtime);
    assert_same("optimised again", &first.grids, &third.grids);
    assert_eq!(std::fs::metadata(&data).unwrap().len(), len, "the optimised graph was not saved again");
    assert!(attribute(&o).manifest.runtime.contains(from_cache));

    // And the same as without a cache.
    let (plain, _) = options(&tiny(), None);
    let uncached = attribute(&plain);
    assert_eq!(uncached.seconds.cache, CacheUse::Off);
    assert_same("uncached run", &first.grids, &uncached.grids);
}

#[test]
fn patching_jobs_are_cached_under_their_own_key() {
    let cache = fresh_dir("cache-patch");
    let (o, _) = options(&tiny(), Some(&cache));
    let e = Estimator::Exact { positions: false };
    let first = attrpatch::jobs::run_patching(&o, e, None).unwrap();
    assert_eq!(first.seconds.cache, CacheUse::Miss);
    let second = attrpatch::jobs::run_patching(&o, e, None).unwrap();
    assert_eq!(second.seconds.cache, CacheUse::Hit);
    assert_same("exact patching", &first.grids, &second.grids);
    // The attribution graph is another graph: its own entry.
    assert_eq!(attribute(&o).seconds.cache, CacheUse::Miss);
    assert_eq!(entries(&cache).len(), 2);
}

#[test]
fn another_option_or_other_model_bytes_miss() {
    let cache = fresh_dir("cache-keys");
    let (o, _) = options(&tiny(), Some(&cache));
    assert_eq!(attribute(&o).seconds.cache, CacheUse::Miss);

    let mut other_metric = o.clone();
    other_metric.metric = attrpatch::Metric::LogprobDiff;
    assert_eq!(attribute(&other_metric).seconds.cache, CacheUse::Miss);
    let mut other_hooks = o.clone();
    other_hooks.hooks = attrpatch::HookKind::Resid;
    assert_eq!(attribute(&other_hooks).seconds.cache, CacheUse::Miss);
    assert_eq!(entries(&cache).len(), 3);
    // Each is found again.
    assert_eq!(attribute(&other_metric).seconds.cache, CacheUse::Hit);

    // The same bytes elsewhere: the key is the content, not the path.
    let copy_dir = fresh_dir("cache-keys-copy");
    let copy = copy_dir.join("gpt2-tiny-random.onnx");
    std::fs::copy(tiny(), &copy).unwrap();
    let (o_copy, _) = options(&copy, Some(&cache));
    assert_eq!(attribute(&o_copy).seconds.cache, CacheUse::Hit);

    // One weight changed: a miss, and the grids of the changed model.
    let mut proto = ModelProto::decode(std::fs::read(tiny()).unwrap().as_slice()).unwrap();
    let w = proto.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.raw_data.len() >= 4096).unwrap();
    w.raw_data[4000..4004].copy_from_slice(&0.5f32.to_le_bytes());
    let changed = copy_dir.join("changed.onnx");
    std::fs::write(&changed, proto.encode_to_vec()).unwrap();
    let (o_changed, _) = options(&changed, Some(&cache));
    let r = attribute(&o_changed);
    assert_eq!(r.seconds.cache, CacheUse::Miss);
    let (plain, _) = options(&changed, None);
    assert_same("changed model", &r.grids, &attribute(&plain).grids);
}

/// The entry's file `name`, cut to half its length.
fn truncate(cache: &Path, name: &str) {
    let entry = entries(cache).pop().expect("an entry");
    let path = entry.join(name);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
}

#[test]
fn truncated_entry_files_are_rebuilt_with_a_warning() {
    for file in ["graph.onnx", "meta.json", "weights.bin"] {
        let cache = fresh_dir(&format!("cache-truncated-{}", file.replace('.', "-")));
        let (o, warnings) = options(&tiny(), Some(&cache));
        let first = attribute(&o);
        let len = std::fs::metadata(entries(&cache)[0].join(file)).unwrap().len();
        if len == 0 {
            // Nothing to cut: no weight went to the runtime in memory for this model.
            assert_eq!(file, "weights.bin");
            continue;
        }
        truncate(&cache, file);
        let second = attribute(&o);
        let CacheUse::Rebuilt { reason } = &second.seconds.cache else {
            panic!("{file} cut in half: {:?}, not rebuilt", second.seconds.cache)
        };
        assert!(reason.contains(file), "{file}: the reason names another thing: {reason}");
        let w = warnings.0.lock().unwrap().clone();
        assert!(w.iter().any(|w| w.contains("unusable") && w.contains(file)), "{file}: no warning naming it: {w:?}");
        assert_same(&format!("rebuilt after {file} was cut"), &first.grids, &second.grids);
        // Rebuilt means written again: the next run hits.
        assert_eq!(attribute(&o).seconds.cache, CacheUse::Hit, "after {file} was rebuilt");
    }
}

#[test]
fn changed_external_data_is_noticed() {
    let d = fresh_dir("cache-external-model");
    let mut proto = ModelProto::decode(std::fs::read(tiny()).unwrap().as_slice()).unwrap();
    let model = d.join("ext.onnx");
    attrpatch::onnx::io::save_model(&mut proto, &model, true).unwrap();
    let data = attrpatch::onnx::io::data_file_for(&model);
    assert!(data.is_file());
    let cache = fresh_dir("cache-external");
    let (o, warnings) = options(&model, Some(&cache));
    let first = attribute(&o);
    assert_eq!(first.seconds.cache, CacheUse::Miss);
    assert_eq!(attribute(&o).seconds.cache, CacheUse::Hit);

    // The .onnx file is unchanged, its weights are not: the entry must not be used.
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2 / 4 * 4;
    bytes[at..at + 4].copy_from_slice(&0.25f32.to_le_bytes());
    std::fs::write(&data, &bytes).unwrap();
    let r = attribute(&o);
    let CacheUse::Rebuilt { reason } = &r.seconds.cache else { panic!("{:?}, not rebuilt", r.seconds.cache) };
    assert!(reason.contains("ext.onnx.data") && reason.contains("changed"), "{reason}");
    assert!(warnings.0.lock().unwrap().iter().any(|w| w.contains("ext.onnx.data")));
    let (plain, _) = options(&model, None);
    assert_same("changed external data", &r.grids, &attribute(&plain).grids);
}

#[test]
fn cli_second_run_prints_the_hit_and_writes_the_same_grids() {
    let cache = fresh_dir("cache-cli");
    let run = |out: &Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch"))
            .args(["run", "--model", "models/gpt2-tiny-random.onnx", "--device", "cpu", "--cache"])
            .arg(&cache)
            .arg("--out")
            .arg(out)
            .current_dir(root())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{text}");
        let results = std::fs::read(out.join("results.json")).unwrap();
        (text, serde_json::from_slice::<serde_json::Value>(&results).unwrap())
    };
    let (out1, out2) = (fresh_dir("cache-cli-out1"), fresh_dir("cache-cli-out2"));
    let (text1, r1) = run(&out1);
    assert!(text1.contains("(cache miss, stored)"), "{text1}");
    let (text2, r2) = run(&out2);
    assert!(text2.contains("(cache hit)"), "{text2}");
    assert_eq!(r1["heads"], r2["heads"]);
    assert_eq!(r1["positions"], r2["positions"]);
}

#[test]
fn edge_scores_are_cached_too() {
    let cache = fresh_dir("cache-edges");
    let (mut o, _) = options(&bundled_model(), Some(&cache));
    o.tokenizer = None; // the one beside the bundled model
    let first = attrpatch::eap::run_edges(&o, 1).unwrap();
    let written = entries(&cache);
    assert_eq!(written.len(), 1);
    let stamp = || std::fs::metadata(written[0].join("meta.json")).unwrap().modified().unwrap();
    let before = stamp();
    let second = attrpatch::eap::run_edges(&o, 1).unwrap();
    // A hit reads the entry; a miss or a rebuild would have written it again.
    assert_eq!(stamp(), before, "the entry was written again: the second run did not use it");
    assert_eq!(entries(&cache), written);
    assert!(!first.edges.is_empty());
    assert_eq!(first, second, "edge scores differ after a cache hit");
}
