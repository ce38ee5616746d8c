//! Shared by the tiny-guest tests: whether /dev/kvm can be used.

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
