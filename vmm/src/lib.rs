//! duet-vmm
