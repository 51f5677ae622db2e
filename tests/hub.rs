//! Hub sources against a local server that speaks the hub's URL layout (built from
//! `../shared/models/stories260K`): the happy path, cache reuse, offline mode, unreachable
//! hub, 401/403/404, a truncated download (removed, then resumed), a write failure standing in
//! for a full disk, sharded weights, revisions, dataset files, and the environment variables.
//! Nothing here touches the internet.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lors::data::{read_records, DataFormat};
use lors::model::{CausalLm, ModelDir};
use lors::sources::{fetch_file, fetch_model, HubRef, HubSettings};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range_start: Option<u64>,
    authorization: Option<String>,
}

#[derive(Default)]
struct State {
    /// (repo path as in URLs: `org/name` or `datasets/org/name`) -> files.
    repos: HashMap<String, Vec<(String, Vec<u8>)>>,
    /// Answer every request for a repo with this status.
    status: HashMap<String, u16>,
    /// Send at most this many body bytes of a file per response (then close).
    truncate: HashMap<String, usize>,
    seen: Vec<Seen>,
}

/// A hub in the small: `GET /api/{models,datasets}/<repo>/revision/<rev>` and
/// `GET /<repo>/resolve/<rev>/<file>` with byte ranges, one request per connection.
struct Hub {
    url: String,
    state: Arc<Mutex<State>>,
}

fn etag(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}{:016x}", h.finish(), bytes.len())
}

impl Hub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Self { url, state }
    }

    fn add_repo(&self, repo: &str, files: Vec<(String, Vec<u8>)>) {
        self.state
            .lock()
            .unwrap()
            .repos
            .insert(repo.to_string(), files);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn settings(&self, cache: &Path) -> HubSettings {
        HubSettings {
            endpoint: self.url.clone(),
            cache_dir: cache.to_path_buf(),
            token: None,
            offline: false,
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range_start, mut range_end, mut authorization) = (None, None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or(("", ""));
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "range" => {
                let (a, b) = v.trim_start_matches("bytes=").split_once('-').unwrap();
                range_start = a.parse::<u64>().ok();
                range_end = b.parse::<u64>().ok();
            }
            "authorization" => authorization = Some(v.to_string()),
            _ => {}
        }
    }
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        path: path.clone(),
        range_start,
        authorization,
    });
    let json = [("Content-Type".to_string(), "application/json".to_string())];
    // API: repo listing.
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = rest.split_once('/').unwrap();
        let repo_path = rest.split("/revision/").next().unwrap();
        let key = if kind == "datasets" {
            format!("datasets/{repo_path}")
        } else {
            repo_path.to_string()
        };
        if let Some(code) = st.status.get(&key) {
            return respond(&mut stream, *code, &json, b"{\"error\":\"no\"}");
        }
        let Some(files) = st.repos.get(&key) else {
            return respond(
                &mut stream,
                404,
                &json,
                b"{\"error\":\"Repository not found\"}",
            );
        };
        let siblings: Vec<_> = files
            .iter()
            .map(|(n, _)| serde_json::json!({ "rfilename": n }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(&mut stream, 200, &json, body.as_bytes());
    }
    // Files.
    let Some((repo_path, rest)) = path[1..].split_once("/resolve/") else {
        return respond(&mut stream, 404, &[], b"");
    };
    if let Some(code) = st.status.get(repo_path) {
        return respond(&mut stream, *code, &[], b"no");
    }
    let file = rest.split_once('/').map(|x| x.1).unwrap_or("");
    let Some(bytes) = st
        .repos
        .get(repo_path)
        .and_then(|fs| fs.iter().find(|(n, _)| n == file))
        .map(|(_, b)| b.clone())
    else {
        return respond(
            &mut stream,
            404,
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"",
        );
    };
    let total = bytes.len() as u64;
    let start = range_start.unwrap_or(0).min(total);
    let end = range_end.unwrap_or(total.saturating_sub(1)).min(total - 1);
    let body = &bytes[start as usize..=end as usize];
    let limit = st.truncate.get(file).copied();
    drop(st);
    let headers = vec![
        ("Content-Length".to_string(), body.len().to_string()),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{end}/{total}"),
        ),
        ("ETag".to_string(), format!("\"{}\"", etag(&bytes))),
        ("X-Repo-Commit".to_string(), COMMIT.to_string()),
    ];
    let sent = limit.map_or(body, |n| &body[..n.min(body.len())]);
    respond(&mut stream, 206, &headers, sent);
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A hub with `test/stories260K` (plus files a run does not need), a sharded copy, and a
/// dataset repo.
fn hub() -> Hub {
    let hub = Hub::start();
    let mut files = read_dir_files(&shared().join("models/stories260K"));
    files.push(("README.md".into(), b"# not needed".to_vec()));
    files.push(("pytorch_model.bin".into(), vec![0u8; 1000]));
    hub.add_repo("test/stories260K", files);
    hub.add_repo("datasets/test/stories", {
        let data = std::fs::read(shared().join("data/tinystories-synth-valid.jsonl")).unwrap();
        vec![("data/valid.jsonl".into(), data)]
    });
    hub
}

