//! The workbench without a terminal: key handling and validation of the state machine in
//! every view, rendering into ratatui's TestBackend at 80x24 and 120x40 (what each view
//! shows), and run-directory watching.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use lors::data::DataFormat;
use lors::eval::Task;
use lors::model::{LayerSparsity, Proj};
use lors::train::{ControlRequest, MetricRow, Profile, RunDir, RunState, Status};
use lors::tui::app::{App, Confirm, Effect, Modal, View};
use lors::tui::catalog::{self, SearchPaths};
use lors::tui::setup::{FieldId, Setup};
use lors::tui::theme::Theme;
use lors::tui::views::draw;
use lors::tui::watch::Watcher;
use lors::tui::TuiOptions;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared() -> PathBuf {
    repo().join("../shared")
}

fn search(runs: &Path) -> SearchPaths {
    SearchPaths {
        assets: repo().join("assets"),
        runs: runs.to_path_buf(),
        extra: vec![shared().join("models"), shared().join("data")],
        hf_cache: None,
    }
}

/// Carry out the inspections among `effects` synchronously (as the event loop does on
/// blocking threads) and return the other effects.
fn settle(app: &mut App, effects: Vec<Effect>) -> Vec<Effect> {
    let mut rest = Vec::new();
    let mut queue = std::collections::VecDeque::from(effects);
    while let Some(e) = queue.pop_front() {
        match e {
            Effect::InspectModel(p) => {
                let r = catalog::inspect_model_at(&p, &mut |_| {});
                queue.extend(app.set_model(&p, r));
            }
            Effect::InspectData(key, req) => {
                let r = catalog::inspect_data(&req);
                queue.extend(app.set_data(key, &req, r));
            }
            other => rest.push(other),
        }
    }
    rest
}

/// One key through the state machine, its inspections left in flight (returned).
fn press_unsettled(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn demo_app(runs: &Path) -> App {
    let mut p = Profile::load(&repo().join("profiles/demo.toml"), &[]).unwrap();
    p.resolve_paths(&repo());
    let mut app = App::new(p);
    let s = search(runs);
    app.set_catalog(
        catalog::list_profiles(&repo().join("profiles")),
        s.models(),
        s.datasets(),
    );
    let effects = app.inspections();
    assert!(settle(&mut app, effects).is_empty());
    app
}

/// The runs under `root` as a watcher reads them, and the workbench showing them.
fn watched_app(root: &Path) -> (Watcher, App) {
    let mut w = Watcher::new(root);
    w.refresh();
    let mut app = demo_app(root);
    app.set_runs(w.runs.clone());
    (w, app)
}

/// One key through the state machine, with its inspections settled.
fn press(app: &mut App, code: KeyCode) -> Vec<Effect> {
    let effects = app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
    settle(app, effects)
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        press(app, KeyCode::Char(c));
    }
}

/// Select the field of profile key `key` with Down, as a user would.
fn select_field(app: &mut App, key: &str) {
    for _ in 0..FieldId::all().len() {
        if app.setup.selected_field().key() == key {
            return;
        }
        press(app, KeyCode::Down);
    }
    panic!("no field {key}");
}

/// Write a sweep's `state.json`, dated `seconds` ahead so that a watcher sees it changed
/// (a larger `seconds` for each later write within the same second).
fn write_sweep_state(dir: &Path, state: &lors::sweep::SweepState, seconds: u64) {
    let path = dir.join("state.json");
    std::fs::write(&path, serde_json::to_string(state).unwrap()).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(seconds);
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(later).unwrap();
}

fn value(app: &App, id: FieldId) -> String {
    app.setup.value(id).to_string()
}

#[test]
fn views_cycle_and_help_opens_and_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    assert_eq!(app.view, View::Setup);
    for want in [
        View::Run,
        View::Runs,
        View::Sweeps,
        View::Profiles,
        View::Setup,
    ] {
        press(&mut app, KeyCode::Tab);
        assert_eq!(app.view, want);
    }
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.view, View::Profiles);
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(app.view, View::Setup);
    press(&mut app, KeyCode::Char('5'));
    assert_eq!(app.view, View::Profiles);
    press(&mut app, KeyCode::Char('4'));
    assert_eq!(app.view, View::Sweeps);
    press(&mut app, KeyCode::Char('?'));
    assert_eq!(app.modal, Some(Modal::Help));
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(app.modal, None);
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit);
}

#[test]
fn setup_edits_validates_and_launches() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    assert_eq!(app.setup.error, None, "the demo profile is valid");
    let Some(Ok(d)) = app.setup.data.first().map(|(_, d)| d.clone()) else {
        panic!("the demo data was not counted: {:?}", app.setup.data)
    };
    assert_eq!(d.format, "text");
    assert!(
        d.records > 0 && d.tokens > d.records && d.sequences > 0,
        "{d:?}"
    );
    select_field(&mut app, "adapter.method");
    press(&mut app, KeyCode::Right);
    assert_eq!(value(&app, FieldId::METHOD), "lors-exact");
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Left);
    assert_eq!(value(&app, FieldId::METHOD), "lora");
    // A rank larger than the model allows is shown inline and blocks the launch.
    select_field(&mut app, "adapter.rank");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Backspace);
    type_text(&mut app, "100");
    press(&mut app, KeyCode::Enter);
    let err = app.setup.error.clone().expect("rank 100 is invalid");
    assert!(err.contains("rank 100") && err.contains("(32)"), "{err}");
    assert!(press(&mut app, KeyCode::Char('l')).is_empty());
    assert!(app.notice.as_deref().unwrap().starts_with("cannot launch"));
    // Esc abandons an edit; a bad number names its key.
    press(&mut app, KeyCode::Enter);
    type_text(&mut app, "x");
    press(&mut app, KeyCode::Esc);
    assert_eq!(value(&app, FieldId::RANK), "100");
    select_field(&mut app, "train.max_steps");
    press(&mut app, KeyCode::Enter);
    type_text(&mut app, "abc");
    press(&mut app, KeyCode::Enter);
    let err = app.setup.error.clone().unwrap();
    assert!(
        err.contains("expected usize in `train.max_steps`") && !err.contains('\n'),
        "one readable line: {err}"
    );
    select_field(&mut app, "train.max_steps");
    press(&mut app, KeyCode::Enter);
    for _ in 0..6 {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "7");
    press(&mut app, KeyCode::Enter);
    select_field(&mut app, "adapter.rank");
    press(&mut app, KeyCode::Enter);
    for _ in 0..3 {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "2");
    press(&mut app, KeyCode::Enter);
    // Target modules are a comma list.
    select_field(&mut app, "adapter.target_modules");
    press(&mut app, KeyCode::Enter);
    for _ in 0..80 {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "q_proj, v_proj");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.setup.error, None);
    let effects = press(&mut app, KeyCode::Char('l'));
    let [Effect::Launch(p)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (p.adapter.rank, p.train.max_steps, p.adapter.method.name()),
        (2, Some(7), "lora")
    );
    assert_eq!(p.adapter.target_modules, [Proj::Q, Proj::V]);
    assert_eq!(p.prune, None);
    assert_eq!(app.view, View::Run);
    // A seq_len the data cannot fill blocks the launch with the file's error.
    press(&mut app, KeyCode::Char('1'));
    select_field(&mut app, "data.seq_len");
    press(&mut app, KeyCode::Enter);
    type_text(&mut app, "000000");
    press(&mut app, KeyCode::Enter);
    let err = app.setup.error.clone().unwrap();
    assert!(
        err.contains("data.train") && err.contains("too little text"),
        "{err}"
    );
}

/// `l` pressed while the Setup's data check is in flight waits for it: an invalid value it
/// finds blocks the launch, a valid one launches when its check arrives; a second launch of
/// the same profile is refused while the first run is starting.
#[test]
fn a_launch_waits_for_the_checks_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    select_field(&mut app, "data.seq_len");
    press(&mut app, KeyCode::Enter);
    type_text(&mut app, "000000");
    let checks = press_unsettled(&mut app, KeyCode::Enter);
    assert!(!checks.is_empty());
    let s = render(&app, 80, 24, true);
    assert!(
        s.contains("checking the data... (l launches once it passes)") && !s.contains("ready"),
        "not ready while a check is in flight:\n{s}"
    );
    assert!(press_unsettled(&mut app, KeyCode::Char('l')).is_empty());
    assert_eq!(
        app.notice.as_deref(),
        Some("launching once the data is checked...")
    );
    assert!(settle(&mut app, checks).is_empty(), "the data is too short");
    let notice = app.notice.clone().unwrap();
    assert!(
        notice.starts_with("cannot launch") && notice.contains("too little text"),
        "{notice}"
    );
    press(&mut app, KeyCode::Enter);
    for _ in 0..10 {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "32");
    let checks = press_unsettled(&mut app, KeyCode::Enter);
    assert!(press_unsettled(&mut app, KeyCode::Char('l')).is_empty());
    let effects = settle(&mut app, checks);
    let [Effect::Launch(p)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(p.data.seq_len, 32);
    app.starting = Some((p.clone(), tmp.path().join("starting-run")));
    press(&mut app, KeyCode::Char('1'));
    assert!(press(&mut app, KeyCode::Char('l')).is_empty());
    assert_eq!(
        app.notice.as_deref(),
        Some("already launching this profile: wait for its run")
    );
}

