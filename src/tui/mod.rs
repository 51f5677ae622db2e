//! The interactive workbench (ratatui + crossterm on tokio): set up a run, launch it as a
//! detached process, and watch every run directory under the runs folder.
//!
//! State ([`app`], with the Setup form in [`setup`], the Sweeps view's in [`sweeps`], and
//! what each view does with a key in [`actions`]), the key table ([`keys`]), drawing
//! ([`views`], [`popups`], [`plot`], [`theme`]), run and sweep watching ([`watch`]), what is
//! on disk ([`catalog`]) and launching ([`launch`]) are kept apart; the loop below only
//! routes events and carries out effects. Inspections of models and data run on blocking threads and come
//! back as messages. It redraws only when something changed, at most ten times a second, and
//! polls run files four times a second.

mod actions;
pub mod app;
pub mod catalog;
pub mod input;
pub mod keys;
pub mod launch;
pub mod plot;
pub mod popups;
pub mod setup;
pub mod sweeps;
pub mod text;
pub mod theme;
pub mod views;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::StreamExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::data::DataSummary;
use crate::error::{LorsError, Result};
use crate::model::ModelSummary;
use crate::sources::hub::Download;
use crate::train::{ControlRequest, Profile, RunDir};
use app::{App, Effect};
use catalog::{DataRequest, SearchPaths};

/// Where the workbench reads and writes.
#[derive(Debug, Clone)]
pub struct TuiOptions {
    /// The runs folder to watch and launch into.
    pub runs_dir: PathBuf,
    /// The profile the Setup view starts from.
    pub profile: PathBuf,
    /// The folder of saved profiles.
    pub profiles_dir: PathBuf,
    /// Where model and dataset candidates are looked for.
    pub search: SearchPaths,
    /// Write the number of redraws and the seconds the TUI ran to this file on exit.
    pub stats: Option<PathBuf>,
}

/// The result of an inspection run off the event loop.
#[derive(Debug)]
pub enum Update {
    /// Progress of a hub download for the model at this path.
    Download(PathBuf, Download),
    Model(PathBuf, std::result::Result<ModelSummary, String>),
    Data(
        setup::FieldId,
        DataRequest,
        std::result::Result<DataSummary, String>,
    ),
}

impl Update {
    /// Hand the result to the state machine; returns what it asks for next (a launch that
    /// waited for this check).
    pub fn apply(self, app: &mut App) -> Vec<Effect> {
        match self {
            Update::Download(path, d) => {
                app.set_download(&path, d);
                Vec::new()
            }
            Update::Model(path, r) => app.set_model(&path, r),
            Update::Data(key, req, r) => app.set_data(key, &req, r),
        }
    }
}

/// Re-read the saved profiles and the model and dataset candidates.
fn refresh_catalog(app: &mut App, opts: &TuiOptions) -> bool {
    let profiles = catalog::list_profiles(&opts.profiles_dir);
    let models = opts.search.models();
    let datasets = opts.search.datasets();
    let changed = profiles != app.profiles || models != app.models || datasets != app.datasets;
    if changed {
        app.set_catalog(profiles, models, datasets);
    }
    changed
}