/// `stories260K` split into two shards with an index.
fn sharded_files() -> Vec<(String, Vec<u8>)> {
    let dir = shared().join("models/stories260K");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let tmp = tempfile::tempdir().unwrap();
    let mut map = serde_json::Map::new();
    let mut files = Vec::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        let part: HashMap<String, candle_core::Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, tmp.path().join(&shard)).unwrap();
        for n in chunk {
            map.insert((*n).clone(), serde_json::Value::String(shard.clone()));
        }
        files.push((
            shard.clone(),
            std::fs::read(tmp.path().join(&shard)).unwrap(),
        ));
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    files.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    for f in ["config.json", "tokenizer.json"] {
        files.push((f.into(), std::fs::read(dir.join(f)).unwrap()));
    }
    files
}

fn model_ref(id: &str) -> HubRef {
    HubRef::parse(id).unwrap()
}

/// The files requested, each once: hf-hub asks for the first byte (size, etag, commit),
/// then for the body, so every downloaded file must appear exactly twice.
fn file_requests(seen: &[Seen]) -> Vec<String> {
    let mut files: Vec<String> = seen
        .iter()
        .filter(|s| s.path.contains("/resolve/"))
        .map(|s| s.path.rsplit('/').next().unwrap().to_string())
        .collect();
    files.sort();
    let mut once = files.clone();
    once.dedup();
    for f in &once {
        assert_eq!(
            files.iter().filter(|x| *x == f).count(),
            2,
            "{f}: {files:?}"
        );
    }
    once
}

#[test]
fn hub_references_parse_like_the_hub_names_them() {
    let r = HubRef::parse("HuggingFaceTB/SmolLM2-135M@v1.0").unwrap();
    assert_eq!(
        (r.dataset, r.repo_id.as_str(), r.revision.as_str()),
        (false, "HuggingFaceTB/SmolLM2-135M", "v1.0")
    );
    assert_eq!(HubRef::parse("hf://org/name").unwrap().revision, "main");
    let d = HubRef::parse("hf://datasets/org/data@abc/dir/train.parquet").unwrap();
    assert_eq!(
        (
            d.dataset,
            d.repo_id.as_str(),
            d.revision.as_str(),
            d.file.as_deref()
        ),
        (true, "org/data", "abc", Some("dir/train.parquet"))
    );
    for bad in [
        "name",
        "/abs/path",
        "a/b/c",
        "./x/y",
        "hf://datasets/org/name",
        "",
    ] {
        assert_eq!(HubRef::parse(bad), None, "{bad}");
    }
    // An existing local path is never a hub id, nor a missing one in a folder that exists
    // here (the tests run in the crate's folder, which has `src/`); a missing `org/name`
    // whose `org` is no local folder is one.
    assert_eq!(
        HubRef::from_path(&shared().join("models/stories260K")),
        None
    );
    assert_eq!(HubRef::from_path(Path::new("src/no-such-model")), None);
    assert!(HubRef::from_path(Path::new("no-such-org/model")).is_some());
}

