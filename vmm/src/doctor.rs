//! `duet doctor`: does this host's KVM accelerate guests?
//!
//! Runs a tiny real-mode guest that writes the ready port, counts down a
//! `dec ecx; jnz` loop, and writes the exit port; the two exits' host
//! timestamps time the loop. A short calibration loop runs first; only
//! when it shows hardware speed is the full 10-million-iteration loop run,
//! so the check ends within seconds even on an emulating KVM.

use crate::console::{ConsoleMode, SharedBuffer};
use crate::vm::{ConsoleConfig, ConsoleInput, Vm, VmOptions};
use crate::{CpuMode, VmEnd};
use duet_shared::report::{Phase, RunReport};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Iterations of the calibration loop (~0.15 s on a 1.5 M instr/s emulator).
pub const CALIBRATION_ITERATIONS: u32 = 100_000;
/// Iterations of the full loop (milliseconds on hardware KVM).
pub const FULL_ITERATIONS: u32 = 10_000_000;
/// At or above this many guest instructions per second KVM counts as accelerated.
pub const ACCELERATED_IPS: f64 = 300e6;
/// Below this, guest code is being emulated instruction by instruction.
pub const EMULATED_IPS: f64 = 20e6;
const CODE_ADDR: u16 = 0x1000;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hardware-speed guests: microVMs will boot fast.
    Accelerated,
    /// Guests run, but far below hardware speed (nested or contended).
    Slow,
    /// Guest code is emulated: a Linux guest cannot be expected to boot.
    Emulated,
    /// /dev/kvm is missing or unusable.
    Unavailable,
}

impl Verdict {
    /// Short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accelerated => "accelerated",
            Verdict::Slow => "slow",
            Verdict::Emulated => "emulated",
            Verdict::Unavailable => "unavailable",
        }
    }
}

/// What the doctor found.
#[derive(Debug, Clone)]
pub struct DoctorReport {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Measured guest instructions per second (None if no guest ran).
    pub instructions_per_sec: Option<f64>,
    /// Loop iterations of the measurement used.
    pub iterations: u32,
    /// Time the measured loop took.
    pub loop_time: Option<Duration>,
    /// Whether /proc/cpuinfo shows vmx or svm.
    pub cpu_virt_flag: Option<&'static str>,
    /// KVM modules loaded (kvm_intel, kvm_amd, kvm_pvm, ...).
    pub kvm_modules: Vec<String>,
    /// Why the guest could not run, when it could not.
    pub error: Option<String>,
    /// What to do about it.
    pub advice: String,
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "KVM: {}", self.verdict.name())?;
        if let (Some(ips), Some(t)) = (self.instructions_per_sec, self.loop_time) {
            writeln!(
                f,
                "  guest loop: {} iterations ({} instructions) in {:.3} ms = {:.1} M instructions/s",
                self.iterations,
                2 * u64::from(self.iterations),
                t.as_secs_f64() * 1e3,
                ips / 1e6
            )?;
        }
        writeln!(
            f,
            "  cpu virtualization flag: {}",
            self.cpu_virt_flag
                .unwrap_or("none (no vmx/svm in /proc/cpuinfo)")
        )?;
        writeln!(
            f,
            "  kvm modules: {}",
            if self.kvm_modules.is_empty() {
                "none found in /sys/module".to_string()
            } else {
                self.kvm_modules.join(", ")
            }
        )?;
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        write!(f, "{}", self.advice)
    }
}

/// The loop guest: 16-bit real-mode code loaded at [`CODE_ADDR`].
pub fn loop_guest(iterations: u32) -> Vec<u8> {
    let mut code = vec![
        0xba, 0x10, 0x05, // mov dx, 0x510 (ready port)
        0xee, // out dx, al        -> host stamps the loop start
        0x66, 0xb9, // mov ecx, imm32
    ];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[
        0x66, 0x49, // loop: dec ecx
        0x75, 0xfc, // jnz loop
        0xba, 0x14, 0x05, // mov dx, 0x514 (exit port)
        0x66, 0x31, 0xc0, // xor eax, eax (exit code 0)
        0x66, 0xef, // out dx, eax     -> host stamps the loop end
        0xf4, // hlt
    ]);
    code
}

/// Runs the loop guest once; returns the loop's duration.
pub fn time_loop(iterations: u32, timeout: Duration) -> Result<Duration, String> {
    let mut vm = Vm::new(VmOptions {
        memory_mib: 1,
        vcpus: 1,
        irqchip: false,
        seccomp: true,
        shared_memory: false,
    })
    .map_err(|e| crate::error_with_causes(&e))?;
    vm.attach_legacy_devices(ConsoleConfig {
        mode: ConsoleMode::Forward,
        sink: Box::new(SharedBuffer::default()),
        input: ConsoleInput::None,
    })
    .map_err(|e| crate::error_with_causes(&e))?;
    vm.write_code(u64::from(CODE_ADDR), &loop_guest(iterations))
        .map_err(|e| crate::error_with_causes(&e))?;
    vm.create_vcpus(CpuMode::Real { ip: CODE_ADDR })
        .map_err(|e| crate::error_with_causes(&e))?;
    let mut report = RunReport::start("vm", "doctor", "loop");
    let outcome = vm
        .run(Some(timeout), &mut report)
        .map_err(|e| crate::error_with_causes(&e))?;
    match outcome.end {
        VmEnd::Exited(_) => {}
        other => {
            return Err(format!(
                "the loop guest did not finish: {}",
                other.describe()
            ))
        }
    }
    let start = report.since_start_ns(Phase::Ready);
    let end = report.since_start_ns(Phase::Exited);
    match (start, end) {
        (Some(s), Some(e)) if e >= s => Ok(Duration::from_nanos(e - s)),
        _ => Err("the loop guest's ready/exit writes were not both seen".into()),
    }
}