#[test]
fn setup_picks_models_and_data_detects_sparsity_and_offers_pruning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    let labels: Vec<&str> = app.models.iter().map(|c| c.label.as_str()).collect();
    for want in [
        "demo-model",
        "stories260K",
        "stories260K-wanda-50",
        "stories260K-wanda-2of4",
    ] {
        assert!(labels.iter().any(|l| l.ends_with(want)), "{labels:?}");
    }
    assert!(app
        .datasets
        .iter()
        .any(|c| c.label.ends_with("tinystories-synth-valid.jsonl")));
    // The demo model: unstructured 50%.
    match &app.setup.model {
        Some(Ok(m)) => {
            assert_eq!(m.pattern(), "unstructured 50.0% sparse");
            assert!(!m.is_dense());
        }
        other => panic!("{other:?}"),
    }
    // Pick the 2:4 model: typing filters the list (fuzzy, best first), Enter takes the entry
    // under the cursor; typed letters are never commands (`l` would launch in Setup).
    select_field(&mut app, "model.path");
    press(&mut app, KeyCode::Enter);
    assert!(
        matches!(app.modal, Some(Modal::Picker(_))),
        "a picker opens on a path field"
    );
    for c in "wanda2of4".chars() {
        assert!(press(&mut app, KeyCode::Char(c)).is_empty());
    }
    let Some(Modal::Picker(picker)) = app.modal.clone() else {
        panic!("typing keeps the picker open")
    };
    let shown = picker.shown();
    assert!(
        shown[0].label.ends_with("stories260K-wanda-2of4"),
        "{shown:?}"
    );
    assert!(shown.len() < picker.items.len(), "the filter leaves fewer");
    assert_eq!(picker.selected, 0);
    // The picker read every listed model's sparsity as it opened, and says it per entry.
    let screen = render(&app, 120, 40, true);
    let want = "stories260K-wanda-2of4 [search] 2:4, 1.1 MiB";
    assert!(screen.contains(want), "lacks {want:?}:\n{screen}");
    let dense = picker
        .items
        .iter()
        .find(|c| c.label.ends_with("models/stories260K"))
        .expect("the dense model is listed");
    match app.inspected.get(&dense.path).map(|i| &i.result) {
        Some(Some(Ok(m))) => assert!(m.is_dense()),
        other => panic!("{other:?}"),
    }
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.modal, None);
    assert!(value(&app, FieldId::MODEL).ends_with("stories260K-wanda-2of4"));
    match &app.setup.model {
        Some(Ok(m)) => {
            assert_eq!(m.pattern(), "2:4");
            assert_eq!(m.config.hidden_size, 64);
            assert!(
                m.parameters > 250_000 && m.parameters < 300_000,
                "{}",
                m.parameters
            );
        }
        other => panic!("{other:?}"),
    }
    // The dense model warns and offers the prune step.
    let dense = shared().join("models/stories260K");
    select_field(&mut app, "model.path");
    press(&mut app, KeyCode::Enter);
    let picked = |app: &App| match &app.modal {
        Some(Modal::Picker(p)) => (p.items.len(), p.selected),
        other => panic!("no picker: {other:?}"),
    };
    // A typed path is the entry after the matches; Down stops there (no wrap to the top).
    type_text(&mut app, dense.to_str().unwrap());
    let n = picked(&app).0;
    for _ in 0..n + 3 {
        press(&mut app, KeyCode::Down);
    }
    let Some(Modal::Picker(picker)) = app.modal.clone() else {
        panic!("no picker")
    };
    assert_eq!(picker.selected, picker.shown().len(), "on the typed entry");
    assert_eq!(picker.filter.value(), dense.to_str().unwrap());
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.modal, None);
    assert_eq!(value(&app, FieldId::MODEL), dense.to_str().unwrap());
    assert!(matches!(&app.setup.model, Some(Ok(m)) if m.is_dense()));
    let s = render(&app, 120, 40, false);
    assert!(s.contains("DENSE model"), "{s}");
    press(&mut app, KeyCode::Char('P'));
    assert_eq!(value(&app, FieldId::PRUNE_METHOD), "wanda");
    let p = app.setup.profile(&app.base).unwrap();
    let prune = p.prune.expect("a prune step");
    assert_eq!(prune.method.to_string(), "wanda");
    assert_eq!(prune.calib.as_deref(), Some(p.data.train.as_path()));
    assert_eq!(prune.seq_len, p.data.seq_len);
    let s = render(&app, 120, 40, false);
    assert!(s.contains("prune step: wanda unstructured 0.5"), "{s}");
    assert!(!s.contains("DENSE model"), "{s}");
    // Back to none: no prune section.
    select_field(&mut app, "prune.method");
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Left);
    assert_eq!(value(&app, FieldId::PRUNE_METHOD), "none");
    assert_eq!(app.setup.profile(&app.base).unwrap().prune, None);
    // Clearing the validation file drops it from the launched profile (the base has one).
    assert!(app.base.data.valid.is_some());
    let kept = value(&app, FieldId::VALID_DATA);
    app.setup.set(FieldId::VALID_DATA, "");
    assert_eq!(app.setup.profile(&app.base).unwrap().data.valid, None);
    app.setup.set(FieldId::VALID_DATA, &kept);
    assert!(app.setup.profile(&app.base).unwrap().data.valid.is_some());
    // The save popup names the folder profiles go to (`--profiles-dir`).
    app.profiles_dir = "/srv/team-profiles".into();
    press(&mut app, KeyCode::Char('w'));
    let s = render(&app, 120, 40, false);
    assert!(
        s.contains("save profile as /srv/team-profiles/<name>.toml"),
        "{s}"
    );
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.modal, None);
    // A missing model is an inline error that blocks the launch.
    select_field(&mut app, "model.path");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.modal, None);
    app.setup.set(FieldId::MODEL, "/nonexistent/model");
    let effects = app.inspections();
    settle(&mut app, effects);
    let err = app.setup.error.clone().unwrap();
    assert!(
        err.starts_with("model:") && err.contains("/nonexistent/model"),
        "{err}"
    );
    // A stale inspection result (for a model no longer in Setup) is ignored.
    app.set_model(&dense, catalog::inspect_model_at(&dense, &mut |_| {}));
    assert!(matches!(app.setup.model, Some(Err(_))));
}

/// The bundled sweep profile is listed as a sweep (not as invalid), and `l` on it launches
/// its sweep from the Profiles view; on a plain profile `l` says what to do instead.
#[test]
fn a_sweep_profile_launches_from_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    press(&mut app, KeyCode::Char('5'));
    let at = |app: &App, name: &str| app.profiles.iter().position(|p| p.name == name).unwrap();
    let sweep = at(&app, "sweep-demo");
    let summary = app.profiles[sweep].summary();
    assert!(
        summary.starts_with("sweep of 6 trials (l): lors r4"),
        "{summary}"
    );
    assert!(render(&app, 120, 40, false).contains("sweep of 6 trials"));
    app.selected_profile = sweep;
    let effects = press(&mut app, KeyCode::Char('l'));
    let [Effect::LaunchSweep(base, table, None)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(table["adapter"]["rank"].to_string(), "[4, 8]");
    assert_eq!(base.adapter.method.name(), "lors");
    assert_eq!(app.view, View::Sweeps);
    press(&mut app, KeyCode::Char('5'));
    app.selected_profile = at(&app, "demo");
    assert!(press(&mut app, KeyCode::Char('l')).is_empty());
    assert!(app
        .notice
        .as_deref()
        .unwrap()
        .contains("demo is not a sweep"));
}

