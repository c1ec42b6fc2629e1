//! `cairn certs`: creates a CA, and issues node certificates (each naming
//! its node id) and client certificates with it.

use anyhow::Result;
use cairn_client::tls;

use crate::args::CertsCommand;

/// Runs a `certs` command.
pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Init { dir, names } => {
            let id = tls::init(&dir, &names)?;
            let d = dir.display();
            println!("created in {d}:");
            println!("  ca.pem ca.key   the CA: keep ca.key off the nodes and clients");
            println!(
                "  node/           node {id}: [node.tls] in cairn.toml, or cairn node --certs {d}/node"
            );
            println!("  client/         a client: cairn --certs {d}/client");
            println!("more nodes: cairn certs node --ca {d} --out DIR (one per member)");
            Ok(())
        }
        CertsCommand::Node { ca, out, id, names } => {
            let id = id.unwrap_or_else(tls::random_node_id);
            tls::issue_node(&ca, &out, id, &names)?;
            println!("node {id}: ca.pem node.pem node.key in {}", out.display());
            Ok(())
        }
        CertsCommand::Client { ca, out } => {
            tls::issue_client(&ca, &out)?;
            println!("client: ca.pem client.pem client.key in {}", out.display());
            Ok(())
        }
    }
}
