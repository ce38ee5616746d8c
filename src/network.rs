//! The bridge network around either backend: an address and published
//! ports before the instance is made, a container's `eth0` once its init
//! exists, all of it undone on delete and by `duet gc` (see duet-network).

use duet_network::{Attachment, Network};
use duet_shared::runtime::{BackendError, Instance, VmNetwork};
use duet_shared::spec::NetworkMode;
use duet_shared::{ExecRequest, InstanceDir, Launch, RunReport, Runtime, WorkloadExit};
use std::path::{Path, PathBuf};

/// Where an instance's attachment is recorded (for `ps` and `inspect`).
pub const ATTACHMENT_FILE: &str = "network.json";

/// A backend whose instances on the `bridge` network get an address.
pub struct Networked {
    inner: Box<dyn Runtime>,
    root: PathBuf,
}

impl Networked {
    /// `inner` with the network of state root `root`.
    pub fn new(inner: Box<dyn Runtime>, root: PathBuf) -> Networked {
        Networked { inner, root }
    }
}

/// The attachment recorded in instance directory `dir`, if any.
pub fn recorded(dir: &Path) -> Option<Attachment> {
    let text = std::fs::read(dir.join(ATTACHMENT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

impl Runtime for Networked {
    fn isolation(&self) -> &'static str {
        self.inner.isolation()
    }

    fn create(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<Box<dyn Instance>, BackendError> {
        if launch.spec.network != Some(NetworkMode::Bridge) {
            return self.inner.create(launch, report);
        }
        let net = Network::open(&self.root)?;
        let id = launch.instance.id();
        let att = net.attach(id, &launch.spec.ports, &launch.spec.dns)?;
        let record = launch.instance.path().join(ATTACHMENT_FILE);
        let vm = self.inner.isolation() == "vm";
        let made = std::fs::write(&record, serde_json::to_vec_pretty(&att)?)
            .map_err(|e| -> BackendError { format!("writing {}: {e}", record.display()).into() })
            .and_then(|()| {
                if !vm {
                    return self.inner.create(launch, report);
                }
                // The tap is on the bridge before the VMM starts; the guest
                // configures eth0 and gets resolv.conf and hosts from its config.
                let tap = net.tap_for_vm(&att)?;
                let vm_net = VmNetwork {
                    tap: std::sync::Arc::new(tap),
                    mac: att.mac(),
                    address: att.address,
                    prefix: att.prefix,
                    gateway: att.gateway,
                    resolv_conf: duet_network::files::resolv_conf(&att.dns),
                    hosts: duet_network::files::hosts(att.address, &launch.spec.name),
                };
                let with_net = Launch {
                    spec: launch.spec,
                    image: launch.image,
                    layers: launch.layers.clone(),
                    instance: launch.instance,
                    options: launch.options,
                    network: Some(&vm_net),
                };
                self.inner.create(&with_net, report)
            });
        let inst = match made {
            Ok(i) => i,
            Err(e) => {
                let _ = net.detach(&att);
                return Err(e);
            }
        };
        if !vm {
            if let Err(e) = net.connect_container(&att, inst.pid(), &launch.spec.name) {
                let _ = inst.delete();
                let _ = net.detach(&att);
                return Err(e.into());
            }
        }
        Ok(Box::new(Attached {
            inner: Some(inst),
            net,
            att,
        }))
    }

    fn exec(&self, dir: &InstanceDir, request: &ExecRequest) -> Result<WorkloadExit, BackendError> {
        self.inner.exec(dir, request)
    }

    fn kill_recorded(&self, dir: &InstanceDir, signal: i32) -> Result<(), BackendError> {
        self.inner.kill_recorded(dir, signal)
    }

    fn gc_instance(&self, id: &str) -> Result<(), BackendError> {
        self.inner.gc_instance(id)?;
        gc_owner(&self.root, id)
    }
}

/// The network of `root` if it was ever used (its state directory exists);
/// `duet gc` makes none.
fn used_network(root: &Path) -> Result<Option<Network>, BackendError> {
    let cfg = duet_network::NetworkConfig::load(root)?;
    if !cfg.state_dir(root).exists() {
        return Ok(None);
    }
    Ok(Some(Network::open(root)?))
}

/// Releases what instance `id` holds on the network of `root`, if that network was ever used.
pub fn gc_owner(root: &Path, id: &str) -> Result<(), BackendError> {
    if let Some(net) = used_network(root)? {
        net.gc_owner(id)?;
    }
    Ok(())
}

/// Lease owners of the network of `root` that no instance directory names any more.
pub fn orphan_owners(root: &Path) -> Result<Vec<String>, BackendError> {
    let Some(net) = used_network(root)? else {
        return Ok(Vec::new());
    };
    let ids = InstanceDir::list_ids(root)?;
    let mut owners: Vec<String> = net.leases()?.into_iter().map(|(_, o)| o).collect();
    owners.retain(|o| !ids.contains(o));
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// An instance with an address; delete gives it back.
struct Attached {
    inner: Option<Box<dyn Instance>>,
    net: Network,
    att: Attachment,
}

impl Attached {
    fn inner(&self) -> &dyn Instance {
        self.inner.as_deref().expect("present until delete")
    }
}

impl Instance for Attached {
    fn start(&mut self, report: &mut RunReport) -> Result<(), BackendError> {
        self.inner
            .as_mut()
            .expect("present until delete")
            .start(report)
    }
    fn state(&self) -> duet_shared::instance::Status {
        self.inner().state()
    }
    fn pid(&self) -> i32 {
        self.inner().pid()
    }
    fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner().exit_fd()
    }
    fn kill(&self, signal: i32) -> Result<(), BackendError> {
        self.inner().kill(signal)
    }
    fn wait(&mut self, report: &mut RunReport) -> Result<WorkloadExit, BackendError> {
        self.inner
            .as_mut()
            .expect("present until delete")
            .wait(report)
    }
    fn delete(mut self: Box<Self>) -> Result<(), BackendError> {
        let deleted = self.inner.take().expect("present until delete").delete();
        let detached = self.net.detach(&self.att);
        deleted?;
        detached?;
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Dropped without delete (an error path): the instance's own drop
        // kills the workload; its address and ports go with it.
        if let Some(i) = self.inner.take() {
            drop(i);
            let _ = self.net.detach(&self.att);
        }
    }
}
