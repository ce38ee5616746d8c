//! Tiny hand-written guests on the host's /dev/kvm: each proves one piece
//! of the VMM (serial, ready/exit ports, bus routing, HLT, i8042 reset,
//! faults, timeout, console input, the full Linux-style boot path).
//! Machine code is assembled by hand, one instruction per line.
//! Every test skips (and says why) when /dev/kvm cannot be opened.

mod common;
use common::{kvm_usable, tiny_elf};
use duet_shared::report::{Phase, RunReport};
use duet_shared::runtime::WorkloadExit;
use duet_vmm::bus::BusDevice;
use duet_vmm::{
    run_vm_with_sink, ConsoleConfig, ConsoleInput, ConsoleMode, CpuMode, SharedBuffer, Vm,
    VmConfig, VmEnd, VmOptions, VmOutcome,
};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CODE: u64 = 0x1000;
const LONG_CODE: u64 = 0x10_0000;
const TIMEOUT: Duration = Duration::from_secs(60);

struct Guest {
    vm: Vm,
    out: SharedBuffer,
}

fn guest(irqchip: bool, vcpus: u32, mode: ConsoleMode, input: ConsoleInput) -> Guest {
    let mut vm = Vm::new(VmOptions {
        memory_mib: 2,
        vcpus,
        irqchip,
        seccomp: true,
        shared_memory: false,
    })
    .expect("create VM");
    let out = SharedBuffer::default();
    vm.attach_legacy_devices(ConsoleConfig {
        mode,
        sink: Box::new(out.clone()),
        input,
    })
    .expect("attach devices");
    Guest { vm, out }
}

fn run_real(g: Guest, code: &[u8], timeout: Duration) -> (VmOutcome, RunReport, String) {
    let Guest { mut vm, out } = g;
    vm.write_code(CODE, code).unwrap();
    vm.create_vcpus(CpuMode::Real { ip: CODE as u16 }).unwrap();
    let mut report = RunReport::start("vm", "tiny", "none");
    let outcome = vm.run(Some(timeout), &mut report).unwrap();
    (outcome, report, out.contents())
}

fn run_long(g: Guest, code: &[u8]) -> (VmOutcome, RunReport, String) {
    let Guest { mut vm, out } = g;
    vm.write_code(LONG_CODE, code).unwrap();
    let cr3 = vm.setup_long_mode().unwrap();
    vm.create_vcpus(CpuMode::Long {
        rip: LONG_CODE,
        rsi: 0,
        cr3,
    })
    .unwrap();
    let mut report = RunReport::start("vm", "tiny", "none");
    let outcome = vm.run(Some(TIMEOUT), &mut report).unwrap();
    (outcome, report, out.contents())
}

#[test]
fn serial_output_arrives_and_hlt_stops_the_vm() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'h', // mov al, 'h'
        0xee, // out dx, al
        0xb0, b'i', // mov al, 'i'
        0xee, // out dx, al
        0xf4, // hlt
    ];
    let g = guest(false, 1, ConsoleMode::Forward, ConsoleInput::None);
    let (outcome, _, out) = run_real(g, &code, TIMEOUT);
    assert_eq!(outcome.end, VmEnd::Halted);
    assert_eq!(out, "hi");
    assert_eq!(outcome.console_tail, vec!["hi".to_string()]);
    assert_eq!(outcome.counters["vm_exits.io.serial"], 2);
    assert_eq!(outcome.counters["vm_exits.hlt"], 1);
}

#[test]
fn ready_and_exit_ports_report_status_and_stamps() {
    if !kvm_usable() {
        return;
    }
    for (status, expected) in [
        (7u32, WorkloadExit::Code(7)),
        (0x109, WorkloadExit::Signal(9)),
    ] {
        let mut code = vec![
            0xba, 0x10, 0x05, // mov dx, 0x510 (ready)
            0xb0, 0x01, // mov al, 1
            0xee, // out dx, al
            0xba, 0x14, 0x05, // mov dx, 0x514 (exit)
            0x66, 0xb8, // mov eax, imm32
        ];
        code.extend_from_slice(&status.to_le_bytes());
        code.extend_from_slice(&[
            0x66, 0xef, // out dx, eax
            0xeb, 0xfe, // jmp $ (the VMM must stop us)
        ]);
        // Full irqchip and two vCPUs (the second waits for SIPI), as for Linux.
        let g = guest(true, 2, ConsoleMode::Workload, ConsoleInput::None);
        let (outcome, report, _) = run_real(g, &code, TIMEOUT);
        assert_eq!(outcome.end, VmEnd::Exited(expected));
        assert_eq!(outcome.workload_exit().unwrap(), expected);
        let started = report.since_start_ns(Phase::VcpusStarted).unwrap();
        let ready = report.since_start_ns(Phase::Ready).expect("ready stamped");
        let exited = report
            .since_start_ns(Phase::Exited)
            .expect("exited stamped");
        assert!(started <= ready && ready <= exited, "{report:?}");
        assert_eq!(outcome.counters["vm_exits.io.exit_port"], 2);
        assert_eq!(report.counters["vm_exits.io.exit_port"], 2);
    }
}