#[test]
fn profiles_are_saved_listed_and_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let profiles = tmp.path().join("profiles");
    let opts = TuiOptions {
        runs_dir: tmp.path().join("runs"),
        profile: repo().join("profiles/demo.toml"),
        profiles_dir: profiles.clone(),
        search: search(&tmp.path().join("runs")),
        stats: None,
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut app = demo_app(tmp.path());
    app.set_catalog(Vec::new(), app.models.clone(), app.datasets.clone());
    press(&mut app, KeyCode::Char('5'));
    assert!(render(&app, 80, 24, false).contains("No saved profiles yet"));
    // Change the rank, then save the Setup as `quick`.
    press(&mut app, KeyCode::Char('1'));
    select_field(&mut app, "adapter.rank");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Backspace);
    type_text(&mut app, "3");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Char('w'));
    assert!(matches!(app.modal, Some(Modal::Naming(_))));
    type_text(&mut app, "../evil");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(app
        .notice
        .as_deref()
        .unwrap()
        .contains("not a profile name"));
    press(&mut app, KeyCode::Char('w'));
    type_text(&mut app, "quick");
    let effects = press(&mut app, KeyCode::Enter);
    let [Effect::SaveProfile(name, p)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!((name.as_str(), p.adapter.rank), ("quick", 3));
    for e in effects {
        lors::tui::apply(&mut app, e, &opts, &tx);
    }
    let saved = Profile::load(&profiles.join("quick.toml"), &[]).unwrap();
    assert_eq!(saved.adapter.rank, 3);
    assert_eq!(app.profiles.len(), 1);
    // Saving under the same name asks first.
    press(&mut app, KeyCode::Char('w'));
    type_text(&mut app, "quick");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(matches!(&app.modal, Some(Modal::Confirm(Confirm::Overwrite(n, _))) if n == "quick"));
    assert!(matches!(
        press(&mut app, KeyCode::Char('y')).as_slice(),
        [Effect::SaveProfile(..)]
    ));
    // The list shows a summary; Enter loads it into Setup.
    press(&mut app, KeyCode::Char('5'));
    let s = render(&app, 80, 24, false);
    assert!(
        s.contains("quick") && s.contains("lors r3 gradient 60 steps, demo-model"),
        "{s}"
    );
    app.setup = lors::tui::setup::Setup::from_profile(&app.base);
    assert_eq!(value(&app, FieldId::RANK), "4");
    let effects = press(&mut app, KeyCode::Enter);
    assert!(effects.is_empty(), "inspections were settled: {effects:?}");
    assert_eq!(app.view, View::Setup);
    assert_eq!(value(&app, FieldId::RANK), "3");
    assert!(matches!(app.setup.model, Some(Ok(_))));
}

fn fake_run(
    root: &Path,
    name: &str,
    state: RunState,
    merged_density: f64,
    gpu: Option<lors::device::GpuMemory>,
) -> PathBuf {
    let mut p = Profile::load(&repo().join("profiles/demo.toml"), &[]).unwrap();
    p.resolve_paths(&repo());
    fake_run_of(&root.join(name), &p, state, merged_density, gpu, 2.75)
}

/// A run of `profile` in `dir` at step 3 of 10, evaluated once at `eval_loss`.
fn fake_run_of(
    dir: &Path,
    p: &Profile,
    state: RunState,
    merged_density: f64,
    gpu: Option<lors::device::GpuMemory>,
    eval_loss: f64,
) -> PathBuf {
    let run = RunDir::create(dir, p).unwrap();
    for step in 1..=3 {
        run.append_metric(&MetricRow::Train {
            step,
            loss: 4.0 - step as f64 * 0.5,
            lr: 0.01,
            grad_norm: 1.0,
            tokens_per_s: 1234.0,
            elapsed_s: step as f64,
            live_bytes: 1 << 20,
            peak_bytes: 2 << 20,
            step_peak_bytes: 1 << 20,
            rss_bytes: Some(40 << 20),
            gpu,
            exchange: None,
        })
        .unwrap();
    }
    run.append_metric(&MetricRow::Eval {
        step: 3,
        eval_loss,
        eval_ppl: eval_loss.exp(),
    })
    .unwrap();
    let layers = ["q_proj", "k_proj"]
        .iter()
        .enumerate()
        .map(|(i, n)| LayerSparsity {
            name: format!("model.layers.{i}.self_attn.{n}"),
            density_before: 0.5,
            density_after: if i == 1 { merged_density } else { 0.5 },
            pattern_preserved: i == 0 || merged_density == 0.5,
            nudged: 0,
            live_rank: Some(8 - 2 * i),
        })
        .collect();
    run.append_metric(&MetricRow::Sparsity { step: 3, layers })
        .unwrap();
    run.append_metric(&MetricRow::Checkpoint { step: 3 })
        .unwrap();
    run.write_status(&Status {
        state,
        step: 3,
        total_steps: 10,
        elapsed_s: 3.0,
        eta_s: Some(7.0),
        pid: 1,
        updated_at: 0.0,
        last_loss: Some(2.5),
        best_eval_loss: Some(2.75),
        message: Some("training".into()),
        error: None,
        control_ack: 0,
        slurm_job: None,
    })
    .unwrap();
    run.path
}

/// A fake run (as [`fake_run`]) whose status says it started at `started` (Unix seconds).
fn fake_run_started(root: &Path, name: &str, state: RunState, started: f64) -> PathBuf {
    let path = fake_run(root, name, state, 0.5, None);
    let run = RunDir::open(&path).unwrap();
    let mut status = run.read_status().unwrap();
    status.updated_at = started + status.elapsed_s;
    run.write_status(&status).unwrap();
    path
}

/// `R` in the Runs view resumes a stopped or crashed run (and shows it), and nothing else.
#[test]
fn runs_resume_only_stopped_or_crashed_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let stopped = fake_run(tmp.path(), "a-stopped", RunState::Stopped, 0.5, None);
    fake_run(tmp.path(), "b-finished", RunState::Finished, 0.5, None);
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    press(&mut app, KeyCode::Char('3'));
    assert_eq!(
        press(&mut app, KeyCode::Char('R')),
        vec![Effect::ResumeRun(stopped.clone())]
    );
    assert_eq!((app.view, app.focused.clone()), (View::Run, Some(stopped)));
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Down);
    assert!(press(&mut app, KeyCode::Char('R')).is_empty());
    assert_eq!(
        app.notice.as_deref(),
        Some("only a stopped or crashed run resumes")
    );
}

/// Re-attaching opens the Run view on the newest run still going, not the last by name;
/// with none going, on the newest.
#[test]
fn the_run_view_opens_on_the_running_run() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run_started(tmp.path(), "a-newest-finished", RunState::Finished, 300.0);
    let running = fake_run_started(tmp.path(), "b-running", RunState::Running, 200.0);
    fake_run_started(tmp.path(), "z-oldest-finished", RunState::Finished, 100.0);
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    assert_eq!(app.focused, Some(running.clone()));
    // Started while it runs, the workbench shows it.
    app.open_on_active_run();
    assert_eq!(app.view, View::Run);
    RunDir::open(&running)
        .unwrap()
        .write_status(&Status {
            state: RunState::Finished,
            ..RunDir::open(&running).unwrap().read_status().unwrap()
        })
        .unwrap();
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    assert_eq!(app.focused, Some(tmp.path().join("a-newest-finished")));
    app.open_on_active_run();
    assert_eq!(app.view, View::Setup, "nothing runs: Setup");
}

#[test]
fn run_and_runs_views_send_controls_and_confirm_destructive_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Running, 0.5, None);
    let other = fake_run(tmp.path(), "run-b", RunState::Finished, 0.93, None);
    let mut w = Watcher::new(tmp.path());
    assert!(w.refresh());
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    app.focused = Some(path.clone());
    app.view = View::Run;
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        vec![Effect::Control(path.clone(), ControlRequest::Pause)]
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('c')),
        vec![Effect::Control(path.clone(), ControlRequest::Checkpoint)]
    );
    assert!(
        press(&mut app, KeyCode::Char('m')).is_empty(),
        "not finished"
    );
    assert!(press(&mut app, KeyCode::Char('s')).is_empty());
    assert_eq!(app.modal, Some(Modal::Confirm(Confirm::Stop(path.clone()))));
    assert!(press(&mut app, KeyCode::Char('n')).is_empty());
    assert_eq!(app.modal, None);
    press(&mut app, KeyCode::Char('s'));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        vec![Effect::Control(path.clone(), ControlRequest::Stop)]
    );
    press(&mut app, KeyCode::Char('g'));
    assert!(app.log_scale);
    press(&mut app, KeyCode::Char('g'));
    press(&mut app, KeyCode::Char('z'));
    assert_eq!(app.zoom_last, Some(50));
    press(&mut app, KeyCode::Char('z'));
    // A paused run resumes with the same key; a finished one takes no controls but merges.
    app.runs[0].status.as_mut().unwrap().state = RunState::Paused;
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        vec![Effect::Control(path.clone(), ControlRequest::Resume)]
    );
    app.runs[0].status.as_mut().unwrap().state = RunState::Finished;
    assert!(press(&mut app, KeyCode::Char('p')).is_empty());
    assert_eq!(
        press(&mut app, KeyCode::Char('m')),
        vec![Effect::Merge(path.clone())]
    );
    // Runs: delete asks, Enter opens, Space marks for the overlay, r replays, e edits.
    app.view = View::Runs;
    press(&mut app, KeyCode::Char('d'));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        vec![Effect::Delete(path.clone())]
    );
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        (app.view, app.focused.clone()),
        (View::Run, Some(path.clone()))
    );
    app.view = View::Runs;
    press(&mut app, KeyCode::Char(' '));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char(' '));
    assert_eq!(app.marked.len(), 2);
    assert_eq!(
        press(&mut app, KeyCode::Char('r')),
        vec![Effect::Replay(other.clone())]
    );
    press(&mut app, KeyCode::Char(' '));
    assert_eq!(app.marked.len(), 1);
    press(&mut app, KeyCode::Char(' '));
    let effects = press(&mut app, KeyCode::Char('e'));
    assert!(effects.is_empty(), "inspections were settled: {effects:?}");
    assert_eq!(app.view, View::Setup);
    assert!(matches!(app.setup.model, Some(Ok(_))));
}