#[test]
fn a_model_is_fetched_once_with_only_the_files_a_run_needs() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());
    let mut progress = Vec::new();
    let dir = fetch_model(&model_ref("test/stories260K"), &settings, &mut |d| {
        progress.push(d.clone())
    })
    .unwrap();
    assert!(dir.starts_with(cache.path().join("models--test--stories260K/snapshots")));
    assert_eq!(
        file_requests(&hub.seen()),
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let last = progress
        .iter()
        .rfind(|d| d.file == "model.safetensors")
        .unwrap();
    assert_eq!(last.done, last.total);
    // Bit for bit the shared files, and the same model.
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(shared().join("models/stories260K").join(f)).unwrap(),
            "{f}"
        );
    }
    let model = CausalLm::load_frozen(&ModelDir::open(&dir).unwrap()).unwrap();
    assert_eq!(model.config().vocab_size, 512);
    // The workbench offers cached hub models by id.
    let search = lors::tui::catalog::SearchPaths {
        hf_cache: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let offered = search.models();
    assert_eq!(offered.len(), 1);
    assert_eq!(
        (
            offered[0].label.as_str(),
            offered[0].origin,
            &offered[0].path
        ),
        ("test/stories260K@01234567", "hf-cache", &dir)
    );
    // Again: everything comes from the cache, no request at all.
    let before = hub.seen().len();
    let again = fetch_model(&model_ref("test/stories260K"), &settings, &mut |_| {}).unwrap();
    assert_eq!(again, dir);
    assert_eq!(hub.seen().len(), before, "a cached model makes no request");
    // Offline, the cached model is used as is.
    let offline = HubSettings {
        offline: true,
        ..settings.clone()
    };
    assert_eq!(
        fetch_model(&model_ref("test/stories260K"), &offline, &mut |_| {}).unwrap(),
        dir
    );
    // And an unreachable hub does not matter either.
    let unreachable = HubSettings {
        endpoint: "http://127.0.0.1:9".into(),
        ..settings
    };
    assert_eq!(
        fetch_model(&model_ref("test/stories260K"), &unreachable, &mut |_| {}).unwrap(),
        dir
    );
}

#[test]
fn offline_or_unreachable_without_a_cache_says_what_is_missing() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let offline = HubSettings {
        offline: true,
        ..hub.settings(cache.path())
    };
    let err = fetch_model(&model_ref("test/stories260K"), &offline, &mut |_| {})
        .unwrap_err()
        .to_string();
    for want in [
        "HF_HUB_OFFLINE",
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "lors fetch test/stories260K@main",
        "local directory",
        cache.path().to_str().unwrap(),
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert!(hub.seen().is_empty(), "offline makes no request");
    let unreachable = HubSettings {
        endpoint: "http://127.0.0.1:9".into(),
        ..hub.settings(cache.path())
    };
    let err = fetch_model(&model_ref("test/stories260K"), &unreachable, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot reach http://127.0.0.1:9") && err.contains("missing config.json"),
        "{err}"
    );
}

