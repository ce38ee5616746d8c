//! Picks the backend for an isolation: the one place the CLI meets both crates.

use anyhow::{bail, Result};
use duet_container::ContainerRuntime;
use duet_shared::{Isolation, Runtime};

/// The runtime implementing `isolation`.
pub fn for_isolation(isolation: Isolation) -> Result<Box<dyn Runtime>> {
    match isolation {
        Isolation::Container => Ok(Box::new(ContainerRuntime::new())),
        Isolation::Vm => bail!("the microVM backend (--isolation vm) is not available yet"),
    }
}

/// Every backend, for `duet gc` and `duet rm`.
pub fn all() -> Vec<Box<dyn Runtime>> {
    vec![Box::new(ContainerRuntime::new())]
}
