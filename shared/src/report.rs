//! The timeline every run records, the same for both isolations.
//!
//! Phases are stamped on `CLOCK_MONOTONIC` (see [`crate::clock`]) so a stamp
//! taken in a container's child process or on a vCPU thread lines up with the
//! parent's. `ready` is the same point in both: immediately before the
//! workload's `execve`.

use crate::clock::monotonic_ns;
use crate::runtime::WorkloadExit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A named point in a run's life. Each backend stamps the ones it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// duet started handling the run (`t0`).
    Start,
    /// Spec read and validated, image resolved.
    SpecLoaded,
    /// Container: overlay root mounted. VM: root file system (initramfs/disks) prepared.
    RootfsReady,
    /// Container: child cloned into its new namespaces.
    NamespacesCreated,
    /// Container: child placed in its cgroup with limits applied.
    CgroupApplied,
    /// Container: pivot_root into the overlay done.
    PivotDone,
    /// VM: KVM VM and guest memory created.
    VmCreated,
    /// VM: kernel (and initrd) loaded into guest memory.
    KernelLoaded,
    /// VM: vCPU threads started.
    VcpusStarted,
    /// Immediately before execve of the workload (both isolations).
    Ready,
    /// The workload ended and duet saw its status.
    Exited,
    /// Instance torn down (mounts, cgroups, directories removed).
    CleanedUp,
}

impl Phase {
    /// snake_case name as printed in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::SpecLoaded => "spec_loaded",
            Phase::RootfsReady => "rootfs_ready",
            Phase::NamespacesCreated => "namespaces_created",
            Phase::CgroupApplied => "cgroup_applied",
            Phase::PivotDone => "pivot_done",
            Phase::VmCreated => "vm_created",
            Phase::KernelLoaded => "kernel_loaded",
            Phase::VcpusStarted => "vcpus_started",
            Phase::Ready => "ready",
            Phase::Exited => "exited",
            Phase::CleanedUp => "cleaned_up",
        }
    }
}

/// One stamped phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseStamp {
    /// Which phase.
    pub phase: Phase,
    /// Absolute `CLOCK_MONOTONIC` nanoseconds.
    pub at_ns: u64,
}

/// A run's timeline plus what the backend wants to say about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Report schema version (bumped on incompatible change).
    pub schema: u32,
    /// `container` or `vm`.
    pub isolation: String,
    /// Instance name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// `CLOCK_MONOTONIC` ns at [`Phase::Start`].
    pub t0_ns: u64,
    /// Phases in the order they were stamped.
    pub phases: Vec<PhaseStamp>,
    /// How the workload ended, once it has.
    pub exit: Option<WorkloadExit>,
    /// Backend counters (e.g. VM exits per device), for benchmarks.
    pub counters: BTreeMap<String, u64>,
}

/// Current [`RunReport::schema`].
pub const REPORT_SCHEMA: u32 = 1;

impl RunReport {
    /// Starts a report now (stamps [`Phase::Start`]).
    pub fn start(isolation: &str, name: &str, image: &str) -> RunReport {
        let t0 = monotonic_ns();
        RunReport {
            schema: REPORT_SCHEMA,
            isolation: isolation.to_string(),
            name: name.to_string(),
            image: image.to_string(),
            t0_ns: t0,
            phases: vec![PhaseStamp {
                phase: Phase::Start,
                at_ns: t0,
            }],
            exit: None,
            counters: BTreeMap::new(),
        }
    }

    /// Stamps `phase` now.
    pub fn mark(&mut self, phase: Phase) {
        self.mark_at(phase, monotonic_ns());
    }

    /// Stamps `phase` at a time taken elsewhere (child process, vCPU thread).
    pub fn mark_at(&mut self, phase: Phase, at_ns: u64) {
        self.phases.push(PhaseStamp { phase, at_ns });
    }

    /// Time of `phase` after t0, if stamped.
    pub fn since_start_ns(&self, phase: Phase) -> Option<u64> {
        self.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.at_ns.saturating_sub(self.t0_ns))
    }

    /// Phases sorted by time, with offset from t0 and delta from the previous one.
    pub fn rows(&self) -> Vec<(Phase, u64, u64)> {
        let mut sorted = self.phases.clone();
        sorted.sort_by_key(|p| p.at_ns);
        let mut prev = self.t0_ns;
        sorted
            .into_iter()
            .map(|p| {
                let since = p.at_ns.saturating_sub(self.t0_ns);
                let delta = p.at_ns.saturating_sub(prev);
                prev = p.at_ns;
                (p.phase, since, delta)
            })
            .collect()
    }

    /// Human-readable table, as `--timings` prints it.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} {} ({}):\n  {:<20} {:>12} {:>12}\n",
            self.isolation, self.name, self.image, "phase", "since start", "step"
        );
        for (phase, since, delta) in self.rows() {
            out.push_str(&format!(
                "  {:<20} {:>9.3} ms {:>9.3} ms\n",
                phase.name(),
                since as f64 / 1e6,
                delta as f64 / 1e6
            ));
        }
        if let Some(e) = &self.exit {
            out.push_str(&format!("  exit: {e}\n"));
        }
        for (k, v) in &self.counters {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        out
    }

    /// JSON, as `--report json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("RunReport serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_sorted_with_deltas() {
        let mut r = RunReport::start("container", "n", "busybox");
        let t0 = r.t0_ns;
        r.mark_at(Phase::Ready, t0 + 3_000_000);
        r.mark_at(Phase::RootfsReady, t0 + 1_000_000);
        let rows = r.rows();
        assert_eq!(rows[0], (Phase::Start, 0, 0));
        assert_eq!(rows[1], (Phase::RootfsReady, 1_000_000, 1_000_000));
        assert_eq!(rows[2], (Phase::Ready, 3_000_000, 2_000_000));
        assert_eq!(r.since_start_ns(Phase::Ready), Some(3_000_000));
        assert_eq!(r.since_start_ns(Phase::VmCreated), None);
    }

    #[test]
    fn json_round_trips_and_names_phases() {
        let mut r = RunReport::start("vm", "n", "busybox");
        r.mark(Phase::Ready);
        r.exit = Some(WorkloadExit::Code(7));
        let j = r.to_json();
        assert!(j.contains("\"ready\""), "{j}");
        let back: RunReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn table_lists_every_phase() {
        let mut r = RunReport::start("container", "n", "busybox");
        r.mark(Phase::PivotDone);
        r.exit = Some(WorkloadExit::Signal(9));
        let t = r.table();
        assert!(t.contains("pivot_done"));
        assert!(t.contains("start"));
        assert!(t.contains("signal 9"), "{t}");
    }
}
