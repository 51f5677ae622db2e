//! The workbench without a terminal: key handling and validation of the state machine,
//! rendering into ratatui's TestBackend at 80x24 and 120x40, and run-directory watching.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use lors::model::ModelConfig;
use lors::train::{ControlRequest, MetricRow, Profile, RunDir, RunState, Status};
use lors::tui::app::{App, Confirm, Effect, View};
use lors::tui::draw::{draw, Theme};
use lors::tui::watch::Watcher;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo_app() -> App {
    let mut p = Profile::load(&repo().join("profiles/demo.toml"), &[]).unwrap();
    p.resolve_paths(&repo());
    let mut app = App::new(p.clone());
    let dir = lors::model::ModelDir::open(&p.model.path).unwrap();
    app.set_model(Ok::<ModelConfig, String>(dir.config));
    app
}

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn select_field(app: &mut App, label: &str) {
    for _ in 0..app.setup.fields.len() {
        if app.setup.fields[app.setup.selected].label == label {
            return;
        }
        key(app, KeyCode::Down);
    }
    panic!("no field {label}");
}

#[test]
fn views_cycle_and_help_opens_and_closes() {
    let mut app = demo_app();
    assert_eq!(app.view, View::Setup);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.view, View::Run);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.view, View::Runs);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.view, View::Run);
    key(&mut app, KeyCode::Char('1'));
    assert_eq!(app.view, View::Setup);
    key(&mut app, KeyCode::Char('?'));
    assert!(app.help);
    key(&mut app, KeyCode::Char('x'));
    assert!(!app.help);
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit);
}

#[test]
fn setup_edits_validates_and_launches() {
    let mut app = demo_app();
    assert_eq!(app.setup.error, None, "the demo profile is valid");
    select_field(&mut app, "method");
    key(&mut app, KeyCode::Right);
    assert_eq!(app.setup.fields[app.setup.selected].value, "lors-exact");
    key(&mut app, KeyCode::Left);
    key(&mut app, KeyCode::Left);
    assert_eq!(app.setup.fields[app.setup.selected].value, "lora");
    // A rank larger than the model allows is shown inline and blocks the launch.
    select_field(&mut app, "rank");
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Backspace);
    type_text(&mut app, "100");
    key(&mut app, KeyCode::Enter);
    let err = app.setup.error.clone().expect("rank 100 is invalid");
    assert!(err.contains("rank 100") && err.contains("(32)"), "{err}");
    assert!(key(&mut app, KeyCode::Char('l')).is_empty());
    assert!(app.notice.as_deref().unwrap().starts_with("cannot launch"));
    // A bad number names its key; Esc abandons an edit.
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "x");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.setup.fields[app.setup.selected].value, "100");
    select_field(&mut app, "steps");
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "abc");
    key(&mut app, KeyCode::Enter);
    assert!(app.setup.error.is_some());
    select_field(&mut app, "steps");
    key(&mut app, KeyCode::Enter);
    for _ in 0..5 {
        key(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "7");
    key(&mut app, KeyCode::Enter);
    select_field(&mut app, "rank");
    key(&mut app, KeyCode::Enter);
    for _ in 0..3 {
        key(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "2");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.setup.error, None);
    let effects = key(&mut app, KeyCode::Char('l'));
    let [Effect::Launch(p)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (p.adapter.rank, p.train.max_steps, p.adapter.method.name()),
        (2, Some(7), "lora")
    );
    assert_eq!(app.view, View::Run);
    // Editing the model path asks for it to be inspected.
    key(&mut app, KeyCode::Char('1'));
    select_field(&mut app, "model");
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "-missing");
    let effects = key(&mut app, KeyCode::Enter);
    assert!(
        matches!(effects.as_slice(), [Effect::InspectModel(p)] if p.ends_with("demo-model-missing"))
    );
}

fn fake_run(root: &std::path::Path, name: &str, state: RunState) -> PathBuf {
    let mut p = Profile::load(&repo().join("profiles/demo.toml"), &[]).unwrap();
    p.resolve_paths(&repo());
    let run = RunDir::create(&root.join(name)).unwrap();
    run.write_profile(&p.to_toml()).unwrap();
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
        })
        .unwrap();
    }
    run.append_metric(&MetricRow::Eval {
        step: 3,
        eval_loss: 2.75,
        eval_ppl: 2.75f64.exp(),
    })
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
    })
    .unwrap();
    run.path
}