fn render(app: &App, w: u16, h: u16, ascii: bool) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| {
        draw(
            f,
            app,
            Theme {
                color: false,
                ascii,
            },
        )
    })
    .unwrap();
    let buf = term.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                + "\n"
        })
        .collect()
}

/// Confirm dialogs wrap to the screen: at 80x24 the question, what it acts on (a deletion's
/// whole path) and the keys that answer it are all on screen.
#[test]
fn confirm_dialogs_show_what_and_which_keys_at_80_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(
        tmp.path(),
        "run-with-a-long-name",
        RunState::Running,
        0.5,
        None,
    );
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    app.view = View::Run;
    let full = path.display().to_string();
    for (confirm, what) in [
        (
            Confirm::Stop(path.clone()),
            "Stop run-with-a-long-name? It checkpoints first.",
        ),
        (Confirm::Delete(path.clone()), full.as_str()),
    ] {
        app.modal = Some(Modal::Confirm(confirm));
        let s = render(&app, 80, 24, true);
        for want in [what, "y: yes", "any other key (n, Esc, Enter): no"] {
            assert!(s.contains(want), "lacks {want:?}:\n{s}");
        }
    }
}

#[test]
fn every_view_renders_what_it_must_at_80x24_and_120x40() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run(tmp.path(), "run-a", RunState::Running, 0.5, None);
    // A run on a GPU: the memory panel shows its pool and the device next to host memory.
    let gpu = lors::device::GpuMemory {
        used_bytes: 3 << 30,
        peak_bytes: 5 << 30,
        device_used_bytes: 6 << 30,
        device_total_bytes: 140 << 30,
    };
    fake_run(tmp.path(), "run-lora", RunState::Finished, 0.93, Some(gpu));
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    app.focused = Some(tmp.path().join("run-a"));
    for (width, height) in [(80, 24), (120, 40)] {
        let ascii = width == 80;
        let check = |app: &App, view: &str, wants: &[&str]| {
            let s = render(app, width, height, ascii);
            for want in wants {
                assert!(
                    s.contains(want),
                    "{width}x{height} {view} lacks {want:?}:\n{s}"
                );
            }
            if ascii {
                assert!(s.is_ascii(), "non-ASCII in {view}:\n{s}");
            }
        };
        app.view = View::Setup;
        check(
            &app,
            "Setup",
            &[
                "1:Setup",
                "[model]",
                "[data]",
                "q quit",
                "Llama 0.11M params F32",
                "unstructured 50.0% sparse",
                "data.train: ",
                "records (text)",
                "sequences of 64",
                "ready to launch",
            ],
        );
        app.view = View::Run;
        check(
            &app,
            "Run",
            &[
                "run-a",
                "running step 3/10",
                "ETA 7s",
                "* train  o valid",
                "tok/s 1234",
                "RSS  40.0 MiB",
                "best  2.7500",
                "step 3: eval loss 2.7500",
                "step 3: checkpoint saved",
                "running: training",
                "zero pattern kept on all 2 layers",
                "SoRA: 14 live ranks, 6..8/layer",
                "0.q_proj     0.500 -> 0.500 r8",
                "p pause",
            ],
        );
        app.focused = Some(tmp.path().join("run-lora"));
        check(
            &app,
            "Run (lora)",
            &[
                "finished step 3/10",
                "RSS  40.0 MiB",
                "GPU  3.0 GiB pk 5.0 GiB",
                "dev  6.0 GiB/140.0 GiB",
                "DRIFT: 1 of 2 layers",
                "1.k_proj     0.500 -> 0.930",
            ],
        );
        let finished = render(&app, width, height, ascii);
        assert!(
            !finished.contains("ETA"),
            "a finished run has no ETA:\n{finished}"
        );
        // Before the first step the header shows the initialisation's progress.
        app.focused = Some(tmp.path().join("run-a"));
        let status = app.runs[0].status.clone();
        let s = app.runs[0].status.as_mut().unwrap();
        s.state = RunState::Initializing;
        s.message = Some("gradient init: 3/14 layers".into());
        check(
            &app,
            "Run (init)",
            &["initializing: gradient init: 3/14 layers"],
        );
        app.runs[0].status = status;
        app.view = View::Runs;
        app.marked.clear();
        check(
            &app,
            "Runs",
            &["val/ppl", "run-a", "running", "lors", "2.750/15.64"],
        );
        app.marked = app.runs.iter().map(|r| r.path.clone()).collect();
        check(
            &app,
            "Runs overlay",
            &["loss of the marked runs: train (line), validation (points)"],
        );
        // Each marked run's symbol is the same in its table row and in the legend.
        let screen = render(&app, width, height, ascii);
        for name in ["run-a", "run-lora"] {
            let row = screen
                .lines()
                .find(|l| l.contains(&format!(" {name} ")))
                .unwrap();
            let symbol = row
                .trim_start_matches(['|', '│', ' '])
                .chars()
                .next()
                .unwrap();
            assert!(
                screen.contains(&format!("{symbol} {name}  ")),
                "{symbol:?} {name} in the legend:\n{screen}"
            );
        }
        app.view = View::Profiles;
        check(&app, "Profiles", &["demo", "lors r4"]);
        app.modal = Some(Modal::Help);
        check(
            &app,
            "help",
            &["load into Setup", "Profiles:", "quit (runs"],
        );
        app.view = View::Run;
        check(&app, "help", &["checkpoint now", "Run:"]);
        app.modal = None;
    }
    // Below 80x24 it says so instead of drawing a broken layout.
    assert!(render(&app, 40, 9, true).contains("terminal too small"));
    render(&app, 60, 16, true);
}

#[test]
fn the_watcher_reads_only_complete_metric_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-b", RunState::Running, 0.5, None);
    let mut w = Watcher::new(tmp.path());
    assert!(w.refresh());
    assert_eq!(w.runs[0].summary.train_curve.len(), 3);
    assert_eq!(w.runs[0].sparsity.as_ref().unwrap().1.len(), 2);
    assert!(!w.refresh(), "nothing changed");
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path.join("metrics.jsonl"))
        .unwrap();
    f.write_all(b"{\"kind\":\"eval\",\"step\":4,").unwrap();
    f.flush().unwrap();
    assert!(!w.refresh(), "a partial line is not read");
    f.write_all(b"\"eval_loss\":2.5,\"eval_ppl\":12.18}\n")
        .unwrap();
    f.flush().unwrap();
    assert!(w.refresh());
    assert_eq!(w.runs[0].summary.eval_curve.last(), Some(&(4, 2.5)));
}

/// Task rows in a run's metrics feed the Runs view's `acc` column and its ordering; `v` asks
/// to evaluate a finished run with tasks, and explains itself otherwise.
#[test]
fn runs_are_ordered_by_accuracy_and_evaluated_on_request() {
    use lors::eval::{Metric, Task, TaskScore, TaskSuite};
    use lors::train::EvalStage;
    let tmp = tempfile::tempdir().unwrap();
    let score = |task, acc| TaskScore {
        task,
        items: 10,
        acc: Metric {
            value: acc,
            stderr: Some(0.1),
        },
        acc_norm: None,
        seconds: 1.0,
    };
    let runs: Vec<PathBuf> = [(0.25, 0.5), (0.5, 0.75), (0.25, 0.25)]
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| {
            let path = fake_run(
                tmp.path(),
                &format!("run-{i}"),
                RunState::Finished,
                0.5,
                None,
            );
            let run = RunDir::open(&path).unwrap();
            for (task, acc) in [(Task::Rte, a), (Task::Boolq, b)] {
                for stage in [EvalStage::Before, EvalStage::After] {
                    let acc = if stage == EvalStage::Before { 0.1 } else { acc };
                    run.append_metric(&MetricRow::Task {
                        step: 3,
                        stage,
                        score: score(task, acc),
                    })
                    .unwrap();
                }
            }
            path
        })
        .collect();
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    assert_eq!(w.runs[1].mean_accuracy_after(), Some(0.625));
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    app.view = View::Runs;
    let order = |app: &App| app.runs.iter().map(|r| r.path.clone()).collect::<Vec<_>>();
    assert_eq!(order(&app), runs);
    press(&mut app, KeyCode::Char('o'));
    press(&mut app, KeyCode::Char('o'));
    assert_eq!(app.run_order.name(), "mean accuracy");
    assert_eq!(
        order(&app),
        vec![runs[1].clone(), runs[0].clone(), runs[2].clone()]
    );
    let screen = render(&app, 80, 24, true);
    assert!(
        screen.contains("acc") && screen.contains(".625"),
        "{screen}"
    );
    // Wide enough, a column per task (after training).
    let screen = render(&app, 120, 40, true);
    assert!(
        screen.contains("boolq") && screen.contains(" .750"),
        "{screen}"
    );
    // The demo profile has no [eval]: `v` explains; with tasks it starts a job.
    app.selected_run = 0;
    assert!(press(&mut app, KeyCode::Char('v')).is_empty());
    assert!(app.notice.as_deref().unwrap_or("").contains("[eval]"));
    let suite = TaskSuite {
        tasks: vec![Task::Rte],
        data_dir: Some(repo().join("assets/tasks")),
        ..TaskSuite::default()
    };
    app.base.eval = Some(suite.clone());
    assert_eq!(
        press(&mut app, KeyCode::Char('v')),
        vec![Effect::Evaluate(runs[1].clone(), Box::new(suite))]
    );
    // The Run view's Accuracy panel: before -> after per task.
    app.focused = Some(runs[1].clone());
    app.view = View::Run;
    let screen = render(&app, 80, 24, true);
    assert!(
        screen.contains("Accuracy") && screen.contains("rte           .100 -> .500"),
        "{screen}"
    );
}

