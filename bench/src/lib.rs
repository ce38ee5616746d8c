//! duet-bench: the measurements behind `duet bench`.
//!
//! Scenarios take a runner (a [`startup::Starter`] or an
//! [`instances::IdleLauncher`]) so the CLI can plug in duet's own backends
//! (as a `duet run` subprocess) and peers ([`oci`]: runc, crun; [`qemu`]:
//! QEMU microvm, [`firecracker`]: Firecracker, both on duet's guest kernel
//! and initramfs). Results go
//! into a [`report::Report`], rendered as JSON, Markdown or HTML with SVG
//! charts. The isolation scenario compares [`duet_probe`] reports.
//!
//! The `duet bench` and `duet demo` commands (src/cmd/bench.rs, demo.rs in
//! the duet binary) wire these to `duet run` subprocesses and, where this
//! host's KVM does not accelerate, to the nested-KVM testbed for VM rows.
//!
//! Entry points: [`startup::run`], [`instances::measure_memory`],
//! [`instances::run_density`] (or [`instances::run_density_observed`] to
//! look at the instances at each point, e.g. their disk use with
//! [`disk::usage_bytes_one_fs`]), [`isolation::compare`], [`host::collect`],
//! [`startup::measure_harness_overhead`], [`report::render_markdown`],
//! [`report::render_html`], [`report::render_json`].

pub mod charts;
pub mod detached;
pub mod disk;
pub mod docker;
pub mod firecracker;
pub mod host;
pub mod instances;
pub mod isolation;
pub mod lifecycle;
pub mod memory;
pub mod network;
pub mod oci;
pub mod pristine;
pub mod qemu;
pub mod report;
pub mod startup;
pub mod stats;

use serde::{Deserialize, Serialize};

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Namespaces on the host kernel (duet container, runc, crun).
    Container,
    /// A guest kernel under KVM (duet vm, QEMU microvm).
    Vm,
    /// A bare host process (baseline).
    Process,
}

impl Kind {
    /// `vm` is [`Kind::Vm`]; anything else a duet isolation can be is a container.
    pub fn of_isolation(isolation: &str) -> Kind {
        if isolation == "vm" {
            Kind::Vm
        } else {
            Kind::Container
        }
    }
}

/// An error and its `source()` chain on one line (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