/// Records accesses and answers reads with a fixed byte.
struct Probe {
    answer: u8,
    log: Arc<Mutex<Vec<String>>>,
}

impl BusDevice for Probe {
    fn read(&mut self, addr: u64, offset: u64, data: &mut [u8]) {
        data.fill(self.answer);
        self.log
            .lock()
            .unwrap()
            .push(format!("r {addr:#x}+{offset} len {}", data.len()));
    }
    fn write(&mut self, addr: u64, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("w {addr:#x}+{offset} {data:02x?}"));
    }
}

#[test]
fn pio_and_mmio_exits_reach_the_right_device_in_long_mode() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0x66, 0xba, 0x00, 0x07, // mov dx, 0x700   (probe port)
        0xec, // in al, dx        -> 0x21
        0x88, 0xc3, // mov bl, al
        0xb8, 0x00, 0x00, 0x00, 0xd0, // mov eax, 0xd0000000 (probe MMIO)
        0xc6, 0x00, 0x5a, // mov byte [rax], 0x5a
        0x8a, 0x48, 0x08, // mov cl, [rax+8]  -> 0x30
        0x00, 0xcb, // add bl, cl
        0x66, 0xba, 0xf0, 0x02, // mov dx, 0x2f0   (nothing there)
        0xec, // in al, dx        -> 0xff
        0x00, 0xc3, // add bl, al
        0x0f, 0xb6, 0xc3, // movzx eax, bl    -> (0x21+0x30+0xff) & 0xff = 0x50
        0x66, 0xba, 0x14, 0x05, // mov dx, 0x514
        0xef, // out dx, eax
        0xf4, // hlt
    ];
    let pio_log = Arc::new(Mutex::new(Vec::new()));
    let mmio_log = Arc::new(Mutex::new(Vec::new()));
    let mut g = guest(false, 1, ConsoleMode::Forward, ConsoleInput::None);
    g.vm.add_io_device(
        "probe",
        0x700,
        4,
        Arc::new(Mutex::new(Probe {
            answer: 0x21,
            log: pio_log.clone(),
        })),
    )
    .unwrap();
    g.vm.add_mmio_device(
        "probe",
        0xd000_0000,
        0x1000,
        Arc::new(Mutex::new(Probe {
            answer: 0x30,
            log: mmio_log.clone(),
        })),
    )
    .unwrap();
    let (outcome, _, _) = run_long(g, &code);
    assert_eq!(outcome.end, VmEnd::Exited(WorkloadExit::Code(0x50)));
    assert_eq!(*pio_log.lock().unwrap(), vec!["r 0x700+0 len 1"]);
    assert_eq!(
        *mmio_log.lock().unwrap(),
        vec!["w 0xd0000000+0 [5a]", "r 0xd0000008+8 len 1"]
    );
    let c = &outcome.counters;
    assert_eq!(c["vm_exits.io.probe"], 1);
    assert_eq!(c["vm_exits.mmio.probe"], 2);
    assert_eq!(c["vm_exits.io.unknown.0x2f0"], 1);
}

#[test]
fn i8042_reset_stops_the_vm_as_reset() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0xe4, 0x64, // in al, 0x64  (status: bit 1 must be clear, "input buffer empty")
        0xa8, 0x02, // test al, 2
        0x75, 0xfa, // jnz back to the in (would spin if the status were 0xff)
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al  -> CPU reset
        0xeb, 0xfe, // jmp $
    ];
    let g = guest(true, 1, ConsoleMode::Forward, ConsoleInput::None);
    let (outcome, _, _) = run_real(g, &code, TIMEOUT);
    assert_eq!(outcome.end, VmEnd::Reset);
    assert_eq!(outcome.counters["vm_exits.io.i8042"], 2);
    let err = outcome.workload_exit().unwrap_err().to_string();
    assert!(err.contains("reset"), "{err}");
}