fn cpu_virt_flag() -> Option<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let words: Vec<&str> = flags.split_whitespace().collect();
    if words.contains(&"vmx") {
        Some("vmx")
    } else if words.contains(&"svm") {
        Some("svm")
    } else {
        None
    }
}

fn kvm_modules() -> Vec<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm", "kvm"]
        .iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .map(|m| m.to_string())
        .collect()
}

/// Classifies a measured instructions-per-second figure.
pub fn verdict_for(ips: f64) -> Verdict {
    if ips >= ACCELERATED_IPS {
        Verdict::Accelerated
    } else if ips >= EMULATED_IPS {
        Verdict::Slow
    } else {
        Verdict::Emulated
    }
}

const TESTBED_ADVICE: &str = "Run microVMs on a machine whose CPU exposes vmx or svm to this OS \
    (bare metal, or a cloud VM with nested virtualization enabled), or use duet's nested testbed, \
    which boots a Linux with a real KVM under QEMU's emulator: \
    tests/testbed/run -- duet run --isolation vm busybox -- uname -r";

fn advice(verdict: Verdict, ips: Option<f64>) -> String {
    match verdict {
        Verdict::Accelerated => "KVM runs guest code at hardware speed: `duet run --isolation vm` \
            is ready to use."
            .into(),
        Verdict::Slow => format!(
            "KVM works but runs guest code at only {:.0} M instructions/s, far below hardware \
             speed (nested virtualization or a busy host). microVMs will boot, slowly; timings \
             from this host are not representative.",
            ips.unwrap_or(0.0) / 1e6
        ),
        Verdict::Emulated => format!(
            "This host's /dev/kvm does not accelerate: it runs guest code through KVM's \
             instruction emulator ({:.1} M instructions/s, about 1000x slower than hardware) and \
             lacks instructions a Linux kernel needs, so a Linux guest cannot boot here. {}",
            ips.unwrap_or(0.0) / 1e6,
            TESTBED_ADVICE
        ),
        Verdict::Unavailable => format!(
            "No usable KVM: load kvm_intel or kvm_amd (or enable virtualization in the \
             firmware/cloud settings) and make /dev/kvm accessible to this user. {TESTBED_ADVICE}"
        ),
    }
}

/// Measures this host's KVM and says what to do about it.
pub fn diagnose() -> DoctorReport {
    let cpu_virt_flag = cpu_virt_flag();
    let kvm_modules = kvm_modules();
    let base = |verdict, ips, iterations, loop_time, error: Option<String>| DoctorReport {
        verdict,
        instructions_per_sec: ips,
        iterations,
        loop_time,
        cpu_virt_flag,
        kvm_modules: kvm_modules.clone(),
        error,
        advice: advice(verdict, ips),
    };
    if !Path::new("/dev/kvm").exists() {
        return base(
            Verdict::Unavailable,
            None,
            0,
            None,
            Some("/dev/kvm does not exist".into()),
        );
    }
    let mut iterations = CALIBRATION_ITERATIONS;
    let mut elapsed = match time_loop(iterations, Duration::from_secs(20)) {
        Ok(t) => t,
        Err(e) => return base(Verdict::Unavailable, None, 0, None, Some(e)),
    };
    let ips = |n: u32, t: Duration| 2.0 * f64::from(n) / t.as_secs_f64().max(1e-9);
    // Only a fast host gets the long loop; it then takes ~10 ms at hardware speed.
    if ips(iterations, elapsed) >= EMULATED_IPS {
        if let Ok(t) = time_loop(FULL_ITERATIONS, Duration::from_secs(20)) {
            iterations = FULL_ITERATIONS;
            elapsed = t;
        }
    }
    let rate = ips(iterations, elapsed);
    base(
        verdict_for(rate),
        Some(rate),
        iterations,
        Some(elapsed),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_guest_encodes_the_count() {
        let code = loop_guest(0x0102_0304);
        assert_eq!(&code[6..10], &[4, 3, 2, 1]);
        // jnz jumps back onto dec ecx.
        let jnz = code.iter().position(|&b| b == 0x75).unwrap();
        assert_eq!(jnz + 2 - 4, 10);
        assert_eq!(*code.last().unwrap(), 0xf4);
    }

    #[test]
    fn verdict_thresholds() {
        assert_eq!(verdict_for(1.5e6), Verdict::Emulated);
        assert_eq!(verdict_for(100e6), Verdict::Slow);
        assert_eq!(verdict_for(3e9), Verdict::Accelerated);
        assert!(advice(Verdict::Emulated, Some(1.5e6)).contains("tests/testbed/run"));
    }
}
