//! `duet network ls|rm`: duet's bridge, its addresses, and taking it down.

use anyhow::Result;
use clap::Subcommand;
use duet_network::{Network, NetworkConfig};
use duet_shared::paths::state_root;

/// `duet network` subcommands.
#[derive(Subcommand)]
pub enum NetworkCommand {
    /// The bridge, its subnet and the addresses instances hold.
    Ls,
    /// Remove the bridge, duet's nftables table and the ip_forward change
    /// (refused while an instance holds an address).
    Rm,
}

/// Runs a `duet network` subcommand.
pub fn network(c: NetworkCommand) -> Result<()> {
    let root = state_root();
    let cfg = NetworkConfig::load(&root)?;
    match c {
        NetworkCommand::Ls => {
            println!(
                "bridge {} subnet {} gateway {} (default network: {})",
                cfg.bridge,
                cfg.subnet,
                cfg.gateway(),
                cfg.default
            );
            if cfg.state_dir(&root).exists() {
                for (addr, owner) in Network::open(&root)?.leases()? {
                    println!("{addr:<16} {owner}");
                }
            }
            Ok(())
        }
        NetworkCommand::Rm => {
            Network::open(&root)?.remove()?;
            println!("removed network {}", cfg.bridge);
            Ok(())
        }
    }
}
