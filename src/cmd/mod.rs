//! Subcommands of the `duet` binary.

pub mod bench;
pub mod demo;
pub mod exec;
pub mod image;
pub mod instances;
pub mod lifecycle;
pub mod network;
pub mod probe;
pub mod pull;
pub mod run;
pub mod snapshot;

/// `error: cause: cause` on one line, the whole `source()` chain.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        // Skip a cause whose text the previous message already carries.
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// What a VM's VMM holds on the host under this environment's
/// `DUET_VMM_JAIL`, for the isolation table (a bad value counts as on:
/// `duet run` refuses it before any VM starts).
pub fn vmm_jail() -> duet_bench::isolation::VmmJail {
    use duet_vmm::jail::{self, JailMode};
    let mode = JailMode::from_env().unwrap_or(JailMode::On);
    duet_bench::isolation::VmmJail {
        jailed: mode == JailMode::On,
        holds: jail::describe(mode),
    }
}
