//! Shared by the tiny-guest tests: whether /dev/kvm can be used, skipping,
//! and a minimal ELF "kernel" for the Linux boot path.

#![allow(dead_code)]

/// Whether /dev/kvm opens; otherwise prints why the test skips. Under
/// `DUET_TEST_STRICT=1` (scripts/test.sh, CI) a missing KVM fails instead.
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => !duet_shared::testing::skip(
            &duet_shared::testing::this_test(),
            &format!("/dev/kvm cannot be opened ({e}); these tests need KVM"),
        ),
    }
}

/// An ELF64 executable with one PT_LOAD segment holding `code` at physical
/// address `paddr`, entered there: what the loader takes for a vmlinux.
pub fn tiny_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
    duet_vmm::loader::tiny_elf(paddr, code, code.len() as u64)
}