#[test]
fn gated_private_and_missing_repos_and_files_are_clear_errors() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());
    hub.add_repo(
        "test/gated",
        read_dir_files(&shared().join("models/stories260K")),
    );
    hub.state
        .lock()
        .unwrap()
        .status
        .insert("test/gated".into(), 401);
    let err = fetch_model(&model_ref("test/gated"), &settings, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("401") && err.contains("HF_TOKEN") && err.contains("no token is set"),
        "{err}"
    );
    hub.state
        .lock()
        .unwrap()
        .status
        .insert("test/gated".into(), 403);
    let with_token = HubSettings {
        token: Some("hf_x".into()),
        ..settings.clone()
    };
    let err = fetch_model(&model_ref("test/gated"), &with_token, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("403") && err.contains("gated"), "{err}");
    assert_eq!(
        hub.seen().last().unwrap().authorization.as_deref(),
        Some("Bearer hf_x")
    );
    let err = fetch_model(&model_ref("test/absent"), &settings, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("404") && err.contains("test/absent"), "{err}");
    let err = fetch_file(
        &HubRef::parse("hf://datasets/test/stories/data/none.jsonl").unwrap(),
        &settings,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no file `data/none.jsonl`") && err.contains("data/valid.jsonl"),
        "{err}"
    );
    // A repo without safetensors says so.
    hub.add_repo(
        "test/bin-only",
        vec![
            ("config.json".into(), b"{}".to_vec()),
            ("pytorch_model.bin".into(), vec![1]),
        ],
    );
    let err = fetch_model(&model_ref("test/bin-only"), &settings, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("no safetensors weights"), "{err}");
    // Nothing was left behind as if complete.
    assert!(
        !cache.path().join("models--test--gated/snapshots").exists(),
        "{:?}",
        std::fs::read_dir(cache.path()).map(|d| d.count())
    );
}

#[test]
fn a_truncated_download_is_never_taken_for_complete_and_resumes() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());
    let full = std::fs::read(shared().join("models/stories260K/model.safetensors")).unwrap();
    hub.state
        .lock()
        .unwrap()
        .truncate
        .insert("model.safetensors".into(), 100_000);
    let err = fetch_model(&model_ref("test/stories260K"), &settings, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("resumes"),
        "{err}"
    );
    let snapshot = cache
        .path()
        .join(format!("models--test--stories260K/snapshots/{COMMIT}"));
    assert!(
        !snapshot.join("model.safetensors").exists(),
        "a partial file sits where the complete one belongs"
    );
    assert!(ModelDir::open(&snapshot).is_err());
    // The hub recovers: the download resumes from what was received.
    hub.state.lock().unwrap().truncate.clear();
    let dir = fetch_model(&model_ref("test/stories260K"), &settings, &mut |_| {}).unwrap();
    let last = hub
        .seen()
        .into_iter()
        .rfind(|s| s.path.ends_with("/model.safetensors"))
        .unwrap();
    assert!(
        last.range_start.unwrap() >= 100_000,
        "the last request starts at {:?}",
        last.range_start
    );
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), full);
}

#[test]
fn sharded_weights_revisions_and_dataset_files() {
    let hub = hub();
    hub.add_repo("test/sharded", sharded_files());
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());
    let dir = fetch_model(&model_ref("test/sharded@v1"), &settings, &mut |_| {}).unwrap();
    assert_eq!(
        file_requests(&hub.seen()),
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json"
        ]
    );
    assert!(hub
        .seen()
        .iter()
        .all(|s| !s.path.contains("/resolve/") || s.path.contains("/resolve/v1/")));
    assert!(cache.path().join("models--test--sharded/refs/v1").is_file());
    let sharded = CausalLm::load_frozen(&ModelDir::open(&dir).unwrap()).unwrap();
    let single =
        CausalLm::load_frozen(&ModelDir::open(&shared().join("models/stories260K")).unwrap())
            .unwrap();
    let ids = candle_core::Tensor::new(&[[1u32, 400, 12, 7]], &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        common::max_abs_diff(
            &sharded.forward(&ids).unwrap(),
            &single.forward(&ids).unwrap()
        ),
        0.0
    );
    // Offline, the cached shards are enough.
    let offline = HubSettings {
        offline: true,
        ..settings.clone()
    };
    assert_eq!(
        fetch_model(&model_ref("test/sharded@v1"), &offline, &mut |_| {}).unwrap(),
        dir
    );
    // A dataset file.
    let path = fetch_file(
        &HubRef::parse("hf://datasets/test/stories/data/valid.jsonl").unwrap(),
        &settings,
        &mut |_| {},
    )
    .unwrap();
    assert!(path.starts_with(cache.path().join("datasets--test--stories")));
    let records = read_records(&path, DataFormat::Auto, false).unwrap();
    assert_eq!(records.records.len(), 400);
}

