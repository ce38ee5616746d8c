//! Pausing the vCPUs of a running VM. The thread taking the snapshot asks
//! for a pause and kicks every vCPU thread (the same signal that stops
//! them); each one, at its next KVM_RUN that returns EINTR (so the access
//! that caused its last exit is complete), reads its own state, hands it
//! over and waits until the pause ends. vCPU ioctls thus stay on their own
//! thread, as KVM prefers and as Firecracker does.

use super::{SnapshotError, VcpuState};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the vCPUs get to pause.
pub const PAUSE_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Gate {
    /// A pause is wanted (or in force).
    requested: bool,
    /// Bumped at every resume, so a vCPU knows its pause ended.
    generation: u64,
    /// What each paused vCPU handed over, by index.
    states: Vec<Option<Result<VcpuState, String>>>,
}

/// Shared by the vCPU threads and the thread that pauses them.
#[derive(Default)]
pub struct PauseGate {
    gate: Mutex<Gate>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a vCPU should pause now (cheap: checked after every EINTR).
    pub fn requested(&self) -> bool {
        self.lock().requested
    }

    /// Asks `vcpus` vCPUs to pause; the caller kicks them next.
    pub fn request(&self, vcpus: usize) {
        let mut g = self.lock();
        g.requested = true;
        g.states = (0..vcpus).map(|_| None).collect();
    }

    /// On a vCPU thread: hands over `state` (or why it could not be read),
    /// then blocks until [`PauseGate::resume`] or `stopping` says go.
    pub fn park(&self, id: u32, state: Result<VcpuState, String>, stopping: &dyn Fn() -> bool) {
        let mut g = self.lock();
        if !g.requested {
            return;
        }
        if let Some(slot) = g.states.get_mut(id as usize) {
            *slot = Some(state);
        }
        let generation = g.generation;
        self.changed.notify_all();
        while g.generation == generation && !stopping() {
            g = self
                .changed
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until every vCPU handed its state over, kicking them with
    /// `kick` while it waits (a kick can land before a vCPU enters KVM_RUN).
    pub fn wait_paused(
        &self,
        mut kick: impl FnMut(),
        ended: impl Fn() -> bool,
    ) -> Result<Vec<VcpuState>, SnapshotError> {
        let deadline = Instant::now() + PAUSE_WAIT;
        let mut g = self.lock();
        loop {
            if let Some(missing) = g.states.iter().position(Option::is_none) {
                if ended() {
                    return Err(SnapshotError::Ended);
                }
                if Instant::now() > deadline {
                    return Err(SnapshotError::PauseTimeout {
                        vcpu: missing as u32,
                    });
                }
                drop(g);
                kick();
                g = self.lock();
                g = self
                    .changed
                    .wait_timeout(g, Duration::from_millis(2))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let mut out = Vec::with_capacity(g.states.len());
            for s in g.states.iter_mut() {
                match s.take().expect("checked above") {
                    Ok(v) => out.push(v),
                    Err(e) => return Err(SnapshotError::Invalid(e)),
                }
            }
            return Ok(out);
        }
    }

    /// Ends the pause: every parked vCPU goes on.
    pub fn resume(&self) {
        let mut g = self.lock();
        g.requested = false;
        g.generation = g.generation.wrapping_add(1);
        g.states.clear();
        self.changed.notify_all();
    }
}
