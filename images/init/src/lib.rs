//! duet-init's library half: what the host and the guest init share.
//!
//! The binary (`src/main.rs`) is PID 1 in duet's microVM guests. This library
//! holds the parts that are not tied to being PID 1, so they are unit-tested
//! on the host and so duet-vmm writes the very config struct the init reads:
//! the workload config ([`config`]), the disk root's names and mounts
//! ([`disk_root`]), files handed in beside the root ([`files`]), command lookup ([`command`]), the
//! exit-port encoding ([`status`]), port access ([`ports`]) and the guest
//! agent that serves `duet exec` ([`agent`]).

pub mod agent;
pub mod command;
pub mod config;
pub mod disk_root;
pub mod files;
pub mod net;
pub mod ports;
pub mod status;
pub mod warm;

pub use config::{GuestWorkload, INIT_PATH, WORKLOAD_PATH};