/// A resume truncates the metrics back to its checkpoint and writes the later steps again:
/// the watcher rebuilds the curves (no step twice) and logs the earlier evaluation and
/// checkpoint lines once, not again.
#[test]
fn a_resume_does_not_repeat_earlier_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Running, 0.5, None);
    let mut w = Watcher::new(tmp.path());
    assert!(w.refresh());
    let run = RunDir::open(&path).unwrap();
    // Resumed from step 2: steps 3 onward are written again.
    run.truncate_metrics_to(Some(2)).unwrap();
    run.append_metric(&MetricRow::Train {
        step: 3,
        loss: 2.5,
        lr: 0.01,
        grad_norm: 1.0,
        tokens_per_s: 1234.0,
        elapsed_s: 3.0,
        live_bytes: 1 << 20,
        peak_bytes: 2 << 20,
        step_peak_bytes: 1 << 20,
        rss_bytes: Some(40 << 20),
        gpu: None,
        exchange: None,
    })
    .unwrap();
    for row in [
        MetricRow::Eval {
            step: 3,
            eval_loss: 2.75,
            eval_ppl: 2.75f64.exp(),
        },
        MetricRow::Checkpoint { step: 3 },
        MetricRow::Checkpoint { step: 4 },
    ] {
        run.append_metric(&row).unwrap();
    }
    assert!(w.refresh());
    let info = &w.runs[0];
    let count = |text: &str| info.events.iter().filter(|e| e.contains(text)).count();
    assert_eq!(count("step 3: eval loss 2.7500"), 1, "{:?}", info.events);
    assert_eq!(count("step 3: checkpoint saved"), 1, "{:?}", info.events);
    assert_eq!(count("step 4: checkpoint saved"), 1, "a new line is logged");
    let steps: Vec<usize> = info.summary.train_curve.iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 2, 3]);
}

/// Select the new-sweep form's field labelled `label`.
fn select_form_field(app: &mut App, label: &str) {
    for _ in 0..lors::tui::sweeps::FormField::ALL.len() {
        let form = app.board.form.as_ref().expect("the form is open");
        if form.selected_field().label().trim() == label {
            return;
        }
        press(app, KeyCode::Down);
    }
    panic!("no form field {label}");
}

/// Replace the text of the selected form field.
fn retype(app: &mut App, text: &str) {
    press(app, KeyCode::Enter);
    for _ in 0..40 {
        press(app, KeyCode::Backspace);
    }
    type_text(app, text);
    press(app, KeyCode::Enter);
}

/// A sweep defined in the Sweeps view's form is checked like a profile's `[sweep]`; on disk,
/// its trials are compared (sorted by any column), plotted three ways, promoted to a profile
/// and opened in Setup.
#[test]
fn the_sweeps_view_defines_compares_sorts_plots_and_promotes() {
    use lors::sweep::{Sweep, TrialState};
    use lors::tui::sweeps::{ChartMode, Column};
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let mut app = demo_app(runs);
    press(&mut app, KeyCode::Char('S'));
    assert_eq!(app.view, View::Sweeps);
    let form = app.board.form.clone().expect("S opens the form");
    assert_eq!(form.error, None, "the default sweep is valid");
    let s = render(&app, 80, 24, true);
    for want in [
        "axis 1",
        "< adapter.rank >",
        "< optim.lr >",
        "rungs (steps)",
        "ready: l launches",
    ] {
        assert!(s.contains(want), "{want:?}:\n{s}");
    }
    // A bad value is an error naming the swept key; the launch is refused.
    select_form_field(&mut app, "values");
    retype(&mut app, "2, many");
    let err = app.board.form.as_ref().unwrap().error.clone().unwrap();
    assert!(err.contains("sweep.adapter.rank"), "{err}");
    assert!(press(&mut app, KeyCode::Char('l')).is_empty());
    retype(&mut app, "2, 4");
    // The sweep can be named; a name must stay inside the runs folder.
    select_form_field(&mut app, "name");
    retype(&mut app, "../elsewhere");
    let err = app.board.form.as_ref().unwrap().error.clone().unwrap();
    assert!(
        err.contains("`name`") && err.contains("plain name"),
        "{err}"
    );
    retype(&mut app, "rank-vs-lr");
    let effects = press(&mut app, KeyCode::Char('l'));
    let [Effect::LaunchSweep(base, table, Some(name))] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(name, "rank-vs-lr");
    assert_eq!(table["adapter"]["rank"].to_string(), "[2, 4]");
    assert!(app.board.form.is_none());
    // What `lors sweep` would make of it, with three trials run part-way.
    let file = runs.join("sweep.toml");
    let text = lors::sweep::sweep_profile_text(base, table).unwrap();
    std::fs::write(&file, text).unwrap();
    let dir = runs.join("sweep-x");
    let mut sweep = Sweep::create(&file, &[], Some(&dir)).unwrap();
    assert_eq!(sweep.state.trials.len(), 6);
    let outcomes = [
        (TrialState::Finished, 2.4),
        (TrialState::StoppedEarly, 2.9),
        (TrialState::Running, 2.1),
    ];
    for (i, (state, loss)) in outcomes.into_iter().enumerate() {
        let p = sweep.trial_profile(i).unwrap();
        let run_state = match state {
            TrialState::Running => RunState::Running,
            _ => RunState::Stopped,
        };
        let record = &mut sweep.state.trials[i];
        fake_run_of(&record.run_dir, &p, run_state, 0.5, None, loss);
        record.state = state;
    }
    let state_json = serde_json::to_string(&sweep.state).unwrap();
    std::fs::write(dir.join("state.json"), state_json).unwrap();
    let mut w = Watcher::new(runs);
    w.refresh();
    assert_eq!(w.sweeps.len(), 1);
    app.set_runs(w.runs.clone());
    app.set_sweeps(w.sweeps.clone());
    let s = render(&app, 80, 24, true);
    for want in [
        "sweep-x: 2/6 done, 1 running, 1 stopped early",
        "rank",
        "lr",
        "stopped early",
        "tok/s",
        "2.100/8.2",
        "validation loss per step",
    ] {
        assert!(s.contains(want), "{want:?}:\n{s}");
    }
    // A running trial whose SLURM job still waits says so, with SLURM's reason.
    let mut queued = sweep.state.clone();
    queued.trials[2].job = Some(lors::sweep::runner::TrialJob {
        id: "41".into(),
        state: lors::slurm::JobState {
            state: "PENDING".into(),
            reason: Some("Resources".into()),
        },
        signalled: None,
    });
    write_sweep_state(&dir, &queued, 1);
    let mut w = Watcher::new(runs);
    w.refresh();
    app.set_sweeps(w.sweeps.clone());
    let s = render(&app, 120, 40, true);
    assert!(s.contains("PD Resources"), "{s}");
    write_sweep_state(&dir, &sweep.state, 2);
    let mut w = Watcher::new(runs);
    w.refresh();
    app.set_sweeps(w.sweeps.clone());
    // A trial that finished while no scheduler recorded it (state.json still says running)
    // shows as finished: its own run's status owns the truth.
    let running = RunDir::open(&sweep.state.trials[2].run_dir).unwrap();
    let status = running.read_status().unwrap();
    running
        .write_status(&Status {
            state: RunState::Finished,
            ..status.clone()
        })
        .unwrap();
    let mut w = Watcher::new(runs);
    w.refresh();
    app.set_runs(w.runs.clone());
    let s = render(&app, 80, 24, true);
    assert!(
        s.contains("sweep-x: 3/6 done, 0 running, 1 stopped early"),
        "{s}"
    );
    running.write_status(&status).unwrap();
    let mut w = Watcher::new(runs);
    w.refresh();
    app.set_runs(w.runs.clone());
    // The Runs view names the trial ASHA stopped as such, not as a user's stop.
    app.view = View::Runs;
    let s = render(&app, 80, 24, true);
    assert_eq!(s.matches("stopped early").count(), 1, "{s}");
    app.view = View::Sweeps;
    // Its scheduler (this test process, which set it up) is alive: nothing to resume. Once
    // the recorded process is gone, the title says so and R resumes it.
    assert!(press(&mut app, KeyCode::Char('R')).is_empty());
    assert_eq!(
        app.notice.as_deref(),
        Some("this sweep's lors sweep is running")
    );
    sweep.state.pid = None;
    write_sweep_state(&dir, &sweep.state, 3);
    w.refresh();
    app.set_sweeps(w.sweeps.clone());
    assert!(render(&app, 120, 40, true).contains("its lors sweep is gone: R resumes"));
    assert_eq!(
        press(&mut app, KeyCode::Char('R')),
        vec![Effect::ResumeSweep(dir.clone())]
    );
    // p writes the shown sweep's report (`lors report`, detached).
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        vec![Effect::Report(dir.clone())]
    );
    // Sort by best validation loss (s steps through the columns), then the other way.
    while app.board.sort != Some(Column::BestVal) {
        press(&mut app, KeyCode::Char('s'));
    }
    let sweep_info = app.board.current(&app.sweeps).unwrap().clone();
    let order = |app: &App| -> Vec<usize> {
        let rows = app.board.rows(&sweep_info, &app.runs);
        rows.iter().map(|r| r.record.trial.index).collect()
    };
    assert_eq!(&order(&app)[..3], [2, 0, 1], "best first, untried last");
    assert!(render(&app, 80, 24, true).contains("val/ppl^"));
    press(&mut app, KeyCode::Char('S'));
    assert_eq!(&order(&app)[..3], [1, 0, 2]);
    press(&mut app, KeyCode::Char('S'));
    // The train curves with EMA smoothing, then the parameter plot.
    press(&mut app, KeyCode::Char(']'));
    assert_eq!(app.board.chart, ChartMode::Train);
    assert!(render(&app, 80, 24, true).contains("train loss, EMA 0.5"));
    press(&mut app, KeyCode::Char('c'));
    assert!(render(&app, 80, 24, true).contains("best val loss against adapter.rank"));
    press(&mut app, KeyCode::Char('a'));
    assert!(render(&app, 80, 24, true).contains("best val loss against optim.lr"));
    // Promote the winner (the selected first row) to a profile, and open it in Setup.
    let winner = sweep.trial_profile(2).unwrap();
    press(&mut app, KeyCode::Char('w'));
    type_text(&mut app, "best");
    let effects = press(&mut app, KeyCode::Enter);
    let [Effect::SaveProfile(name, p)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(name, "best");
    assert_eq!(
        (p.adapter.rank, p.optim.lr),
        (winner.adapter.rank, winner.optim.lr)
    );
    press(&mut app, KeyCode::Char('e'));
    assert_eq!(app.view, View::Setup);
    assert_eq!(value(&app, FieldId::RANK), winner.adapter.rank.to_string());
}

