//! duet-shared: what both isolations have in common.
//!
//! The workload spec, the [`Runtime`] trait both backends implement, the
//! phase timeline ([`RunReport`]) every run records, per-instance state
//! directories, and the content-addressed image store.

pub mod agent_abi;
pub mod child_wait;
pub mod clock;
pub mod guest_abi;
pub mod image;
pub mod instance;
pub mod netspec;
pub mod paths;
pub mod report;
pub mod runtime;
pub mod spec;
pub mod testing;

pub use instance::InstanceDir;
pub use report::{Phase, RunReport};
pub use runtime::{ExecRequest, Instance, Launch, RunOptions, Runtime, WorkloadExit};
pub use spec::{Isolation, Resources, WorkloadSpec};
