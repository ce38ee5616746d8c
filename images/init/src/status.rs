//! From waitpid's answer (or an init failure) to the exit port's value.

use duet_shared::guest_abi::{encode_exit, encode_init_failure, InitFailure};
use duet_shared::runtime::WorkloadExit;
use nix::sys::wait::WaitStatus;

/// How the workload's process ended, as duet reports it.
pub fn workload_exit(status: WaitStatus) -> Option<WorkloadExit> {
    match status {
        WaitStatus::Exited(_, code) => Some(WorkloadExit::Code(code)),
        WaitStatus::Signaled(_, sig, _) => Some(WorkloadExit::Signal(sig as i32)),
        _ => None,
    }
}

/// The exit-port value for a final wait status; anything but exit or death
/// by signal (which `wait_for` never returns) counts as a failed wait.
pub fn encode_wait(status: WaitStatus) -> u32 {
    match workload_exit(status) {
        Some(e) => encode_exit(e),
        None => encode_init_failure(InitFailure::Wait),
    }
}

/// The exit-port value for an init failure at `stage`.
pub fn init_failed(stage: InitFailure) -> u32 {
    encode_init_failure(stage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_shared::guest_abi::{decode_exit, GuestExit};
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn exit_codes_and_signals_encode_per_the_abi() {
        let p = Pid::from_raw(2);
        assert_eq!(encode_wait(WaitStatus::Exited(p, 0)), 0);
        assert_eq!(encode_wait(WaitStatus::Exited(p, 7)), 7);
        assert_eq!(encode_wait(WaitStatus::Exited(p, 127)), 127);
        let killed = encode_wait(WaitStatus::Signaled(p, Signal::SIGKILL, false));
        assert_eq!(
            decode_exit(killed),
            GuestExit::Workload(WorkloadExit::Signal(9))
        );
        assert_eq!(
            decode_exit(encode_wait(WaitStatus::StillAlive)),
            GuestExit::InitFailed(InitFailure::Wait)
        );
        assert_eq!(
            decode_exit(init_failed(InitFailure::Config)),
            GuestExit::InitFailed(InitFailure::Config)
        );
    }

    #[test]
    fn real_child_statuses_decode_back() {
        // A real fork/exit through waitpid, not just hand-made statuses.
        use std::os::unix::process::ExitStatusExt;
        use std::process::Command;
        let st = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
        let raw = nix::sys::wait::WaitStatus::from_raw(Pid::from_raw(1), st.into_raw()).unwrap();
        assert_eq!(
            decode_exit(encode_wait(raw)),
            GuestExit::Workload(WorkloadExit::Code(7))
        );
        let st = Command::new("sh")
            .args(["-c", "kill -TERM $$"])
            .status()
            .unwrap();
        let raw = nix::sys::wait::WaitStatus::from_raw(Pid::from_raw(1), st.into_raw()).unwrap();
        assert_eq!(
            decode_exit(encode_wait(raw)),
            GuestExit::Workload(WorkloadExit::Signal(15))
        );
    }
}