/// A replay's verdict and a finished merge reach the run's events and title, and, when they
/// appear while the workbench watches, the footer; what a run already held when first read is
/// not news.
#[test]
fn replay_verdicts_and_finished_merges_are_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let original = fake_run(tmp.path(), "a", RunState::Finished, 0.5, None);
    let replay = fake_run(
        tmp.path(),
        "a-replay-1204-2215-07",
        RunState::Finished,
        0.5,
        None,
    );
    let run = RunDir::open(&replay).unwrap();
    run.write_replay(&lors::train::ReplayVerdict {
        original: original.clone(),
        rows: 6,
        difference: None,
    })
    .unwrap();
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    assert!(w.take_news().is_empty(), "held at the first read: not news");
    let info = w.runs.iter().find(|r| r.path == replay).unwrap();
    assert!(info
        .events
        .iter()
        .any(|e| e == "replay: same bits as a (6 metric rows)"));

    // A merge of `a` finishes while the workbench watches.
    let merged = RunDir::open(&original).unwrap().merged_path();
    std::fs::create_dir_all(&merged).unwrap();
    let report = lors::model::SparsityReport {
        method: "lors".into(),
        density_before: 0.5,
        density_after: 0.5,
        pattern_preserved: true,
        layers: Vec::new(),
    };
    std::fs::write(
        merged.join("sparsity.json"),
        serde_json::to_string(&report).unwrap(),
    )
    .unwrap();
    assert!(w.refresh());
    let news = w.take_news();
    assert_eq!(news.len(), 1, "{news:?}");
    assert!(
        news[0].starts_with("a: merge finished:") && news[0].contains("zeros kept"),
        "{news:?}"
    );
    assert!(!w.refresh() && w.take_news().is_empty(), "said once");

    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    app.focused = Some(replay.clone());
    press(&mut app, KeyCode::Char('2'));
    let screen = render(&app, 120, 40, false);
    assert!(
        screen.contains("a-replay-1204-2215-07 · replay: same bits as a"),
        "{screen}"
    );
}

/// The Runs view lists the newest run first, and from 120 columns on adds each run's model,
/// progress and local start time.
#[test]
fn runs_are_newest_first_with_model_progress_and_start_when_wide() {
    // As the snapshot test does (both read local times; one zone for the whole binary).
    std::env::set_var("TZ", "UTC");
    let tmp = tempfile::tempdir().unwrap();
    fake_run_started(tmp.path(), "a-old", RunState::Finished, 1_000_000.0);
    fake_run_started(tmp.path(), "b-new", RunState::Running, 3_000_000.0);
    fake_run_started(tmp.path(), "c-mid", RunState::Stopped, 2_000_000.0);
    let (_, mut app) = watched_app(tmp.path());
    let names: Vec<&str> = app.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b-new", "c-mid", "a-old"]);
    app.view = View::Runs;
    let narrow = render(&app, 80, 24, true);
    assert!(
        narrow.contains("Runs (by newest") && !narrow.contains("started"),
        "{narrow}"
    );
    let wide = render(&app, 120, 40, true);
    let model = app
        .base
        .model
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let start = chrono::DateTime::from_timestamp(3_000_000, 0)
        .unwrap()
        .with_timezone(&chrono::Local)
        .format("%m-%d %H:%M")
        .to_string();
    let row = wide.lines().find(|l| l.contains("b-new")).unwrap();
    for want in [model.as_str(), "30%", start.as_str()] {
        assert!(row.contains(want), "{want:?} in {row:?}\n{wide}");
    }
    assert!(wide.contains("model") && wide.contains("started"), "{wide}");
}

/// `o` in the Run view shows the last lines of the run's process output: its newest resume
/// log, else the workbench launch's; a progress bar's last state is its last piece.
#[test]
fn the_run_view_tails_the_run_output() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Running, 0.5, None);
    let launch = tmp.path().join(".launch");
    std::fs::create_dir_all(&launch).unwrap();
    std::fs::write(
        launch.join("run-a.log"),
        "loading\n[####      ] 3/10 steps\r[#####     ] 4/10 steps\n",
    )
    .unwrap();
    let (mut w, mut app) = watched_app(tmp.path());
    app.focused = Some(path.clone());
    press(&mut app, KeyCode::Char('2'));
    assert!(render(&app, 80, 24, true).contains("Events (o: output)"));
    press(&mut app, KeyCode::Char('o'));
    let screen = render(&app, 120, 40, true);
    assert!(
        screen.contains("Output (o: events)") && screen.contains("4/10 steps"),
        "{screen}"
    );
    // A resume writes its own log, newer: that one is shown.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(path.join("resume-1.log"), "resuming from step-000003\n").unwrap();
    w.refresh();
    app.set_runs(w.runs.clone());
    let screen = render(&app, 120, 40, true);
    assert!(screen.contains("resuming from step-000003"), "{screen}");
}

/// While a process works on a run, the Run view shows its CPU use and resident memory as the
/// OS reads them now; a run no process works on shows none.
#[test]
fn the_run_view_reads_the_run_process_cpu_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Running, 0.5, None);
    // This test process stands for the run's.
    let run = RunDir::open(&path).unwrap();
    let status = run.read_status().unwrap();
    run.write_status(&Status {
        pid: std::process::id(),
        ..status
    })
    .unwrap();
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let first = w.runs[0].process.expect("a live process is read");
    assert!(first.rss_bytes.unwrap() > 1 << 20, "{first:?}");
    let busy_until = std::time::Instant::now() + std::time::Duration::from_millis(1100);
    let mut x = 0u64;
    while std::time::Instant::now() < busy_until {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    w.refresh();
    let cpu = w.runs[0]
        .process
        .unwrap()
        .cpu_percent
        .expect("two readings a second apart");
    assert!(cpu > 20.0 && cpu < 100.0 * 64.0, "{cpu}");
    let mut app = demo_app(tmp.path());
    app.set_runs(w.runs.clone());
    app.focused = Some(path.clone());
    press(&mut app, KeyCode::Char('2'));
    let screen = render(&app, 120, 40, true);
    assert!(
        screen.contains("now  CPU") && screen.contains("%"),
        "{screen}"
    );
    // The GPU line says plainly that a CPU build has none (CUDA builds read NVML).
    #[cfg(not(feature = "cuda"))]
    assert!(screen.contains("GPU  none (CPU build)"), "{screen}");
    // Once the run has ended, no process reading.
    run.write_status(&Status {
        state: RunState::Finished,
        ..run.read_status().unwrap()
    })
    .unwrap();
    w.refresh();
    assert!(w.runs[0].process.is_none() && w.runs[0].gpus.is_none());
}

