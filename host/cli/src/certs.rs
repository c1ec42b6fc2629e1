//! `cairn certs`: creates a CA with node and client certificates.

use anyhow::Result;
use cairn_client::tls;

use crate::args::CertsCommand;

/// Runs a `certs` command.
pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Init { dir, names } => {
            tls::init(&dir, &names)?;
            println!("created in {}:", dir.display());
            println!("  ca.pem ca.key        the CA (keep ca.key secret)");
            println!("  node.pem node.key    the node: [node.tls] ca/cert/key in cairn.toml");
            println!(
                "  client.pem client.key  a client: cairn --certs {}",
                dir.display()
            );
            Ok(())
        }
    }
}
