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
        Err(e) => {
            if std::env::var_os("DUET_TEST_STRICT").is_some_and(|v| v == "1") {
                panic!("/dev/kvm cannot be opened ({e}) and DUET_TEST_STRICT=1 forbids skipping");
            }
            eprintln!("skipping: /dev/kvm cannot be opened ({e}); these tests need KVM");
            false
        }
    }
}
