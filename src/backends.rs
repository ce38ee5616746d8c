//! Picks the backend for an isolation: the one place the CLI meets both crates.

use crate::network::Networked;
use duet_container::ContainerRuntime;
use duet_shared::paths::state_root;
use duet_shared::{Isolation, Runtime};
use duet_vmm::runtime::VmRuntime;

/// The runtime implementing `isolation`, on the network of the state root.
pub fn for_isolation(isolation: Isolation) -> Box<dyn Runtime> {
    let inner: Box<dyn Runtime> = match isolation {
        Isolation::Container => Box::new(ContainerRuntime::new()),
        Isolation::Vm => Box::new(vm()),
    };
    Box::new(Networked::new(inner, state_root()))
}

/// The VM backend, its jailed VMM in cgroups made by the container backend's code.
fn vm() -> VmRuntime {
    VmRuntime::with_host_cgroups(Box::new(duet_container::cgroup::InstanceCgroups))
}

/// Every backend, for `duet gc` and `duet rm`.
pub fn all() -> Vec<Box<dyn Runtime>> {
    vec![
        for_isolation(Isolation::Container),
        for_isolation(Isolation::Vm),
    ]
}
