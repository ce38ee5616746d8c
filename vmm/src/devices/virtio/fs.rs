//! virtio-fs over vhost-user: a host directory shared with the guest, the
//! way an OCI bundle's rootfs (prepared by the engine's snapshotter) reaches
//! a microVM so that the engine sees the workload's writes as it would
//! with a container.
//!
//! The device model is duet's (virtio-mmio registers, the config space with
//! the mount tag); the file system is served by a vhost-user backend in its
//! own process, virtiofsd (Debian's QEMU ships `/usr/lib/qemu/virtiofsd`):
//! it maps guest memory (a memfd, [`crate::memory::create_shared_guest_memory`]),
//! pops FUSE requests from the rings itself, and signals completions on the
//! transport's irqfd. The VMM speaks the vhost-user protocol to it through
//! the `vhost` crate's frontend: set-up at construction (owner, features,
//! memory table), the rings when the driver sets DRIVER_OK, and a stop of
//! the rings when it resets the device.
//!
//! Why vhost-user and not a FUSE server inside duet: the server is the
//! largest attack surface of virtio-fs (every request is parsed there), and
//! in a separate process it runs sandboxed by virtiofsd itself (its own
//! namespaces, seccomp), outside the VMM's jail, while the jailed VMM keeps
//! only the connected socket.
//!
//! Queue notifications still exit to the VMM (as for duet's other devices,
//! see [`super`]); the notify writes the queue's kick eventfd, which the
//! backend polls. Interrupts do not pass through the VMM at all, so
//! InterruptStatus reports the used-buffer bit whenever the device is live
//! ([`VirtioDevice::backend_interrupts`]).

use super::{
    Activation, QueueFailure, QueueOutcome, VirtioDevice, F_EVENT_IDX, F_INDIRECT_DESC,
    F_VERSION_1, TYPE_FS,
};
use crate::memory::GuestMemory;
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

/// Queues: one high-priority queue (FUSE_INTERRUPT, FORGET) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue (virtiofsd accepts up to 1024).
pub const QUEUE_SIZE: u16 = 1024;
/// Longest mount tag the config space holds (virtio spec 5.11.4).
pub const MAX_TAG_LEN: usize = 36;

/// Virtio features duet passes on from the backend (others are dropped).
const PASSED_FEATURES: u64 = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC;