#[test]
fn run_and_runs_views_send_controls_and_confirm_destructive_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-a", RunState::Running);
    let mut w = Watcher::new(tmp.path());
    assert!(w.refresh());
    let mut app = demo_app();
    app.set_runs(w.runs.clone());
    app.view = View::Run;
    assert_eq!(
        key(&mut app, KeyCode::Char('p')),
        vec![Effect::Control(path.clone(), ControlRequest::Pause)]
    );
    assert_eq!(
        key(&mut app, KeyCode::Char('c')),
        vec![Effect::Control(path.clone(), ControlRequest::Checkpoint)]
    );
    assert!(key(&mut app, KeyCode::Char('s')).is_empty());
    assert_eq!(app.confirm, Some(Confirm::Stop(path.clone())));
    assert!(key(&mut app, KeyCode::Char('n')).is_empty());
    assert_eq!(app.confirm, None);
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Effect::Control(path.clone(), ControlRequest::Stop)]
    );
    key(&mut app, KeyCode::Char('g'));
    assert!(app.log_scale);
    // A paused run resumes with the same key; a finished one takes no controls.
    app.runs[0].status.as_mut().unwrap().state = RunState::Paused;
    assert_eq!(
        key(&mut app, KeyCode::Char('p')),
        vec![Effect::Control(path.clone(), ControlRequest::Resume)]
    );
    app.runs[0].status.as_mut().unwrap().state = RunState::Finished;
    assert!(key(&mut app, KeyCode::Char('p')).is_empty());
    app.view = View::Runs;
    key(&mut app, KeyCode::Char('d'));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Effect::Delete(path.clone())]
    );
    key(&mut app, KeyCode::Enter);
    assert_eq!(
        (app.view, app.focused.clone()),
        (View::Run, Some(path.clone()))
    );
    app.view = View::Runs;
    let effects = key(&mut app, KeyCode::Char('e'));
    assert_eq!(app.view, View::Setup);
    assert!(matches!(effects.as_slice(), [Effect::InspectModel(_)]));
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| draw(f, app, Theme { color: false })).unwrap();
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

#[test]
fn every_view_renders_what_it_must_at_80x24_and_120x40() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run(tmp.path(), "run-a", RunState::Running);
    let mut w = Watcher::new(tmp.path());
    w.refresh();
    let mut app = demo_app();
    app.set_runs(w.runs.clone());
    for (width, height) in [(80, 24), (120, 40)] {
        app.view = View::Setup;
        let s = render(&app, width, height);
        for want in [
            "1:Setup",
            "model",
            "rank",
            "method",
            "< lors >",
            "Llama, hidden 64",
            "ready to launch",
            "q quit",
        ] {
            assert!(
                s.contains(want),
                "{width}x{height} Setup lacks {want:?}:\n{s}"
            );
        }
        app.view = View::Run;
        let s = render(&app, width, height);
        for want in [
            "run-a running step 3/10",
            "ETA 7s",
            "loss",
            "tok/s    1234",
            "RSS      40.0 MiB",
            "best val 2.7500",
            "step 3: eval loss 2.7500",
            "p pause/resume",
        ] {
            assert!(
                s.contains(want),
                "{width}x{height} Run lacks {want:?}:\n{s}"
            );
        }
        app.view = View::Runs;
        let s = render(&app, width, height);
        for want in ["val loss/ppl", "run-a", "running", "lors", "2.750 / 15.64"] {
            assert!(
                s.contains(want),
                "{width}x{height} Runs lacks {want:?}:\n{s}"
            );
        }
        app.help = true;
        let s = render(&app, width, height);
        assert!(
            s.contains("c checkpoint now"),
            "{width}x{height} help:\n{s}"
        );
        app.help = false;
    }
    // Below 80x24 it still draws without panicking.
    render(&app, 40, 10);
}

#[test]
fn the_watcher_reads_only_complete_metric_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_run(tmp.path(), "run-b", RunState::Running);
    let mut w = Watcher::new(tmp.path());
    assert!(w.refresh());
    assert_eq!(w.runs[0].train_loss.len(), 3);
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
    assert_eq!(w.runs[0].eval_loss.last(), Some(&(4.0, 2.5)));
}
