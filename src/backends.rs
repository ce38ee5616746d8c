//! Picks the backend for an isolation: the one place the CLI meets both crates.

use duet_container::ContainerRuntime;
use duet_shared::{Isolation, Runtime};
use duet_vmm::runtime::VmRuntime;

/// The runtime implementing `isolation`.
pub fn for_isolation(isolation: Isolation) -> Box<dyn Runtime> {
    match isolation {
        Isolation::Container => Box::new(ContainerRuntime::new()),
        Isolation::Vm => Box::new(vm()),
    }
}

/// The VM backend, its jailed VMM in cgroups made by the container backend's code.
fn vm() -> VmRuntime {
    VmRuntime::with_host_cgroups(Box::new(duet_container::cgroup::InstanceCgroups))
}

/// Every backend, for `duet gc` and `duet rm`.
pub fn all() -> Vec<Box<dyn Runtime>> {
    vec![Box::new(ContainerRuntime::new()), Box::new(vm())]
}