/// Errors connecting to the backend; each names the device's tag.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or not printable ASCII.
    #[error("virtio-fs tag {tag:?}: 1 to {MAX_TAG_LEN} printable ASCII characters")]
    Tag {
        /// The tag.
        tag: String,
    },
    /// A vhost-user request failed.
    #[error("virtio-fs {tag}: vhost-user {step} with the backend (virtiofsd)")]
    Backend {
        /// The tag.
        tag: String,
        /// The request.
        step: &'static str,
        /// Cause.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks a feature duet needs.
    #[error(
        "virtio-fs {tag}: the backend does not offer VIRTIO_F_VERSION_1 (features {features:#x})"
    )]
    Features {
        /// The tag.
        tag: String,
        /// What it offered.
        features: u64,
    },
    /// Guest memory is not file backed, so the backend could not map it.
    #[error("virtio-fs {tag}: guest memory must be shared (a memfd) for a vhost-user backend")]
    PrivateMemory {
        /// The tag.
        tag: String,
    },
    /// An eventfd could not be created.
    #[error("virtio-fs {tag}: eventfd")]
    EventFd {
        /// The tag.
        tag: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-fs device whose requests a vhost-user backend serves.
pub struct VhostUserFs {
    name: String,
    tag: String,
    config: Vec<u8>,
    frontend: Frontend,
    /// Virtio features offered to the driver (the backend's, filtered).
    features: u64,
    /// Whether the backend speaks vhost-user protocol features.
    protocol: bool,
    kicks: Vec<EventFd>,
    started: Vec<bool>,
    queue_sizes: [u16; NUM_QUEUES],
    kicked: u64,
    activations: u64,
    backend_errors: u64,
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= MAX_TAG_LEN && tag.bytes().all(|b| b.is_ascii_graphic())
}

impl VhostUserFs {
    /// Sets up the backend on `stream` (connected to virtiofsd's socket):
    /// owner, features, protocol features and guest memory's table.
    pub fn connect(
        stream: UnixStream,
        tag: &str,
        mem: &GuestMemory,
    ) -> Result<VhostUserFs, FsError> {
        if !valid_tag(tag) {
            return Err(FsError::Tag { tag: tag.into() });
        }
        let err = |step: &'static str| {
            let tag = tag.to_string();
            move |source| FsError::Backend { tag, step, source }
        };
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if offered & F_VERSION_1 == 0 {
            return Err(FsError::Features {
                tag: tag.into(),
                features: offered,
            });
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol = offered & protocol_bit != 0;
        if protocol {
            // The frontend asks for protocol features only once the bit is
            // acked; libvhost-user refuses any SET_FEATURES without VERSION_1.
            // The driver's own features follow at DRIVER_OK.
            frontend
                .set_features(protocol_bit | F_VERSION_1)
                .map_err(err("SET_FEATURES"))?;
            let p = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(p & VhostUserProtocolFeatures::REPLY_ACK)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
        }
        let mut regions = Vec::new();
        for r in mem.iter() {
            regions.push(
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| FsError::PrivateMemory { tag: tag.into() })?,
            );
        }
        frontend
            .set_mem_table(&regions)
            .map_err(err("SET_MEM_TABLE"))?;
        let kicks = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| FsError::EventFd {
                tag: tag.into(),
                source,
            })?;
        let mut config = vec![0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(VhostUserFs {
            name: format!("virtio-fs.{tag}"),
            tag: tag.into(),
            config,
            frontend,
            features: offered & PASSED_FEATURES,
            protocol,
            kicks,
            started: vec![false; NUM_QUEUES],
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            kicked: 0,
            activations: 0,
            backend_errors: 0,
        })
    }

    /// The mount tag the guest mounts (`mount -t virtiofs TAG DIR`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn start_rings(&mut self, a: &Activation<'_>) -> Result<(), vhost::Error> {
        let mut features = a.acked_features;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend.set_features(features)?;
        let host = |addr: u64| {
            a.mem
                .get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for (i, q) in a.queues.iter().enumerate().take(NUM_QUEUES) {
            if !q.ready() {
                continue;
            }
            self.frontend.set_vring_num(i, q.size())?;
            self.frontend.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: q.max_size(),
                    queue_size: q.size(),
                    flags: 0,
                    desc_table_addr: host(q.desc_table())?,
                    used_ring_addr: host(q.used_ring())?,
                    avail_ring_addr: host(q.avail_ring())?,
                    log_addr: None,
                },
            )?;
            self.frontend.set_vring_base(i, 0)?;
            // Completions go straight to the guest: the backend writes the irqfd.
            self.frontend.set_vring_call(i, a.irq)?;
            self.frontend.set_vring_kick(i, &self.kicks[i])?;
            if self.protocol {
                self.frontend.set_vring_enable(i, true)?;
            }
            self.started[i] = true;
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: &Activation<'_>) -> Result<(), String> {
        self.activations += 1;
        self.start_rings(a).map_err(|e| {
            self.backend_errors += 1;
            format!("{}: {e}", self.name)
        })
    }

    fn backend_interrupts(&self) -> bool {
        true
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops a ring in the backend (vhost-user spec).
        for i in 0..NUM_QUEUES {
            if std::mem::take(&mut self.started[i]) && self.frontend.get_vring_base(i).is_err() {
                self.backend_errors += 1;
            }
        }
    }

    fn process(
        &mut self,
        index: usize,
        _queues: &mut [Queue],
        _mem: &GuestMemory,
    ) -> Result<QueueOutcome, QueueFailure> {
        if let Some(k) = self.kicks.get(index).filter(|_| self.started[index]) {
            self.kicked += 1;
            // A full counter still means "kicked": nothing is lost.
            let _ = k.write(1);
        }
        Ok(QueueOutcome::default())
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let n = &self.name;
        BTreeMap::from([
            (format!("virtio.{n}.kicks"), self.kicked),
            (format!("virtio.{n}.activations"), self.activations),
            (format!("virtio.{n}.backend_errors"), self.backend_errors),
        ])
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tag_tests {
    use super::*;

    #[test]
    fn tags_are_short_printable_ascii() {
        assert!(valid_tag("duet-root"));
        assert!(valid_tag(&"a".repeat(MAX_TAG_LEN)));
        for bad in ["", "with space", "tab\t", "ü", &"a".repeat(MAX_TAG_LEN + 1)] {
            assert!(!valid_tag(bad), "{bad:?}");
        }
    }
}
