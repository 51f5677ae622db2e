//! What each view does with an [`Action`] from the key table.

use std::path::PathBuf;

use super::app::{
    App, Confirm, EditTarget, Effect, Inspection, Modal, Picker, View, PICKER_INSPECTS_UP_TO,
};
use super::keys::Action;
use super::setup::{FieldId, Kind, PickFrom};
use super::sweeps::{ChartMode, SweepForm};
use crate::prune::PruneMethod;
use crate::sparsity::Layout;
use crate::train::{ControlRequest, RunState};

/// `i` moved by `step` in `0..n`, wrapping.
fn wrap(i: usize, step: isize, n: usize) -> usize {
    (i as isize + step).rem_euclid(n.max(1) as isize) as usize
}

impl App {
    pub(super) fn setup_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        match action {
            Action::Move => self.setup.move_selection(step),
            Action::MoveSection => self.setup.move_section(step),
            Action::Cycle if self.setup.cycle(step) => {
                return self.field_changed(self.setup.selected_field())
            }
            Action::Activate => return self.activate_field(),
            Action::AddPrune => {
                // The offer of the dense-model warning: prune with Wanda to 50% first.
                self.setup
                    .set(FieldId::PRUNE_METHOD, PruneMethod::Wanda.name());
                self.setup
                    .set(FieldId::PRUNE_PATTERN, &Layout::Unstructured.to_string());
                self.setup.set(FieldId::PRUNE_SPARSITY, "0.5");
                self.setup.select(FieldId::PRUNE_METHOD);
                self.notice = Some("prune step: wanda, 50% unstructured".into());
                self.revalidate();
            }
            Action::Save => self.start_saving(),
            Action::NewSweep => self.open_sweep_form(),
            Action::Launch => return self.launch(),
            _ => {}
        }
        Vec::new()
    }

    /// Enter on a Setup field: pick a path, or type text (choices cycle instead). The model
    /// picker asks for the sparsity of the models it lists (small ones, once per size).
    fn activate_field(&mut self) -> Vec<Effect> {
        let id = self.setup.selected_field();
        match id.kind() {
            Kind::Path(from) => {
                let items = match from {
                    PickFrom::Models => self.models.clone(),
                    PickFrom::Datasets => self.datasets.clone(),
                };
                let current = std::path::Path::new(self.setup.value(id));
                self.modal = Some(Modal::Picker(Picker::new(id, items, current)));
                if from == PickFrom::Models {
                    return self.inspect_candidates();
                }
            }
            Kind::Choice | Kind::Bool => {}
            _ => self.start_editing(EditTarget::Setup(id)),
        }
        Vec::new()
    }

    /// Inspections of the listed models not yet asked for at their current size.
    fn inspect_candidates(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        for c in &self.models {
            let small = c.bytes.is_some_and(|b| b <= PICKER_INSPECTS_UP_TO);
            let asked = self
                .inspected
                .get(&c.path)
                .is_some_and(|i| i.bytes == c.bytes);
            if small && !asked {
                let pending = Inspection {
                    bytes: c.bytes,
                    result: None,
                };
                self.inspected.insert(c.path.clone(), pending);
                out.push(Effect::InspectModel(c.path.clone()));
            }
        }
        out
    }

    /// Launch the Setup's run, once the model and data checks of the current values are in
    /// (until then the launch waits and happens when they arrive), and not while the same
    /// profile's previous launch is still starting.
    pub(super) fn launch(&mut self) -> Vec<Effect> {
        if let Some(what) = self.setup.checking(&self.base) {
            self.launch_waiting = true;
            self.notice = Some(format!("launching once {what} is checked..."));
            return Vec::new();
        }
        self.launch_waiting = false;
        match self.setup.profile(&self.base) {
            Ok(p) if self.still_starting(&p) => {
                self.notice = Some("already launching this profile: wait for its run".into());
                Vec::new()
            }
            Ok(p) => {
                self.setup.error = None;
                self.focused = None;
                self.view = View::Run;
                self.notice = Some("launching...".into());
                vec![Effect::Launch(Box::new(p))]
            }
            Err(e) => {
                self.setup.error = Some(e.clone());
                self.notice = Some(format!("cannot launch: {e}"));
                Vec::new()
            }
        }
    }

    /// Start typing a profile name to save the current Setup under.
    fn start_saving(&mut self) {
        match self.setup.profile(&self.base) {
            Ok(p) => self.start_naming(p),
            Err(e) => self.notice = Some(format!("cannot save: {e}")),
        }
    }

    /// Open the new-sweep form on the Sweeps view, around the Setup's settings.
    fn open_sweep_form(&mut self) {
        match self.setup.profile(&self.base) {
            Ok(p) => {
                self.board.form = Some(SweepForm::new(&p));
                self.view = View::Sweeps;
                self.check_sweep_form();
            }
            Err(e) => self.notice = Some(format!("cannot sweep: {e}")),
        }
    }

    pub(super) fn run_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        match action {
            Action::LogScale => self.log_scale = !self.log_scale,
            Action::OutputLog => {
                self.show_output = !self.show_output;
                self.log_back = 0;
            }
            Action::Cursor => {
                let n = self
                    .focused_run()
                    .map_or(0, |r| r.summary.train_curve.len());
                // The first press starts at the newest step; then one step per press.
                let at = self
                    .cursor
                    .map_or(n.saturating_sub(1) as isize, |c| c as isize + step);
                self.cursor = (n > 0).then(|| at.clamp(0, n as isize - 1) as usize);
            }
            Action::ScrollLayers => {
                let layers = self.focused_run().and_then(|r| r.sparsity.as_ref());
                let n = layers.map_or(0, |(_, l)| l.len());
                self.layers_top = self
                    .layers_top
                    .saturating_add_signed(step)
                    .min(n.saturating_sub(1));
            }
            // A page back (PgUp) or on, five lines at a time.
            Action::ScrollLog => {
                let run = self.focused_run();
                let lines = run.map_or(0, |r| {
                    if self.show_output {
                        r.log_tail.len()
                    } else {
                        r.events.len()
                    }
                });
                self.log_back = self.log_back.saturating_add_signed(-5 * step).min(lines);
            }
            Action::Zoom => {
                self.zoom_last = match self.zoom_last {
                    None => Some(50),
                    Some(_) => None,
                }
            }
            _ => {}
        }
        let Some(run) = self.focused_run() else {
            return Vec::new();
        };
        let path = run.path.clone();
        let state = run.status.as_ref().map(|s| s.state);
        let live = state.is_some_and(RunState::is_active);
        let ended = matches!(state, Some(RunState::Finished | RunState::Stopped));
        match action {
            Action::Pause if live => {
                let req = if state == Some(RunState::Paused) {
                    ControlRequest::Resume
                } else {
                    ControlRequest::Pause
                };
                vec![Effect::Control(path, req)]
            }
            Action::Checkpoint if live => vec![Effect::Control(path, ControlRequest::Checkpoint)],
            Action::Stop if live => {
                self.modal = Some(Modal::Confirm(Confirm::Stop(path)));
                Vec::new()
            }
            Action::Merge if ended => vec![Effect::Merge(path)],
            Action::Merge => {
                self.notice = Some("merge/export needs a finished or stopped run".into());
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Move the overlay's cursor one train step (of any marked run) back or on; the first
    /// press starts at the newest.
    fn move_overlay_cursor(&mut self, step: isize) {
        let mut steps: Vec<usize> = self
            .runs
            .iter()
            .filter(|r| self.marked.contains(&r.path))
            .flat_map(|r| r.summary.train_curve.iter().map(|p| p.0))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        let Some(last) = steps.len().checked_sub(1) else {
            self.overlay_step = None;
            return;
        };
        let at = match self.overlay_step {
            Some(s) => steps.partition_point(|&x| x < s) as isize + step,
            None => last as isize,
        };
        self.overlay_step = Some(steps[at.clamp(0, last as isize) as usize]);
    }

    pub(super) fn runs_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        let n = self.runs.len();
        if n == 0 {
            return Vec::new();
        }
        let path = self.runs[self.selected_run].path.clone();
        match action {
            Action::Move => self.selected_run = wrap(self.selected_run, step, n),
            // Toggle: unmark a marked run, else mark it.
            Action::Mark if !self.marked.remove(&path) => {
                self.marked.insert(path);
            }
            Action::Activate => {
                self.focused = Some(path);
                self.view = View::Run;
            }
            Action::Cursor => self.move_overlay_cursor(step),
            Action::Replay => return vec![Effect::Replay(path)],
            Action::Resume => return self.resume_run(path),
            Action::EditProfile => {
                if let Some(p) = self.runs[self.selected_run].profile.clone() {
                    return self.open_in_setup(p);
                }
                self.notice = Some("this run has no readable profile".into());
            }
            Action::Delete => self.modal = Some(Modal::Confirm(Confirm::Delete(path))),
            Action::Evaluate => return self.evaluate_run(),
            Action::Order => {
                self.run_order = self.run_order.next();
                let runs = std::mem::take(&mut self.runs);
                self.set_runs(runs);
                self.notice = Some(format!("runs ordered by {}", self.run_order.name()));
            }
            _ => {}
        }
        Vec::new()
    }

    /// Resume the selected run from its newest checkpoint (a detached `lors train --resume`)
    /// and show it, if it stopped or crashed.
    fn resume_run(&mut self, path: PathBuf) -> Vec<Effect> {
        let state = self.runs[self.selected_run]
            .status
            .as_ref()
            .map(|s| s.state);
        if !matches!(state, Some(RunState::Stopped | RunState::Crashed)) {
            self.notice = Some("only a stopped or crashed run resumes".into());
            return Vec::new();
        }
        self.focused = Some(path.clone());
        self.view = View::Run;
        vec![Effect::ResumeRun(path)]
    }

    /// Score the selected run's `[eval]` tasks (or those of the workbench's profile) in the
    /// background, once it has ended.
    fn evaluate_run(&mut self) -> Vec<Effect> {
        let run = &self.runs[self.selected_run];
        let ended = run
            .status
            .as_ref()
            .is_some_and(|s| matches!(s.state, RunState::Finished | RunState::Stopped));
        let running = run.eval_job.as_ref().is_some_and(|j| {
            j.state == crate::eval::JobState::Running && crate::io::process_alive(j.pid)
        });
        let suite = run
            .profile
            .as_ref()
            .and_then(|p| p.eval.clone())
            .or_else(|| self.base.eval.clone());
        match suite {
            _ if !ended => self.notice = Some("evaluate needs a finished or stopped run".into()),
            _ if running => self.notice = Some("an evaluation of this run is running".into()),
            None => {
                self.notice = Some(
                    "no tasks: add an [eval] section to the run's or the workbench's profile"
                        .into(),
                )
            }
            Some(suite) => return vec![Effect::Evaluate(run.path.clone(), Box::new(suite))],
        }
        Vec::new()
    }

    pub(super) fn sweeps_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        match action {
            Action::NewSweep => {
                self.open_sweep_form();
                return Vec::new();
            }
            Action::NextSweep => self.board.next_sweep(&self.sweeps),
            Action::Resume => return self.resume_sweep(),
            Action::Report => match self.board.current(&self.sweeps) {
                Some(s) => return vec![Effect::Report(s.dir.clone())],
                None => self.notice = Some("no sweep shown".into()),
            },
            Action::ChartMode => self.board.next_chart(),
            Action::Smooth => {
                self.board.smooth(step);
                self.board.chart = ChartMode::Train;
            }
            _ => return self.trial_action(action, step),
        }
        Vec::new()
    }

    /// Resume the shown sweep if its scheduling process is gone.
    fn resume_sweep(&mut self) -> Vec<Effect> {
        match self.board.current(&self.sweeps) {
            Some(s) if s.orphaned() => return vec![Effect::ResumeSweep(s.dir.clone())],
            Some(s) if s.state.is_done() => self.notice = Some("this sweep has ended".into()),
            Some(_) => self.notice = Some("this sweep's lors sweep is running".into()),
            None => self.notice = Some("no sweep shown".into()),
        }
        Vec::new()
    }

    /// Actions on the shown sweep's trials (the selected row of the sorted table).
    fn trial_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        let Some(sweep) = self.board.current(&self.sweeps).cloned() else {
            self.notice = Some("no sweep yet: S in Setup (or n here) defines one".into());
            return Vec::new();
        };
        let rows = self.board.rows(&sweep, &self.runs);
        let n = rows.len();
        self.board.row = self.board.row.min(n.saturating_sub(1));
        let run = rows.get(self.board.row).and_then(|r| r.run);
        let profile = run.and_then(|r| r.profile.clone());
        let path = run.map(|r| r.path.clone());
        match action {
            Action::Move => self.board.row = wrap(self.board.row, step, n),
            Action::SortNext => self.board.next_sort(&sweep),
            Action::SortReverse => self.board.descending = !self.board.descending,
            Action::NextParam => self.board.param = wrap(self.board.param, 1, sweep.axes.len()),
            Action::Activate if path.is_some() => {
                self.focused = path;
                self.view = View::Run;
            }
            Action::Promote | Action::EditProfile if profile.is_none() => {
                self.notice = Some("this trial has not started: no profile yet".into());
            }
            Action::Promote => self.start_naming(profile.expect("checked")),
            Action::EditProfile => return self.open_in_setup(profile.expect("checked")),
            _ => {}
        }
        Vec::new()
    }

    pub(super) fn sweep_form_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        let Some(form) = self.board.form.as_mut() else {
            return Vec::new();
        };
        match action {
            Action::Move => form.move_selection(step),
            Action::Cycle => form.cycle(step),
            Action::Activate => {
                let field = form.selected_field();
                if form.text_mut(field).is_some() {
                    self.start_editing(EditTarget::Sweep(field));
                } else {
                    form.cycle(1);
                }
            }
            Action::Back => self.board.form = None,
            Action::Launch => return self.launch_sweep(),
            _ => {}
        }
        self.check_sweep_form();
        Vec::new()
    }

    /// The form's `[sweep]` over the Setup's profile, checked as `lors sweep` checks it.
    /// The sweep the form stands for: its base profile, `[sweep]` table and name (none: the
    /// default), or what is wrong.
    fn sweep_to_launch(
        &self,
    ) -> Result<(crate::train::Profile, toml::Table, Option<String>), String> {
        let form = self.board.form.as_ref().ok_or("no sweep form")?;
        let base = self.setup.profile(&self.base)?;
        let table = form.table()?;
        crate::sweep::check_sweep(&base, &table).map_err(|e| e.to_string())?;
        let name = Some(form.name.trim().to_string()).filter(|n| !n.is_empty());
        if let Some(n) = &name {
            crate::io::check_plain_name(n, "name").map_err(|e| e.to_string())?;
        }
        Ok((base, table, name))
    }

    /// Show what is wrong with the form, if anything.
    pub(super) fn check_sweep_form(&mut self) {
        let error = self.sweep_to_launch().err();
        if let Some(form) = self.board.form.as_mut() {
            form.error = error;
        }
    }

    fn launch_sweep(&mut self) -> Vec<Effect> {
        match self.sweep_to_launch() {
            Ok((base, table, name)) => {
                self.board.form = None;
                self.board.sweep = None;
                self.notice = Some("launching the sweep...".into());
                vec![Effect::LaunchSweep(Box::new(base), table, name)]
            }
            Err(e) => {
                self.notice = Some(format!("cannot launch the sweep: {e}"));
                Vec::new()
            }
        }
    }

    pub(super) fn profiles_action(&mut self, action: Action, step: isize) -> Vec<Effect> {
        if action == Action::Save {
            self.start_saving();
            return Vec::new();
        }
        let n = self.profiles.len();
        if n == 0 {
            return Vec::new();
        }
        match action {
            Action::Move => self.selected_profile = wrap(self.selected_profile, step, n),
            Action::Activate => {
                let entry = &self.profiles[self.selected_profile];
                match entry.profile.clone() {
                    Ok(p) => {
                        self.notice = Some(format!("loaded profile {}", entry.name));
                        return self.open_in_setup(p);
                    }
                    Err(e) => self.notice = Some(format!("cannot load {}: {e}", entry.name)),
                }
            }
            Action::Launch => {
                let entry = &self.profiles[self.selected_profile];
                match (&entry.profile, &entry.sweep) {
                    (Ok(base), Some((table, _))) => {
                        self.view = View::Sweeps;
                        let launch =
                            Effect::LaunchSweep(Box::new(base.clone()), table.clone(), None);
                        return vec![launch];
                    }
                    (Err(e), _) => self.notice = Some(format!("cannot launch {}: {e}", entry.name)),
                    (Ok(_), None) => {
                        self.notice = Some(format!(
                            "{} is not a sweep: Enter loads it, l in Setup launches it",
                            entry.name
                        ))
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }
}