fn lors(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lors"));
    cmd.args(args);
    for k in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(envs.iter().copied());
    cmd.output().unwrap()
}

#[test]
fn the_cli_honours_the_hub_environment_and_runs_offline_from_the_cache() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().join("hf");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "hf_from_file\n").unwrap();
    let env = [
        ("HF_HOME", hf_home.to_str().unwrap()),
        ("HF_ENDPOINT", hub.url.as_str()),
    ];
    let out = lors(&["fetch", "test/stories260K"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.trim().starts_with(
            hf_home
                .join("hub/models--test--stories260K")
                .to_str()
                .unwrap()
        ),
        "{printed}"
    );
    assert!(hub
        .seen()
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_from_file")));
    // HF_TOKEN wins over the file; HF_HUB_CACHE moves the cache.
    let cache = home.path().join("elsewhere");
    let data = "hf://datasets/test/stories/data/valid.jsonl";
    let out = lors(
        &["fetch", data],
        &[
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_TOKEN", "hf_env"),
            ("HF_ENDPOINT", hub.url.as_str()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cache.join("datasets--test--stories").is_dir());
    assert_eq!(
        hub.seen().last().unwrap().authorization.as_deref(),
        Some("Bearer hf_env")
    );
    // Offline, a hub id is a model path like any other: evaluate it from the cache.
    let before = hub.seen().len();
    let out = lors(
        &[
            "eval",
            "--model",
            "test/stories260K",
            "--data",
            shared()
                .join("data/tinystories-synth-valid.jsonl")
                .to_str()
                .unwrap(),
            "--max-windows",
            "8",
        ],
        &[
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", hub.url.as_str()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("perplexity"));
    assert_eq!(hub.seen().len(), before);
    // Offline and not cached: a clear error, exit code 1.
    let out = lors(
        &["fetch", "test/other"],
        &[
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn a_write_failure_mid_download_leaves_no_complete_looking_file() {
    // A full disk, simulated with a file-size limit on the child process: its writes past
    // 64 KiB fail (EFBIG, with SIGXFSZ ignored) as they would with ENOSPC.
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lors"));
    cmd.args(["fetch", "test/stories260K"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &hub.url)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: 64 * 1024,
                    rlim_max: 64 * 1024,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                Ok(())
            });
        }
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors") && err.contains("File too large"),
        "{err}"
    );
    let snapshot = home
        .path()
        .join(format!("hub/models--test--stories260K/snapshots/{COMMIT}"));
    assert!(!snapshot.join("model.safetensors").exists());
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn parquet_dataset_files_read_like_json_records() {
    use lors::data::Record;
    // Written by pyarrow (scripts/make_parquet_fixtures.py): zstd, two row groups.
    let hub = hub();
    hub.add_repo(
        "datasets/test/alpaca",
        vec![(
            "data/train-00000-of-00001.parquet".into(),
            std::fs::read(fixture("alpaca_sample.parquet")).unwrap(),
        )],
    );
    let cache = tempfile::tempdir().unwrap();
    let path = fetch_file(
        &HubRef::parse("hf://datasets/test/alpaca/data/train-00000-of-00001.parquet").unwrap(),
        &hub.settings(cache.path()),
        &mut |_| {},
    )
    .unwrap();
    let set = read_records(&path, DataFormat::Auto, false).unwrap();
    assert_eq!(set.records.len(), 40);
    assert_eq!(
        set.records[1],
        Record::Instruction {
            instruction: "Add 2 and 101.".into(),
            input: "2+101".into(),
            output: "103".into()
        }
    );
    assert_eq!(
        set.records[39],
        Record::Instruction {
            instruction: "Add 40 and 139.".into(),
            input: "40+139".into(),
            output: "179".into()
        }
    );
    // Snappy, a `text` column beside an integer one, and a null text in row 6.
    let text = fixture("text_sample.parquet");
    let err = read_records(&text, DataFormat::Auto, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_sample.parquet") && err.contains("row 6"),
        "{err}"
    );
    let set = read_records(&text, DataFormat::Auto, true).unwrap();
    assert_eq!((set.records.len(), set.skipped), (29, 1));
    assert_eq!(
        set.records[0],
        Record::Text("Story 0: once upon a time there was a number called 0.".into())
    );
    // Not parquet at all.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.parquet");
    std::fs::write(&bad, b"{\"text\": \"json, not parquet\"}\n").unwrap();
    let err = read_records(&bad, DataFormat::Auto, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.parquet") && err.contains("parquet"),
        "{err}"
    );
    // A row the reader cannot decode (a fuzzed file) is an error even when skipping bad
    // records: the reader reports it for ever, which once made this loop never end.
    let damaged = fixture("damaged_rows.parquet");
    let err = read_records(&damaged, DataFormat::Auto, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 1") && err.contains("Parquet error"),
        "{err}"
    );
}

#[test]
fn a_profile_trains_a_hub_model_on_a_hub_dataset_file_and_resumes_offline() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().join("hf");
    let profile = home.path().join("hub.toml");
    std::fs::write(
        &profile,
        format!(
            r#"
[model]
path = "test/stories260K"
[data]
train = "hf://datasets/test/stories/data/valid.jsonl"
valid_fraction = 0.1
seq_len = 64
[adapter]
rank = 2
[train]
max_steps = 2
batch_size = 2
output_dir = "{}"
run_name = "from-hub"
"#,
            home.path().join("runs").display()
        ),
    )
    .unwrap();
    let env = [
        ("HF_HOME", hf_home.to_str().unwrap()),
        ("HF_ENDPOINT", hub.url.as_str()),
    ];
    let out = lors(&["train", "--profile", profile.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = home.path().join("runs/from-hub");
    // The recorded profile keeps the hub ids (not a path under the working directory).
    let recorded = lors::train::Profile::load(&run.join("profile.toml"), &[]).unwrap();
    assert_eq!(recorded.model.path, PathBuf::from("test/stories260K"));
    assert_eq!(
        recorded.data.train,
        PathBuf::from("hf://datasets/test/stories/data/valid.jsonl")
    );
    assert!(file_requests(&hub.seen())
        .iter()
        .any(|r| r == "valid.jsonl"));
    // Offline, resuming reads both from the cache.
    let before = hub.seen().len();
    let out = lors(
        &["train", "--resume", run.to_str().unwrap()],
        &[
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hub.seen().len(), before);
}

/// `lors eval --task-data TASK=hf://datasets/...` fetches a task's parquet file (nested
/// columns, as the hub serves ARC) and scores it.
#[test]
fn task_files_come_from_the_hub() {
    let hub = hub();
    hub.add_repo(
        "datasets/test/arc",
        vec![(
            "ARC-Easy/test-00000-of-00001.parquet".into(),
            std::fs::read(fixture("arc_easy_sample.parquet")).unwrap(),
        )],
    );
    let home = tempfile::tempdir().unwrap();
    let model = shared().join("models/stories260K");
    let out = lors(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--task-data",
            "arc_easy=hf://datasets/test/arc/ARC-Easy/test-00000-of-00001.parquet",
            "--tasks",
            "arc_easy",
            "--limit",
            "3",
        ],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_ENDPOINT", hub.url.as_str()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("arc_easy") && stdout.contains("      3  "),
        "{stdout}"
    );
}
