//! duet-vmm

pub mod rootfs;
