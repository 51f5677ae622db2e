//! The one place a run reports to, as burn-train's event processor is for its renderers:
//! `status.json` (state, step, message, elapsed time and ETA), `metrics.jsonl`, and the
//! caller's event callback (the CLI's progress bar, a sweep's scheduler, tests).

use std::time::{Duration, Instant};

use super::Event;
use crate::error::{LorsError, Result};
use crate::train::run_dir::{now_s, MetricRow, RunDir, RunState, Status};

/// A run's status, metrics and events, and its clock with the pauses left out.
pub(super) struct Reporter<'a> {
    pub run: &'a RunDir,
    /// Whether this process writes the run (rank 0 of a data-parallel run, or alone).
    pub writes: bool,
    on_event: &'a mut dyn FnMut(&Event),
    pub status: Status,
    started: Instant,
    /// Active time earlier processes spent on the run (a resume goes on counting from it).
    earlier: Duration,
    /// Time spent paused (excluded from elapsed times and the ETA), and the current pause.
    paused: Duration,
    pause_began: Option<Instant>,
    /// The first error writing the status from a long stage's progress callback, which
    /// cannot return it; [`Reporter::end_stage`] does.
    stage_error: Option<LorsError>,
}

impl<'a> Reporter<'a> {
    /// A reporter for `run`, its status `initializing` (not written yet).
    pub fn new(run: &'a RunDir, on_event: &'a mut dyn FnMut(&Event)) -> Self {
        Self {
            run,
            writes: crate::dist::ranks().is_root(),
            on_event,
            status: Status::initial(std::process::id(), "loading model and data"),
            started: Instant::now(),
            earlier: Duration::ZERO,
            paused: Duration::ZERO,
            pause_began: None,
            stage_error: None,
        }
    }

    /// Tell the caller.
    pub fn emit(&mut self, event: Event) {
        (self.on_event)(&event);
    }

    /// Something the user should know that does not stop the run.
    pub fn notice(&mut self, text: String) {
        self.emit(Event::Notice(text));
    }

    /// Append `row` to the metrics and tell the caller.
    pub fn metric(&mut self, row: MetricRow) -> Result<()> {
        self.append(&row)?;
        self.emit(Event::Metric(row));
        Ok(())
    }

    /// Append `row` to the metrics (only where this process writes the run).
    pub fn append(&self, row: &MetricRow) -> Result<()> {
        match self.writes {
            true => self.run.append_metric(row),
            false => Ok(()),
        }
    }

    /// Write the status as it stands (only where this process writes the run).
    pub fn write_status(&self) -> Result<()> {
        match self.writes {
            true => self.run.write_status(&self.status),
            false => Ok(()),
        }
    }

    /// Record the state, step and (when given) message, with the active time so far.
    pub fn set_status(
        &mut self,
        state: RunState,
        step: usize,
        message: Option<String>,
    ) -> Result<()> {
        self.status.state = state;
        self.status.step = step;
        self.status.elapsed_s = self.active_s();
        self.status.updated_at = now_s();
        if message.is_some() {
            self.status.message = message;
        }
        self.write_status()
    }

    /// A long stage's progress: `event` to the caller and `message` into the status (an
    /// error writing it is kept for [`Reporter::end_stage`]).
    pub fn progress(&mut self, event: Event, message: String) {
        self.emit(event);
        let (state, step) = (self.status.state, self.status.step);
        if let Err(e) = self.set_status(state, step, Some(message)) {
            self.stage_error.get_or_insert(e);
        }
    }

    /// The end of a long stage: the first error its progress met writing the status.
    pub fn end_stage(&mut self) -> Result<()> {
        self.stage_error.take().map_or(Ok(()), Err)
    }

    /// Count on from `seconds` of active time that earlier processes spent on the run.
    pub fn continue_from(&mut self, seconds: f64) {
        self.earlier = Duration::try_from_secs_f64(seconds).unwrap_or_default();
    }

    /// Seconds of active time on the run: earlier processes', then since this one started,
    /// pauses left out.
    pub fn active_s(&self) -> f64 {
        let now = self.pause_began.map_or(Duration::ZERO, |t| t.elapsed());
        let paused = self.paused + now;
        (self.earlier + self.started.elapsed().saturating_sub(paused)).as_secs_f64()
    }

    /// The start moved later by the pauses so far and earlier by the earlier processes'
    /// time: its `elapsed()` is the active time while not paused (as during a step).
    pub fn active_clock(&self) -> Instant {
        let moved = self.started + self.paused;
        moved.checked_sub(self.earlier).unwrap_or(moved)
    }

    /// A pause begins now (unless one is under way).
    pub fn pause(&mut self) {
        self.pause_began.get_or_insert_with(Instant::now);
    }

    /// The pause under way, if any, ends now.
    pub fn unpause(&mut self) {
        if let Some(began) = self.pause_began.take() {
            self.paused += began.elapsed();
        }
    }
}