#[test]
fn a_guest_fault_is_an_error_not_a_hang() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0x0f, 0x0b, // ud2: #UD with an empty IDT -> #GP -> #DF -> triple fault
    ];
    let g = guest(true, 1, ConsoleMode::Forward, ConsoleInput::None);
    let t = Instant::now();
    let (outcome, _, _) = run_long(g, &code);
    assert!(
        matches!(
            outcome.end,
            VmEnd::Shutdown { .. } | VmEnd::InternalError { .. }
        ),
        "{:?}",
        outcome.end
    );
    assert!(t.elapsed() < TIMEOUT);
    let err = outcome.workload_exit().unwrap_err().to_string();
    assert!(
        err.contains("triple fault") || err.contains("internal error"),
        "{err}"
    );
    assert!(err.contains("wrote nothing"), "{err}");
}

#[test]
fn timeout_stops_a_spinning_guest() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0xeb, 0xfe, // jmp $
    ];
    let g = guest(true, 1, ConsoleMode::Forward, ConsoleInput::None);
    let t = Instant::now();
    let (outcome, report, _) = run_real(g, &code, Duration::from_millis(300));
    assert_eq!(outcome.end, VmEnd::Timeout(Duration::from_millis(300)));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(report.since_start_ns(Phase::Exited).is_some());
    assert!(outcome.counters["vm_exits.interrupted"] >= 1);
}

#[test]
fn console_input_reaches_the_guest() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
        0xec, // wait: in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0xfb, // jz wait
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, // in al, dx (received byte)
        0xba, 0x14, 0x05, // mov dx, 0x514
        0xee, // out dx, al (exit code = the byte)
        0xf4, // hlt
    ];
    let (rx, tx) = pipe();
    let mut tx = std::fs::File::from(tx);
    tx.write_all(b"A").unwrap();
    let g = guest(false, 1, ConsoleMode::Forward, ConsoleInput::Fd(rx));
    let (outcome, _, _) = run_real(g, &code, TIMEOUT);
    assert_eq!(outcome.end, VmEnd::Exited(WorkloadExit::Code(0x41)));
}

