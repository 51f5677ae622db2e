//! The interactive workbench (ratatui + crossterm on tokio): set up a run, launch it as a
//! detached process, and watch every run directory under the runs folder.
//!
//! State ([`app`]), drawing ([`draw`]), run watching ([`watch`]) and launching ([`launch`])
//! are kept apart; the loop below only routes events and carries out effects. It redraws
//! only when something changed, at most ten times a second, and polls run files four times
//! a second.

pub mod app;
pub mod draw;
pub mod launch;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::StreamExt;

use crate::error::{LorsError, Result};
use crate::model::ModelDir;
use crate::train::{Profile, RunDir};
use app::{App, Effect};

/// Where the workbench reads and writes.
#[derive(Debug, Clone)]
pub struct TuiOptions {
    /// The runs folder to watch and launch into.
    pub runs_dir: PathBuf,
    /// The profile the Setup view starts from.
    pub profile: PathBuf,
}

/// Carry out an effect, updating the state with what came of it.
pub fn apply(app: &mut App, effect: Effect, runs_dir: &Path) {
    match effect {
        Effect::Launch(p) => match launch::launch(&p, runs_dir) {
            Ok(dir) => {
                app.notice = Some(format!("launched {}", dir.display()));
                app.focused = Some(dir);
            }
            Err(e) => app.notice = Some(format!("launch failed: {e}")),
        },
        Effect::Control(path, req) => {
            let run = RunDir { path };
            app.notice = Some(match run.request(req) {
                Ok(_) => format!("{req:?} requested").to_lowercase(),
                Err(e) => format!("request failed: {e}"),
            });
        }
        Effect::Delete(path) => {
            app.notice = Some(match std::fs::remove_dir_all(&path) {
                Ok(()) => format!("deleted {}", path.display()),
                Err(e) => format!("delete failed: {e}"),
            });
        }
        Effect::InspectModel(path) => {
            app.set_model(
                ModelDir::open(&path)
                    .map(|d| d.config)
                    .map_err(|e| e.to_string()),
            );
        }
    }
}

/// Run the workbench until the user quits. The terminal is restored on every exit path
/// (ratatui's init installs a panic hook that restores it too).
pub fn run(opts: &TuiOptions) -> Result<()> {
    let base = Profile::load(&opts.profile, &[])?;
    let mut app = App::new(base.clone());
    apply(
        &mut app,
        Effect::InspectModel(base.model.path.clone()),
        &opts.runs_dir,
    );
    let mut watcher = watch::Watcher::new(&opts.runs_dir);
    watcher.refresh();
    app.set_runs(watcher.runs.clone());
    let theme = draw::Theme::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| LorsError::io(&opts.runs_dir, e))?;
    let mut terminal = ratatui::init();
    let result: std::io::Result<()> = rt.block_on(async {
        let mut events = EventStream::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut dirty = true;
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        while !app.quit {
            if dirty && last_draw.elapsed() >= Duration::from_millis(100) {
                terminal.draw(|f| draw::draw(f, &app, theme))?;
                dirty = false;
                last_draw = Instant::now();
            }
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                        for effect in app.on_key(k) {
                            apply(&mut app, effect, &opts.runs_dir);
                        }
                        dirty = true;
                    }
                    Some(Ok(Event::Resize(..))) => dirty = true,
                    Some(Err(e)) => return Err(e),
                    None => break,
                    _ => {}
                },
                _ = tick.tick() => {
                    if watcher.refresh() {
                        app.set_runs(watcher.runs.clone());
                        dirty = true;
                    }
                }
            }
        }
        Ok(())
    });
    ratatui::restore();
    result.map_err(|e| LorsError::io(&opts.runs_dir, e))
}
