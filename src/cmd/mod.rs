//! Subcommands of the `duet` binary.

pub mod bench;
pub mod demo;
pub mod image;
pub mod instances;
pub mod probe;
pub mod run;

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