/// Carry out an effect, updating the state with what came of it. Inspections run on
/// blocking threads and report through `updates`.
pub fn apply(app: &mut App, effect: Effect, opts: &TuiOptions, updates: &UnboundedSender<Update>) {
    let runs = &opts.runs_dir;
    match effect {
        Effect::InspectModel(path) => inspect_model(path, updates.clone()),
        Effect::InspectData(key, req) => {
            let tx = updates.clone();
            tokio::task::spawn_blocking(move || {
                let r = catalog::inspect_data(&req);
                let _ = tx.send(Update::Data(key, req, r));
            });
        }
        Effect::Control(path, req) => {
            let run = RunDir { path };
            let done = match req {
                ControlRequest::Stop => run.stop(),
                _ => run
                    .request(req)
                    .map(|_| format!("{req:?} requested").to_lowercase()),
            };
            app.notice = Some(done.unwrap_or_else(|e| format!("request failed: {e}")));
        }
        Effect::Delete(path) => {
            app.notice = Some(match std::fs::remove_dir_all(&path) {
                Ok(()) => format!("deleted {}", path.display()),
                Err(e) => format!("delete failed: {e}"),
            });
        }
        Effect::SaveProfile(name, profile) => save_profile(app, opts, &name, &profile),
        Effect::Launch(p) => {
            let dir = started(app, launch::launch(&p, runs), "launched", "launch failed");
            if let Some(dir) = &dir {
                app.starting = Some((p, dir.clone()));
            }
            app.focused = dir.or(app.focused.take());
        }
        Effect::Replay(run) => {
            let dir = started(
                app,
                launch::replay(&run, runs),
                "replaying into",
                "replay failed",
            );
            app.focused = dir.or(app.focused.take());
        }
        Effect::LaunchSweep(base, table, name) => {
            let launched = launch::sweep(&base, &table, name.as_deref(), runs);
            if let Some(dir) = started(app, launched, "sweep launched:", "sweep launch failed") {
                app.board.sweep = Some(dir);
            }
        }
        Effect::ResumeSweep(dir) => resumed(app, &dir, launch::resume_sweep(&dir)),
        Effect::ResumeRun(dir) => resumed(app, &dir, launch::resume_run(&dir)),
        Effect::Report(dir) => {
            app.notice = Some(match launch::report(&dir) {
                Ok((md, log)) => format!("writing {} (log: {})", md.display(), log.display()),
                Err(e) => format!("report failed to start: {e}"),
            })
        }
        Effect::Evaluate(run, suite) => {
            app.notice = Some(match launch::evaluate(&run, &suite) {
                Ok(progress) => format!(
                    "evaluating {} tasks (progress: {})",
                    suite.tasks.len(),
                    progress.display()
                ),
                Err(e) => format!("evaluation failed to start: {e}"),
            })
        }
        Effect::Merge(run) => {
            app.notice = Some(match launch::merge(&run) {
                Ok(log) => format!(
                    "exporting to {} (log: {})",
                    RunDir::at(&run).merged_path().display(),
                    log.display()
                ),
                Err(e) => format!("merge failed: {e}"),
            })
        }
    }
}

/// Write `profile` into the profiles folder as `<name>.toml` (atomically) and list it.
fn save_profile(app: &mut App, opts: &TuiOptions, name: &str, profile: &Profile) {
    let path = opts.profiles_dir.join(format!("{name}.toml"));
    let saved = std::fs::create_dir_all(&opts.profiles_dir)
        .map_err(|e| LorsError::io(&opts.profiles_dir, e))
        .and_then(|()| crate::io::write_atomic(&path, profile.to_toml().as_bytes()));
    app.notice = Some(match saved {
        Ok(()) => format!("saved {}", path.display()),
        Err(e) => format!("save failed: {e}"),
    });
    refresh_catalog(app, opts);
}

/// Describe the model at `path` on a blocking thread (downloading it first for a hub id),
/// reporting progress and the result through `tx`.
fn inspect_model(path: PathBuf, tx: UnboundedSender<Update>) {
    tokio::task::spawn_blocking(move || {
        let r = catalog::inspect_model_at(&path, &mut |d| {
            let _ = tx.send(Update::Download(path.clone(), d.clone()));
        });
        let _ = tx.send(Update::Model(path, r));
    });
}

/// Say where a resume of `dir` logs, or why it did not start.
fn resumed(app: &mut App, dir: &Path, log: Result<PathBuf>) {
    app.notice = Some(match log {
        Ok(log) => format!("resuming {} (log: {})", dir.display(), log.display()),
        Err(e) => format!("resume failed: {e}"),
    });
}

/// Say in the footer whether a detached process started into its directory; the directory
/// when it did.
fn started(app: &mut App, result: Result<PathBuf>, done: &str, failed: &str) -> Option<PathBuf> {
    match result {
        Ok(dir) => {
            app.notice = Some(format!("{done} {}", dir.display()));
            Some(dir)
        }
        Err(e) => {
            app.notice = Some(format!("{failed}: {e}"));
            None
        }
    }
}

/// The periodic work (every 250 ms tick): expire the footer notice, re-read runs and sweeps,
/// and, as they change rarely, every 8th tick the saved profiles and candidates; true when
/// something shown changed.
fn on_tick(
    app: &mut App,
    watcher: &mut watch::Watcher,
    notices: &mut NoticeClock,
    tick: u64,
    opts: &TuiOptions,
) -> bool {
    let mut changed = notices.expire(&mut app.notice, Instant::now());
    if watcher.refresh() {
        if let Some(news) = watcher.take_news().pop() {
            app.notice = Some(news);
        }
        app.set_runs(watcher.runs.clone());
        app.set_sweeps(watcher.sweeps.clone());
        changed = true;
    }
    if tick.is_multiple_of(8) && refresh_catalog(app, opts) {
        changed = true;
    }
    changed
}

