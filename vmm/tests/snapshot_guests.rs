//! Snapshot and restore with a tiny guest on the host's /dev/kvm: a
//! real-mode loop that keeps a counter in a register (ecx) and copies it to
//! memory each turn. A restored VM can only count on from the saved value
//! if its registers and its memory both came back; a clone's writes stay
//! its own (the file is mapped copy-on-write). Bad files are refused.
//! Every test skips (and says why) when /dev/kvm cannot be opened.

mod common;
use common::kvm_usable;
use duet_shared::report::RunReport;
use duet_vmm::memory::GuestMemory;
use duet_vmm::snapshot;
use duet_vmm::{
    ConsoleConfig, ConsoleInput, ConsoleMode, CpuMode, SharedBuffer, Vm, VmEnd, VmOptions, VmmError,
};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x1000;
const COUNTER: u64 = 0x2000;

/// Prints 'S' once, then counts in ecx forever, storing it at COUNTER.
const SPIN: [u8; 18] = [
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'S', // mov al, 'S'
    0xee, // out dx, al
    0x66, 0x31, 0xc9, // xor ecx, ecx
    0x66, 0x41, // loop: inc ecx
    0x66, 0x89, 0x0e, 0x00, 0x20, // mov [0x2000], ecx
    0xeb, 0xf7, // jmp loop
];

fn console(out: &SharedBuffer) -> ConsoleConfig {
    ConsoleConfig {
        mode: ConsoleMode::Forward,
        sink: Box::new(out.clone()),
        input: ConsoleInput::None,
    }
}

fn counter(mem: &GuestMemory) -> u32 {
    mem.read_obj::<u32>(GuestAddress(COUNTER)).unwrap()
}