#[test]
fn workload_mode_shows_only_output_after_ready() {
    if !kvm_usable() {
        return;
    }
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'k', // mov al, 'k'   (the "kernel log")
        0xee, // out dx, al
        0xb0, b'\n', // mov al, '\n'
        0xee,  // out dx, al
        0xba, 0x10, 0x05, // mov dx, 0x510
        0xee, // out dx, al (ready)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'w', // mov al, 'w'   (the workload)
        0xee, // out dx, al
        0xba, 0x14, 0x05, // mov dx, 0x514
        0x30, 0xc0, // xor al, al
        0xee, // out dx, al (exit 0)
        0xf4, // hlt
    ];
    let g = guest(false, 1, ConsoleMode::Workload, ConsoleInput::None);
    let (outcome, _, out) = run_real(g, &code, TIMEOUT);
    assert_eq!(outcome.end, VmEnd::Exited(WorkloadExit::Code(0)));
    assert_eq!(out, "w");
    assert_eq!(outcome.console_tail, vec!["k", "w"]);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn run_vm_boots_an_elf_kernel_the_linux_way() {
    if !kvm_usable() {
        return;
    }
    // 64-bit code entered like Linux: rsi = zero page. It checks the boot
    // protocol magic and the command line pointer, reads the initrd's first
    // byte through the zero page, prints, and reports through the ports.
    let code = [
        0x81, 0xbe, 0x02, 0x02, 0x00, 0x00, 0x48, 0x64, 0x72,
        0x53, // cmp dword [rsi+0x202], "HdrS"
        0x75, 0x33, // jne bad
        0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, // mov eax, [rsi+0x228] (cmd_line_ptr)
        0x80, 0x38, b'q', // cmp byte [rax], 'q'
        0x75, 0x2a, // jne bad
        0x8b, 0x86, 0x18, 0x02, 0x00, 0x00, // mov eax, [rsi+0x218] (ramdisk_image)
        0x0f, 0xb6, 0x18, // movzx ebx, byte [rax]  (first initrd byte)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'b', // mov al, 'b'
        0xee, // out dx, al       (kernel-log byte, hidden in workload mode)
        0x66, 0xba, 0x10, 0x05, // mov dx, 0x510
        0xee, // out dx, al       (ready)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'h', // mov al, 'h'
        0xee, // out dx, al
        0xb0, b'i', // mov al, 'i'
        0xee, // out dx, al
        0x89, 0xd8, // mov eax, ebx      (exit code = initrd byte)
        0x66, 0xba, 0x14, 0x05, // mov dx, 0x514
        0xef, // out dx, eax
        0xeb, 0xfe, // jmp $
        // bad:
        0xb8, 0x63, 0x00, 0x00, 0x00, // mov eax, 99
        0x66, 0xba, 0x14, 0x05, // mov dx, 0x514
        0xef, // out dx, eax
        0xeb, 0xfe, // jmp $
    ];
    // The two jne offsets: first jne at 10 (next 12) -> bad at 12+0x33 = 63.
    assert_eq!(code[63], 0xb8, "bad label");
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, tiny_elf(0x100_0000, &code)).unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, [7u8, 1, 2, 3]).unwrap();
    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel,
        initrd: Some(initrd),
        cmdline: "quiet console=ttyS0".into(),
        memory_mib: 32,
        vcpus: 2,
        timeout: Some(TIMEOUT),
        console: ConsoleMode::Workload,
        stdin: false,
        disks: Vec::new(),
        agent_socket: None,
        fs: Vec::new(),
        net: None,
    };
    let out = SharedBuffer::default();
    let mut report = RunReport::start("vm", "elf", "none");
    let outcome = run_vm_with_sink(&cfg, &mut report, Box::new(out.clone())).unwrap();
    assert_eq!(
        outcome.end,
        VmEnd::Exited(WorkloadExit::Code(7)),
        "{outcome:?}"
    );
    assert_eq!(out.contents(), "hi");
    let order: Vec<Phase> = report.rows().iter().map(|r| r.0).collect();
    for phase in [
        Phase::VmCreated,
        Phase::KernelLoaded,
        Phase::VcpusStarted,
        Phase::Ready,
        Phase::Exited,
    ] {
        assert!(order.contains(&phase), "{phase:?} missing from {order:?}");
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = VmConfig {
        snapshots: Default::default(),
        kernel: dir.path().join("missing-vmlinux"),
        initrd: None,
        cmdline: String::new(),
        memory_mib: 16,
        vcpus: 1,
        timeout: Some(TIMEOUT),
        console: ConsoleMode::Workload,
        stdin: false,
        disks: Vec::new(),
        agent_socket: None,
        fs: Vec::new(),
        net: None,
    };
    let chain = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    };
    let mut report = RunReport::start("vm", "bad", "none");
    let err = chain(&duet_vmm::run_vm(&base, &mut report).unwrap_err());
    assert!(
        err.contains("missing-vmlinux") && err.contains("images/kernel/build.sh"),
        "{err}"
    );

    let not_kernel = dir.path().join("notes.txt");
    std::fs::write(&not_kernel, "just text\n").unwrap();
    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel: not_kernel,
        ..base.clone()
    };
    let err = chain(&duet_vmm::run_vm(&cfg, &mut report).unwrap_err());
    assert!(err.contains("notes.txt is not a kernel"), "{err}");

    let big = dir.path().join("big-vmlinux");
    std::fs::write(&big, tiny_elf(0x100_0000, &[0xf4])).unwrap();
    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel: big.clone(),
        memory_mib: 8,
        ..base.clone()
    };
    let err = chain(&duet_vmm::run_vm(&cfg, &mut report).unwrap_err());
    assert!(
        err.contains("big-vmlinux")
            && err.contains("at least 17 MiB")
            && err.contains("raise memory_mib"),
        "{err}"
    );

    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel: big,
        initrd: Some(dir.path().join("missing-initrd")),
        memory_mib: 32,
        ..base
    };
    let err = chain(&duet_vmm::run_vm(&cfg, &mut report).unwrap_err());
    assert!(err.contains("missing-initrd"), "{err}");
}

#[test]
fn doctor_measures_this_hosts_kvm() {
    if !kvm_usable() {
        return;
    }
    let t = Instant::now();
    let d = duet_vmm::doctor::diagnose();
    eprintln!("{d}");
    assert!(d.error.is_none(), "{d}");
    let ips = d.instructions_per_sec.expect("a rate");
    assert!(ips > 0.0);
    assert_ne!(d.verdict, duet_vmm::doctor::Verdict::Unavailable);
    assert_eq!(d.verdict, duet_vmm::doctor::verdict_for(ips));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}
