//! Check 6: bad input gets a clear error, loses nothing and never panics the
//! host: malformed command bytes, a rejected command, an unknown entity type,
//! a file that is not wasm, a component exporting the wrong world, a
//! truncated component, a malformed config file.

use anyhow::Result;
use cairn_host::config::{Config, ConfigError};
use cairn_host::deploy::DeployError;
use cairn_host::node::{AskError, AskOptions, ReadError, RegisterError};
use cairn_host::runtime::LoadError;
use cairn_tests::{example_bytes, start_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path(), "", &["bank-account"]).await?;
    let opts = AskOptions::default();
    node.ask_json("bank-account", "a", r#"{"Deposit":{"amount":100}}"#, opts)
        .await?;

    // Malformed command bytes.
    let r = node
        .ask("bank-account", "a", vec![0xc1, 0xff, 0x00, 0x13], opts)
        .await;
    assert!(matches!(r, Err(AskError::MalformedCommand(_))), "{r:?}");
    // Malformed JSON.
    let r = node
        .ask_json("bank-account", "a", "{\"Deposit\":", opts)
        .await;
    assert!(
        matches!(r, Err(ReadError::Ask(AskError::MalformedCommand(_)))),
        "{r:?}"
    );
    // A command the behavior rejects.
    let r = node
        .ask_json("bank-account", "a", r#"{"Deposit":{"amount":-5}}"#, opts)
        .await;
    assert!(
        matches!(r, Err(ReadError::Ask(AskError::Rejected(_)))),
        "{r:?}"
    );
    // Unknown entity type, bad ids.
    let r = node.ask("no-such-type", "a", vec![], opts).await;
    assert_eq!(r, Err(AskError::UnknownEntityType("no-such-type".into())));
    let r = node.ask("bank-account", "", vec![], opts).await;
    assert!(matches!(r, Err(AskError::InvalidEntityId(_))), "{r:?}");
    let r = node
        .ask("bank-account", &"x".repeat(10_000), vec![], opts)
        .await;
    assert!(matches!(r, Err(AskError::InvalidEntityId(_))), "{r:?}");

    // Not wasm at all, a core module, an empty component, a truncated component.
    let r = node.deploy("junk", b"hello, world".to_vec()).await;
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::Compile(_)
            )))
        ),
        "{r:?}"
    );
    let r = node.deploy("junk", b"\0asm\x01\0\0\0".to_vec()).await;
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::Compile(_)
            )))
        ),
        "{r:?}"
    );
    let r = node.deploy("junk", b"\0asm\x0d\0\x01\0".to_vec()).await;
    let msg = format!("{}", r.as_ref().expect_err("an empty component is refused"));
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::WrongWorld(_)
            )))
        ),
        "{msg}"
    );
    assert!(msg.contains("cairn:entity/behavior"), "{msg}");
    let bank = example_bytes("bank-account")?;
    let r = node.deploy("junk", bank[..bank.len() / 2].to_vec()).await;
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::Compile(_)
            )))
        ),
        "{r:?}"
    );
    let r = node.deploy("bad name!", bank.clone()).await;
    assert!(
        matches!(r, Err(DeployError::Register(RegisterError::InvalidName(_)))),
        "{r:?}"
    );
    let r = node.ask("junk", "a", vec![], opts).await;
    assert!(
        matches!(r, Err(AskError::UnknownEntityType(_))),
        "a refused component registers nothing"
    );

    // A malformed config file.
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[defaults.mailbox]\ncapacity = \"lots\"\n")?;
    let e = Config::load(&cfg).unwrap_err();
    assert!(
        matches!(e, ConfigError::Parse(_)) && e.to_string().contains("capacity"),
        "{e}"
    );
    let e = Config::load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");

    // Nothing was lost, and the entity still serves.
    let r = node
        .ask_json("bank-account", "a", r#""GetBalance""#, opts)
        .await?;
    assert_eq!(r.reply.as_deref(), Some("100"));
    assert_eq!(r.seq, 1);
    assert_eq!(
        node.events("bank-account", "a", 1, u64::MAX, 10)
            .await?
            .len(),
        1
    );
    Ok(())
}