/// Long run names that differ only at the end (their start time) stay apart in the Runs
/// table at 60 and 80 columns; 60x20 keeps the columns that matter; below 60x20 the screen
/// says so.
#[test]
fn narrow_terminals_keep_runs_apart_and_say_when_too_small() {
    let tmp = tempfile::tempdir().unwrap();
    let names = [
        "stories260K-lors-r8-1204-2215-07",
        "stories260K-lors-r8-1204-2216-41",
    ];
    for name in names {
        fake_run(tmp.path(), name, RunState::Finished, 0.5, None);
    }
    let (_, mut app) = watched_app(tmp.path());
    app.view = View::Runs;
    for (width, height) in [(60, 20), (80, 24)] {
        let screen = render(&app, width, height, true);
        let rows: Vec<&str> = screen.lines().filter(|l| l.contains("finished")).collect();
        assert_eq!(rows.len(), 2, "{screen}");
        let name_cell = |row: &str| row.split_whitespace().nth(1).unwrap().to_string();
        assert_ne!(name_cell(rows[0]), name_cell(rows[1]), "{screen}");
        assert!(
            rows[0].contains("15-07") || rows[0].contains("16-41"),
            "{screen}"
        );
        assert!(
            screen.contains("val/ppl") && screen.contains("2.750/15.64"),
            "{screen}"
        );
    }
    assert!(!render(&app, 60, 20, true).contains("too small"));
    assert!(render(&app, 59, 20, true).contains("terminal too small (59x20); 60x20 or more"));
    assert!(render(&app, 60, 19, true).contains("terminal too small"));
}

/// The settings beyond the method's reach the profile from Setup: the run's name (empty:
/// none, even over a base profile's), evaluation and checkpoint cadence, the merged export,
/// the compute dtype (checked against the device), gradient clipping, the validation split
/// and Flat-LoRA.
#[test]
fn setup_reaches_run_name_cadence_export_dtype_and_flat_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    let edit = |app: &mut App, label: &str, text: &str| {
        select_field(app, label);
        press(app, KeyCode::Enter);
        for _ in 0..20 {
            press(app, KeyCode::Backspace);
        }
        type_text(app, text);
        press(app, KeyCode::Enter);
    };
    edit(&mut app, "train.run_name", "my-run");
    edit(&mut app, "train.eval_every", "7");
    edit(&mut app, "train.save_every", "9");
    edit(&mut app, "optim.grad_clip", "0.5");
    edit(&mut app, "data.valid_fraction", "0.2");
    edit(&mut app, "adapter.flat_rho", "0.1");
    // Left/Right flip a yes/no setting from the base profile's.
    let (merge, flat) = (app.base.train.merge_at_end, app.base.adapter.flat);
    for label in ["train.merge_at_end", "adapter.flat"] {
        select_field(&mut app, label);
        press(&mut app, KeyCode::Right);
    }
    let p = app.setup.profile(&app.base).unwrap();
    assert_eq!(p.train.run_name.as_deref(), Some("my-run"));
    assert_eq!((p.train.eval_every, p.train.save_every), (7, 9));
    assert_eq!((p.train.merge_at_end, p.adapter.flat), (!merge, !flat));
    assert_eq!(
        (p.optim.grad_clip, p.data.valid_fraction, p.adapter.flat_rho),
        (0.5, 0.2, 0.1)
    );
    // bf16 does not compute on the CPU: the form says so, naming the key.
    select_field(&mut app, "model.dtype");
    while value(&app, FieldId::DTYPE) != "bf16" {
        press(&mut app, KeyCode::Right);
    }
    let err = app.setup.error.clone().expect("bf16 on the CPU");
    assert!(
        err.contains("model.dtype") && err.contains("on the CPU"),
        "{err}"
    );
    while value(&app, FieldId::DTYPE) != "f32" {
        press(&mut app, KeyCode::Right);
    }
    // A cleared name means none, also over a base profile that names its runs.
    app.base.train.run_name = Some("base-name".into());
    edit(&mut app, "train.run_name", "");
    assert_eq!(app.setup.profile(&app.base).unwrap().train.run_name, None);
    // Keys the old form lacked: betas, format and packing, evaluation batches, [eval].
    edit(&mut app, "optim.betas", "0.9, 0.95");
    edit(&mut app, "train.eval_batches", "3");
    edit(&mut app, "eval.tasks", "arc_easy,hellaswag");
    edit(&mut app, "eval.limit", "5");
    edit(&mut app, "eval.data", "arc_easy=a.jsonl, hellaswag=h.jsonl");
    for (key, want) in [("data.format", "text"), ("data.packing", "pad")] {
        select_field(&mut app, key);
        while app.setup.value(FieldId::of(key).unwrap()) != want {
            press(&mut app, KeyCode::Right);
        }
    }
    let p = app.setup.profile(&app.base).unwrap();
    assert_eq!(p.optim.betas, [0.9, 0.95]);
    assert_eq!(p.train.eval_batches, Some(3));
    let eval = p.eval.expect("tasks make an [eval] section");
    assert_eq!(eval.tasks, [Task::ArcEasy, Task::Hellaswag]);
    assert_eq!(eval.limit, Some(5));
    assert_eq!(eval.data[&Task::Hellaswag], PathBuf::from("h.jsonl"));
    assert_eq!(p.data.format, DataFormat::Text);
    // Clearing the tasks drops the section; a bad value names its key.
    edit(&mut app, "eval.tasks", "");
    assert_eq!(app.setup.profile(&app.base).unwrap().eval, None);
    edit(&mut app, "optim.betas", "0.9, x");
    let err = app.setup.error.clone().expect("a word in betas");
    assert!(err.contains("optim.betas"), "{err}");
}

/// Setup lists every key of a profile (but the runs folder, which the workbench owns), in
/// sections PgUp/PgDn move between, and a profile read into the form comes back unchanged.
#[test]
fn every_profile_key_is_a_setup_field_and_profiles_round_trip() {
    let mut keys: Vec<&str> = lors::train::schema::profile_keys()
        .iter()
        .map(|k| k.key.as_str())
        .filter(|k| *k != "train.output_dir")
        .collect();
    let mut fields: Vec<&str> = FieldId::all().iter().map(|f| f.key()).collect();
    keys.sort();
    fields.sort();
    assert_eq!(fields, keys);
    let tmp = tempfile::tempdir().unwrap();
    let mut app = demo_app(tmp.path());
    let mut base = app.base.clone();
    assert_eq!(Setup::from_profile(&base).profile(&base).unwrap(), base);
    // With the optional sections and keys a saved profile leaves out.
    base.prune = Some(toml::from_str("method = \"wanda\"\ncalib = \"c.jsonl\"").unwrap());
    base.eval = Some(toml::from_str("tasks = [\"boolq\"]\nlimit = 4\ndata_dir = \"t\"").unwrap());
    base.adapter.flat = true;
    base.adapter.frozen_blocks = 1;
    base.train.max_steps = None;
    base.train.epochs = Some(2);
    assert_eq!(Setup::from_profile(&base).profile(&base).unwrap(), base);
    // PgDn walks the sections' first keys; PgUp comes back.
    let mut firsts = Vec::new();
    for _ in 0..7 {
        firsts.push(app.setup.selected_field().key());
        press(&mut app, KeyCode::PageDown);
    }
    assert_eq!(
        firsts,
        [
            "model.path",
            "data.train",
            "adapter.method",
            "optim.name",
            "train.max_steps",
            "prune.method",
            "eval.tasks"
        ]
    );
    assert_eq!(app.setup.selected_field().key(), "model.path");
    press(&mut app, KeyCode::PageUp);
    assert_eq!(app.setup.selected_field().key(), "eval.tasks");
}

/// A run keeps its overlay symbol whatever the table's order and the other marks, and the
/// log scale labels its axis in loss, not in ln(loss).
#[test]
fn overlay_symbols_are_stable_and_log_axes_read_in_units() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["run-a", "run-b", "run-c"] {
        fake_run(tmp.path(), name, RunState::Finished, 0.5, None);
    }
    let (_, mut app) = watched_app(tmp.path());
    app.view = View::Runs;
    let symbol_of = |app: &App, name: &str| -> char {
        let screen = render(app, 120, 40, true);
        let row = screen
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap();
        row.trim_start_matches(['|', ' ']).chars().next().unwrap()
    };
    app.marked = app.runs.iter().map(|r| r.path.clone()).collect();
    let before = symbol_of(&app, "run-b");
    assert_ne!(before, ' ');
    // Unmark another run and re-sort: run-b keeps its symbol.
    app.marked.remove(&tmp.path().join("run-a"));
    press(&mut app, KeyCode::Char('o'));
    assert_eq!(symbol_of(&app, "run-b"), before);
    // On a log scale the labels are losses (the fake curves run from 3.5 down to 2.5).
    press(&mut app, KeyCode::Char('2'));
    app.focused = Some(tmp.path().join("run-b"));
    press(&mut app, KeyCode::Char('g'));
    let screen = render(&app, 120, 40, true);
    assert!(
        screen.contains("loss (log scale)") && screen.contains("3.50"),
        "{screen}"
    );
    assert!(
        !screen.contains("1.25"),
        "ln(3.5) is not a label:\n{screen}"
    );
    // Left/Right put a cursor on the overlay: each marked run's train loss at that step.
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Left);
    assert_eq!(
        app.overlay_step,
        Some(3),
        "the first press starts at the newest step"
    );
    press(&mut app, KeyCode::Left);
    let screen = render(&app, 120, 40, true);
    assert!(screen.contains("at step 2"), "{screen}");
    // The fake curves are 4.0 - 0.5 * step: 3.0 at step 2.
    assert!(screen.contains("run-b 3.0000"), "{screen}");
    for _ in 0..5 {
        press(&mut app, KeyCode::Left);
    }
    assert_eq!(app.overlay_step, Some(1), "it stops at the first step");
}

