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

/// Prints why `test` skips and returns true ([`duet_shared::testing::skip`]).
pub fn skip(test: &str, why: &str) -> bool {
    duet_shared::testing::skip(test, why)
}

/// An ELF64 executable with one PT_LOAD segment holding `code` at physical
/// address `paddr`, entered there: what the loader takes for a vmlinux.
pub fn tiny_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 64 + 56];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut f[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes());
    ph[24..32].copy_from_slice(&paddr.to_le_bytes());
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(code);
    f
}