/// Run the workbench until the user quits. The terminal is restored on every exit path
/// (ratatui's init installs a panic hook that restores it too).
pub fn run(opts: &TuiOptions) -> Result<()> {
    let base = Profile::load(&opts.profile, &[])?;
    let mut app = App::new(base);
    app.profiles_dir = opts.profiles_dir.clone();
    let mut watcher = watch::Watcher::new(&opts.runs_dir);
    watcher.refresh();
    app.set_runs(watcher.runs.clone());
    app.set_sweeps(watcher.sweeps.clone());
    app.open_on_active_run();
    refresh_catalog(&mut app, opts);
    let theme = theme::Theme::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| LorsError::io(&opts.runs_dir, e))?;
    let started = Instant::now();
    let mut draws = 0u64;
    let mut terminal = ratatui::init();
    let result: std::io::Result<()> = rt.block_on(async {
        let (tx, mut rx) = unbounded_channel();
        for effect in app.inspections() {
            apply(&mut app, effect, opts, &tx);
        }
        let mut events = EventStream::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut ticks = 0u64;
        let mut notices = NoticeClock::default();
        let mut dirty = true;
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        while !app.quit {
            if dirty && last_draw.elapsed() >= Duration::from_millis(100) {
                terminal.draw(|f| views::draw(f, &app, theme))?;
                draws += 1;
                dirty = false;
                last_draw = Instant::now();
            }
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                        for effect in app.on_key(k) {
                            apply(&mut app, effect, opts, &tx);
                        }
                        dirty = true;
                    }
                    Some(Ok(Event::Resize(..))) => dirty = true,
                    Some(Err(e)) => return Err(e),
                    None => break,
                    _ => {}
                },
                Some(update) = rx.recv() => {
                    for effect in update.apply(&mut app) {
                        apply(&mut app, effect, opts, &tx);
                    }
                    dirty = true;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    dirty |= on_tick(&mut app, &mut watcher, &mut notices, ticks, opts);
                }
            }
        }
        Ok(())
    });
    ratatui::restore();
    if let Some(path) = &opts.stats {
        let stats = serde_json::json!({
            "draws": draws,
            "seconds": started.elapsed().as_secs_f64(),
        });
        crate::io::write_json_atomic(path, &stats)?;
    }
    result.map_err(|e| LorsError::io(&opts.runs_dir, e))
}

/// How long a footer notice stays before the key hints come back.
const NOTICE_FOR: Duration = Duration::from_secs(8);

/// When the footer's current notice appeared, so that it can expire.
#[derive(Debug, Default)]
struct NoticeClock {
    shown: Option<(String, Instant)>,
}

impl NoticeClock {
    /// Clear `notice` once it has been shown for [`NOTICE_FOR`] (a new text starts the clock
    /// again); true when it cleared it.
    fn expire(&mut self, notice: &mut Option<String>, now: Instant) -> bool {
        let Some(text) = notice.as_ref() else {
            self.shown = None;
            return false;
        };
        match &self.shown {
            Some((seen, since)) if seen == text => {
                if now.duration_since(*since) < NOTICE_FOR {
                    return false;
                }
                *notice = None;
                self.shown = None;
                true
            }
            _ => {
                self.shown = Some((text.clone(), now));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notice lasts [`NOTICE_FOR`] from when it first showed; a new one starts over.
    #[test]
    fn notices_expire_after_their_time() {
        let (mut clock, t0) = (NoticeClock::default(), Instant::now());
        let mut notice = Some("launched".to_string());
        assert!(!clock.expire(&mut notice, t0));
        assert!(!clock.expire(&mut notice, t0 + NOTICE_FOR / 2));
        notice = Some("merged".into());
        assert!(!clock.expire(&mut notice, t0 + NOTICE_FOR / 2));
        assert!(!clock.expire(&mut notice, t0 + NOTICE_FOR));
        assert!(clock.expire(&mut notice, t0 + NOTICE_FOR * 3 / 2));
        assert_eq!(notice, None);
        assert!(!clock.expire(&mut notice, t0 + NOTICE_FOR * 2));
    }
}