/// Every view and popup at 80x24 and 120x40, compared with the screens kept in
/// `tests/snapshots/` (insta; `INSTA_UPDATE=always cargo test --test tui snapshots` rewrites
/// them after a deliberate change). Driven by keys over fake run directories, including the
/// false-state cases: a running run among finished ones (the Run view opens on it) and a
/// confirm dialog at 80 columns. Paths are the repository's relative ones and times UTC, so
/// the screens are the same on any machine (the delete dialog, which names a temporary
/// path, has its own test).
#[test]
fn snapshots_of_every_view_and_popup() {
    std::env::set_var("TZ", "UTC");
    let tmp = tempfile::tempdir().unwrap();
    fake_run_started(tmp.path(), "a-finished", RunState::Finished, 1_000_000.0);
    fake_run_started(tmp.path(), "b-running", RunState::Running, 2_000_000.0);
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut runs = w.runs.clone();
    // The OS readings of the stand-in process (pid 1) vary: leave them out.
    runs.iter_mut().for_each(|r| {
        r.process = None;
        r.gpus = None;
    });
    let mut base = Profile::load(&repo().join("profiles/demo.toml"), &[]).unwrap();
    base.train.output_dir = "runs".into();
    let mut app = App::new(base);
    let s = search(tmp.path());
    // Labels relative to the checkout, as the picker fits them to its width.
    let relative = |mut c: catalog::Candidate| {
        c.label = c.path.strip_prefix(repo()).unwrap().display().to_string();
        c
    };
    app.set_catalog(
        catalog::list_profiles(&repo().join("profiles")),
        s.models()
            .into_iter()
            .filter(|c| c.path.starts_with(repo().join("assets")))
            .map(relative)
            .collect(),
        s.datasets()
            .into_iter()
            .filter(|c| c.path.starts_with(repo().join("assets")))
            .collect(),
    );
    let effects = app.inspections();
    assert!(settle(&mut app, effects).is_empty());
    app.set_runs(runs);
    let mut shots: Vec<(&str, Vec<KeyCode>)> = vec![
        ("setup", vec![]),
        ("setup-help", vec![KeyCode::Char('?')]),
        ("setup-save-name", vec![KeyCode::Char('w')]),
        ("setup-model-picker", vec![KeyCode::Enter]),
        ("run", vec![KeyCode::Char('2')]),
        (
            "run-stop-confirm",
            vec![KeyCode::Char('2'), KeyCode::Char('s')],
        ),
        ("runs", vec![KeyCode::Char('3')]),
        (
            "runs-overlay",
            vec![
                KeyCode::Char('3'),
                KeyCode::Char(' '),
                KeyCode::Down,
                KeyCode::Char(' '),
            ],
        ),
        ("sweeps", vec![KeyCode::Char('4')]),
        ("sweep-form", vec![KeyCode::Char('4'), KeyCode::Char('n')]),
        ("profiles", vec![KeyCode::Char('5')]),
    ];
    let repo_text = repo().display().to_string();
    let tmp_text = tmp.path().display().to_string();
    for (name, keys) in shots.drain(..) {
        for (width, height) in [(80, 24), (120, 40)] {
            let mut app = app.clone();
            for k in &keys {
                press(&mut app, *k);
            }
            let screen = render(&app, width, height, width == 80)
                .replace(&repo_text, "<repo>")
                .replace(&tmp_text, "<runs>");
            insta::assert_snapshot!(format!("{name}-{width}x{height}"), screen);
        }
    }
}

/// The Run view's Sparsity list scrolls with Up/Down and its events with PgUp/PgDn, the titles
/// saying where they are.
#[test]
fn the_run_view_panels_scroll() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Finished, 0.5, None);
    let run = RunDir::open(&path).unwrap();
    let layers = (0..12)
        .map(|i| LayerSparsity {
            name: format!("model.layers.{i}.mlp.down_proj"),
            density_before: 0.5,
            density_after: 0.5,
            pattern_preserved: true,
            nudged: 0,
            live_rank: None,
        })
        .collect();
    run.append_metric(&MetricRow::Sparsity { step: 3, layers })
        .unwrap();
    for step in 4..30 {
        run.append_metric(&MetricRow::Eval {
            step,
            eval_loss: 2.0,
            eval_ppl: 2f64.exp(),
        })
        .unwrap();
    }
    let (_, mut app) = watched_app(tmp.path());
    app.focused = Some(path);
    press(&mut app, KeyCode::Char('2'));
    let screen = render(&app, 80, 24, true);
    assert!(
        screen.contains("0.down_proj") && !screen.contains("11.down_proj"),
        "{screen}"
    );
    assert!(screen.contains("step 29: eval loss"), "{screen}");
    for _ in 0..20 {
        press(&mut app, KeyCode::Down);
    }
    let screen = render(&app, 80, 24, true);
    assert!(
        screen.contains("11.down_proj") && !screen.contains(" 0.down_proj"),
        "{screen}"
    );
    assert!(screen.contains("from layer"), "{screen}");
    press(&mut app, KeyCode::PageUp);
    let screen = render(&app, 80, 24, true);
    assert!(
        screen.contains("5 lines back") && !screen.contains("step 29: eval loss"),
        "{screen}"
    );
    press(&mut app, KeyCode::PageDown);
    assert!(render(&app, 80, 24, true).contains("step 29: eval loss"));
}

/// The data picker does not offer zero-shot task files (a `tasks` folder, or files named
/// after a task) as training data.
#[test]
fn the_data_picker_leaves_out_task_files() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = tmp.path().join("data");
    std::fs::create_dir_all(&extra).unwrap();
    for f in [
        "hellaswag-validation.jsonl",
        "boolq.jsonl",
        "boolqish.jsonl",
        "stories.jsonl",
    ] {
        std::fs::write(extra.join(f), "{\"text\": \"x\"}\n").unwrap();
    }
    let s = SearchPaths {
        extra: vec![extra],
        ..search(tmp.path())
    };
    let names: Vec<String> = s
        .datasets()
        .iter()
        .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "train.jsonl",
        "valid.jsonl",
        "boolqish.jsonl",
        "stories.jsonl",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    for task in [
        "boolq.jsonl",
        "hellaswag-validation.jsonl",
        "arc_easy.jsonl",
    ] {
        assert!(!names.iter().any(|n| n == task), "{task} in {names:?}");
    }
}

/// Left/Right in the Run view move a cursor over the loss chart's steps; its title shows the
/// losses there.
#[test]
fn the_loss_chart_shows_the_values_under_its_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Finished, 0.5, None);
    let (_, mut app) = watched_app(tmp.path());
    app.focused = Some(path);
    press(&mut app, KeyCode::Char('2'));
    assert!(!render(&app, 120, 40, true).contains("step 3: train"));
    press(&mut app, KeyCode::Left);
    let screen = render(&app, 120, 40, true);
    assert!(
        screen.contains("step 3: train 2.5000, valid 2.7500"),
        "{screen}"
    );
    press(&mut app, KeyCode::Left);
    let screen = render(&app, 120, 40, true);
    // No evaluation at or before step 2: the train loss alone.
    assert!(
        screen.contains("step 2: train 3.0000") && !screen.contains("3.0000, valid"),
        "{screen}"
    );
    for _ in 0..5 {
        press(&mut app, KeyCode::Left);
    }
    assert!(render(&app, 120, 40, true).contains("step 1: train 3.5000"));
    press(&mut app, KeyCode::Right);
    assert!(render(&app, 120, 40, true).contains("step 2: train 3.0000"));
}

/// A run in a SLURM job: the Run view names the job and, while it waits, SLURM's reason.
#[test]
fn a_run_in_a_slurm_job_names_it_and_why_it_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Running, 0.5, None);
    let (_, mut app) = watched_app(tmp.path());
    let run = &mut app.runs[0];
    run.status.as_mut().unwrap().slurm_job = Some("7".into());
    run.job = Some(lors::slurm::JobState {
        state: "PENDING".into(),
        reason: Some("Resources".into()),
    });
    app.focused = Some(path);
    app.view = View::Run;
    let s = render(&app, 80, 24, true);
    assert!(
        s.contains("run-a - SLURM job 7 PD Resources") && s.is_ascii(),
        "{s}"
    );
    app.runs[0].job = Some(lors::slurm::JobState {
        state: "RUNNING".into(),
        reason: None,
    });
    assert!(render(&app, 80, 24, true).contains("SLURM job 7 RUNNING"));
}