fn wait_for_count(mem: &GuestMemory, at_least: u32) {
    let t = Instant::now();
    while counter(mem) < at_least {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the guest does not count"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Boots SPIN, snapshots it once it counted a little, lets it run on
/// until `run_for`. Returns the snapshot file, the VM's own final count
/// and its console.
fn snapshot_a_spinning_guest(run_for: Duration) -> (std::fs::File, u32, String) {
    snapshot_a_spinning_guest_with(run_for, None)
}

/// A datagram socketpair standing in for a tap (both keep frame
/// boundaries); the VM gets one end.
fn fake_tap() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: both are new descriptors only we hold.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// As [`snapshot_a_spinning_guest`], with a virtio-net device on `tap` if given.
fn snapshot_a_spinning_guest_with(
    run_for: Duration,
    net: Option<(std::os::fd::OwnedFd, [u8; 6])>,
) -> (std::fs::File, u32, String) {
    let out = SharedBuffer::default();
    let mut vm = Vm::new(VmOptions {
        memory_mib: 2,
        vcpus: 1,
        irqchip: true,
        seccomp: true,
        shared_memory: false,
    })
    .unwrap();
    vm.attach_legacy_devices(console(&out)).unwrap();
    if let Some((tap, mac)) = net {
        vm.attach_net(tap, mac).unwrap();
    }
    vm.set_kernel_identity(Some("tiny-spin".into()));
    vm.write_code(CODE, &SPIN).unwrap();
    vm.create_vcpus(CpuMode::Real { ip: CODE as u16 }).unwrap();
    let mem = vm.memory().clone();
    let handle = vm.snapshot_handle();
    let t = std::thread::spawn(move || {
        let mut report = RunReport::start("vm", "tiny", "none");
        vm.run(Some(run_for), &mut report).unwrap()
    });
    wait_for_count(&mem, 1000);
    let file = tempfile::tempfile().unwrap();
    let stats = handle
        .snapshot(
            file.try_clone().unwrap(),
            serde_json::json!({"who": "test"}),
        )
        .unwrap();
    assert!(stats.memory_bytes_written >= 4096, "{stats:?}");
    assert!(
        stats.memory_bytes_written < 2 << 20,
        "zero pages must be holes: {stats:?}"
    );
    let at_snapshot = counter(&mem);
    // The VM goes on after its snapshot.
    wait_for_count(&mem, at_snapshot + 1000);
    let outcome = t.join().unwrap();
    assert_eq!(outcome.end, VmEnd::Timeout(run_for));
    (file, counter(&mem), out.contents())
}

fn saved_counter(snap: &snapshot::Snapshot) -> u32 {
    let r = snap.state.memory[0];
    assert_eq!(r.guest_addr, 0);
    let mut b = [0u8; 4];
    snap.file
        .read_exact_at(&mut b, r.file_offset + COUNTER)
        .unwrap();
    u32::from_le_bytes(b)
}

fn restore(snap: &snapshot::Snapshot) -> Result<(Vm, SharedBuffer), VmmError> {
    restore_with(snap, None)
}

fn restore_with(
    snap: &snapshot::Snapshot,
    net: Option<(std::os::fd::OwnedFd, [u8; 6])>,
) -> Result<(Vm, SharedBuffer), VmmError> {
    let out = SharedBuffer::default();
    let vm = Vm::restore(
        snap,
        duet_vmm::vm::RestoreConfig {
            console: console(&out),
            disks: Vec::new(),
            agent_listener: None,
            net,
            seccomp: true,
        },
    )?;
    Ok((vm, out))
}

/// Runs a restored VM until it counted `more` past `from`, then stops it.
fn run_restored(vm: Vm, from: u32, more: u32) -> u32 {
    let mem = vm.memory().clone();
    let first = counter(&mem);
    assert_eq!(first, from, "a restored guest starts at the saved count");
    let t = std::thread::spawn(move || {
        let mut report = RunReport::start("vm", "tiny", "none");
        vm.run(Some(Duration::from_secs(2)), &mut report).unwrap()
    });
    let outcome = t.join().unwrap();
    assert_eq!(outcome.end, VmEnd::Timeout(Duration::from_secs(2)));
    let last = counter(&mem);
    assert!(
        last > from + more,
        "the restored guest counted from {from} to {last}: registers or memory were not restored"
    );
    last
}

#[test]
fn a_restored_vm_goes_on_where_its_snapshot_was_taken() {
    if !kvm_usable() {
        return;
    }
    let (file, original_end, console) = snapshot_a_spinning_guest(Duration::from_secs(2));
    assert_eq!(console, "S");
    let snap = snapshot::open(file).unwrap();
    assert_eq!(snap.state.user, serde_json::json!({"who": "test"}));
    assert_eq!(snap.state.guest_kernel.as_deref(), Some("tiny-spin"));
    let saved = saved_counter(&snap);
    assert!(
        saved >= 1000 && saved < original_end,
        "{saved} {original_end}"
    );
    let (vm, out) = restore(&snap).unwrap();
    run_restored(vm, saved, 100);
    assert_eq!(
        out.contents(),
        "",
        "the restored guest must not run its start again"
    );
}

#[test]
fn clones_of_one_snapshot_each_keep_their_own_writes() {
    if !kvm_usable() {
        return;
    }
    let (file, _, _) = snapshot_a_spinning_guest(Duration::from_millis(500));
    let snap = snapshot::open(file).unwrap();
    let saved = saved_counter(&snap);
    let (a, _) = restore(&snap).unwrap();
    let (b, _) = restore(&snap).unwrap();
    let a_mem = a.memory().clone();
    run_restored(a, saved, 100);
    // A's writes reached neither the file nor B.
    assert_eq!(saved_counter(&snap), saved);
    assert_eq!(counter(b.memory()), saved);
    run_restored(b, saved, 100);
    assert_ne!(counter(&a_mem), saved);
}

#[test]
fn a_network_device_is_saved_and_a_clone_brings_its_own_tap() {
    if !kvm_usable() {
        return;
    }
    const TEMPLATE_MAC: [u8; 6] = [0x02, 0xd0, 10, 0, 0, 2];
    const CLONE_MAC: [u8; 6] = [0x02, 0xd0, 10, 0, 0, 3];
    let (tap, _peer) = fake_tap();
    let (file, _, _) =
        snapshot_a_spinning_guest_with(Duration::from_millis(500), Some((tap, TEMPLATE_MAC)));
    let snap = snapshot::open(file).unwrap();
    let nets: Vec<_> = snap
        .state
        .devices
        .virtio
        .iter()
        .filter_map(|v| match v.device {
            snapshot::VirtioDeviceState::Net { mac } => Some(mac),
            _ => None,
        })
        .collect();
    assert_eq!(nets, [TEMPLATE_MAC], "the device and its MAC are saved");

    // Without a tap of its own a clone is refused, naming the device.
    let chain = error_sources(&restore(&snap).err().expect("no tap given"));
    assert!(chain.contains("network device"), "{chain}");

    // With one it restores and runs on from the saved count.
    let (tap, _peer) = fake_tap();
    let saved = saved_counter(&snap);
    let (vm, _) = restore_with(&snap, Some((tap, CLONE_MAC))).unwrap();
    run_restored(vm, saved, 100);

    // A tap for a snapshot without a network device is refused too.
    let (file, _, _) = snapshot_a_spinning_guest(Duration::from_millis(300));
    let plain = snapshot::open(file).unwrap();
    let (tap, _peer) = fake_tap();
    let chain = error_sources(
        &restore_with(&plain, Some((tap, CLONE_MAC)))
            .err()
            .expect("a tap for no device"),
    );
    assert!(chain.contains("has none"), "{chain}");
}

fn reopen(file: &std::fs::File) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    let mut src = file.try_clone().unwrap();
    src.seek(SeekFrom::Start(0)).unwrap();
    std::io::copy(&mut src, &mut f).unwrap();
    f.flush().unwrap();
    f
}

fn refused(f: std::fs::File) -> String {
    match snapshot::open(f) {
        Ok(_) => panic!("a bad snapshot was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupted_truncated_and_foreign_snapshots_are_refused() {
    if !kvm_usable() {
        return;
    }
    let (file, _, _) = snapshot_a_spinning_guest(Duration::from_millis(300));
    let len = file.metadata().unwrap().len();

    // A flipped byte in the state part.
    let f = reopen(&file);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len - 10).unwrap();
    f.write_all_at(&[b[0] ^ 0x55], len - 10).unwrap();
    let e = refused(f);
    assert!(e.contains("checksum"), "{e}");

    // Not a snapshot at all.
    let f = reopen(&file);
    f.write_all_at(b"NOTASNAP", 0).unwrap();
    assert!(refused(f).contains("magic"));

    // Another format version.
    let f = reopen(&file);
    f.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
    assert!(refused(f).contains("format 99"));

    // Cut short: the state lies past the end.
    let f = reopen(&file);
    f.set_len(len / 2).unwrap();
    assert!(refused(f).contains("truncated"));

    // Taken on another CPU, or by another duet: refused at restore.
    let mut snap = snapshot::open(reopen(&file)).unwrap();
    snap.state.host.vendor = "CyrixInstead".into();
    let chain = error_sources(&restore(&snap).err().expect("another CPU"));
    assert!(chain.contains("CyrixInstead"), "{chain}");
    let mut snap = snapshot::open(reopen(&file)).unwrap();
    snap.state.duet_version = "0.0.1".into();
    let chain = error_sources(&restore(&snap).err().expect("another duet"));
    assert!(chain.contains("duet 0.0.1"), "{chain}");
}

fn error_sources(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
