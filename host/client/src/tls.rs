//! Certificates and TLS: generating a CA with node and client certificates
//! (`cairn certs init`, and the development setup a node creates in its data
//! directory on first start), and building the rustls/quinn configurations.
//!
//! TLS is always on. A node always requires a client certificate signed by
//! its CA (mutual TLS); a client always checks the node's certificate against
//! the same CA. The development setup is the same arrangement with files the
//! node generates, which the local CLI finds in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use cairn_proto::{ALPN, PEER_ALPN};

/// File names inside a certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The node's certificate.
pub const NODE_CERT: &str = "node.pem";
/// The node's private key.
pub const NODE_KEY: &str = "node.key";
/// The client's certificate.
pub const CLIENT_CERT: &str = "client.pem";
/// The client's private key.
pub const CLIENT_KEY: &str = "client.key";

/// The server name a client checks in the node's certificate by default.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// The name every node certificate carries and no client certificate does:
/// nodes check it in each other's certificates, so a client certificate of
/// the same CA cannot join the cluster.
pub const NODE_NAME: &str = "cairn-node";

/// Why certificates could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM of the expected kind.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The directory already holds a CA (`certs init` never overwrites).
    #[error("{0} already holds certificates; remove them first or choose another directory")]
    Exists(PathBuf),
}

/// The certificate files a client uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA that signed the node's certificate.
    pub ca: PathBuf,
    /// The client's certificate.
    pub cert: PathBuf,
    /// The client's key.
    pub key: PathBuf,
}

impl ClientFiles {
    /// The client files inside a certificate directory.
    pub fn in_dir(dir: &Path) -> ClientFiles {
        ClientFiles {
            ca: dir.join(CA_CERT),
            cert: dir.join(CLIENT_CERT),
            key: dir.join(CLIENT_KEY),
        }
    }
}

/// The certificate files a node serves with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    /// The CA that client certificates must be signed by.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's key.
    pub key: PathBuf,
}

/// The node files inside a certificate directory.
pub fn node_files(dir: &Path) -> NodeFiles {
    NodeFiles {
        ca: dir.join(CA_CERT),
        cert: dir.join(NODE_CERT),
        key: dir.join(NODE_KEY),
    }
}

/// The sub-directory of a [`init`] directory holding the first node's
/// files ([`node_files`] of it).
pub const NODE_DIR: &str = "node";
/// The sub-directory of a [`init`] directory holding the client's files
/// ([`ClientFiles::in_dir`] of it): never the CA's key.
pub const CLIENT_DIR: &str = "client";

/// The URI a node certificate names its node id with (`cairn:node:<id>`).
const NODE_URI_PREFIX: &str = "cairn:node:";

/// A node id for a new node certificate: random, above 0, below 2^63.
pub fn random_node_id() -> u64 {
    loop {
        let id = rand::random::<u64>() >> 1;
        if id != 0 {
            return id;
        }
    }
}

/// Creates, in `dir`, a CA (`ca.pem`, `ca.key`), a first node's files in
/// `dir/node` (`ca.pem`, `node.pem` naming a new node id and valid for
/// `names`, `node.key`) and a client's files in `dir/client` (`ca.pem`,
/// `client.pem`, `client.key`). The CA's key stays in `dir` alone: the
/// node's and the client's directories can be handed out as they are.
/// Refuses to overwrite an existing CA. Returns the node's id.
pub fn init(dir: &Path, names: &[String]) -> Result<u64, TlsError> {
    if dir.join(CA_CERT).exists() {
        return Err(TlsError::Exists(dir.to_owned()));
    }
    mkdir(dir)?;
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(dir, CA_KEY, &ca_key.serialize_pem(), true)?;
    // The CA certificate last: its presence marks a complete CA.
    write(dir, CA_CERT, &ca_cert.pem(), false)?;
    let id = random_node_id();
    issue_node(dir, &dir.join(NODE_DIR), id, names)?;
    issue_client(dir, &dir.join(CLIENT_DIR))?;
    Ok(id)
}

/// Issues a node certificate naming node `id` (valid for `names` besides
/// `localhost` and `127.0.0.1`) with the CA in `ca_dir`, into `out`
/// (`ca.pem`, `node.pem`, `node.key`). Refuses to overwrite a node
/// certificate already in `out`.
pub fn issue_node(ca_dir: &Path, out: &Path, id: u64, names: &[String]) -> Result<(), TlsError> {
    if id == 0 || id > i64::MAX as u64 {
        return Err(TlsError::Config(format!(
            "node id {id} is out of range (1 to {})",
            i64::MAX
        )));
    }
    let (ca_pem, issuer) = load_ca(ca_dir)?;
    let mut sans = vec![
        DEFAULT_SERVER_NAME.to_owned(),
        "127.0.0.1".to_owned(),
        NODE_NAME.to_owned(),
    ];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params
        .subject_alt_names
        .push(SanType::URI(rcgen::string::Ia5String::try_from(format!(
            "{NODE_URI_PREFIX}{id}"
        ))?));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Cairn node {id}"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    if out.join(NODE_CERT).exists() {
        return Err(TlsError::Exists(out.to_owned()));
    }
    mkdir(out)?;
    write(out, NODE_KEY, &key.serialize_pem(), true)?;
    write(out, NODE_CERT, &cert.pem(), false)?;
    write(out, CA_CERT, &ca_pem, false)
}

/// Issues a client certificate with the CA in `ca_dir`, into `out`
/// (`ca.pem`, `client.pem`, `client.key`). Refuses to overwrite a client
/// certificate already in `out`.
pub fn issue_client(ca_dir: &Path, out: &Path) -> Result<(), TlsError> {
    let (ca_pem, issuer) = load_ca(ca_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Cairn client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    if out.join(CLIENT_CERT).exists() {
        return Err(TlsError::Exists(out.to_owned()));
    }
    mkdir(out)?;
    write(out, CLIENT_KEY, &key.serialize_pem(), true)?;
    write(out, CLIENT_CERT, &cert.pem(), false)?;
    write(out, CA_CERT, &ca_pem, false)
}

/// Creates the development setup in `dir` unless it is already there: a
/// CA, a node certificate (naming a new node id) and a client certificate,
/// side by side in `dir` (where the node and the local CLI find them). The
/// CA's key is not kept: nothing else can be signed with it. Returns
/// whether it was created.
pub fn ensure_dev(dir: &Path) -> Result<bool, TlsError> {
    if dir.join(CA_CERT).exists() {
        return Ok(false);
    }
    let scratch = dir.with_extension("ca-tmp");
    let _ = std::fs::remove_dir_all(&scratch);
    init(&scratch, &[])?;
    mkdir(dir)?;
    for (from, name) in [
        (NODE_DIR, NODE_CERT),
        (NODE_DIR, NODE_KEY),
        (CLIENT_DIR, CLIENT_CERT),
        (CLIENT_DIR, CLIENT_KEY),
        (NODE_DIR, CA_CERT),
    ] {
        let path = scratch.join(from).join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| TlsError::Io {
            path: path.clone(),
            source,
        })?;
        write(dir, name, &text, name.ends_with(".key"))?;
    }
    std::fs::remove_dir_all(&scratch).map_err(|source| TlsError::Io {
        path: scratch.clone(),
        source,
    })?;
    Ok(true)
}

/// The node id a certificate names (`cairn:node:<id>`), if it names
/// exactly one. The certificate is not verified here (the handshake did).
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = ee
        .valid_uri_names()
        .filter_map(|u| u.strip_prefix(NODE_URI_PREFIX))
        .map(|s| s.parse::<u64>().ok());
    match (ids.next(), ids.next()) {
        (Some(Some(id)), None) if id != 0 => Some(id),
        _ => None,
    }
}

/// The node id the node certificate at `path` names.
pub fn node_id_in(path: &Path) -> Result<u64, TlsError> {
    let certs = read_certs(path)?;
    node_id_of(&certs[0]).ok_or_else(|| TlsError::Pem {
        path: path.to_owned(),
        message: "names no node id (a certificate from before per-node identities): \
                  issue one per node with `cairn certs node --ca CA_DIR --out DIR`"
            .into(),
    })
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Cairn CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

/// The CA of `dir`: its certificate's PEM and an issuer signing with its key.
fn load_ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| TlsError::Io { path, source })
    };
    let pem = read(CA_CERT)?;
    let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| TlsError::Pem {
        path: dir.join(CA_KEY),
        message: format!("not the CA's private key: {e}"),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| TlsError::Pem {
        path: dir.join(CA_CERT),
        message: format!("not a usable CA certificate: {e}"),
    })?;
    Ok((pem, issuer))
}

fn mkdir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> Result<(), TlsError> {
    let path = dir.join(name);
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(&path).map_err(io)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        message: format!("not a PEM private key: {e}"),
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: ca.to_owned(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC server configuration of a node: its certificate, and client
/// certificates required and checked against the CA.
pub fn server_config(files: &NodeFiles) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec(), PEER_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The QUIC client configuration: the node is checked against the CA and
/// the client presents its certificate.
pub fn client_config(files: &ClientFiles) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The QUIC client configuration a node dials its peers with: its node
/// certificate, the peer protocol, and the peer's certificate checked
/// against the CA (under [`NODE_NAME`]).
pub fn peer_client_config(files: &NodeFiles) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Is `cert` (already verified against the CA by the handshake) a node
/// certificate, i.e. valid for [`NODE_NAME`]? Client certificates are not.
pub fn is_node_certificate(cert: &CertificateDer<'_>) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from(NODE_NAME) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_usable_setup_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("cairn-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = init(&dir, &["node-a.example".into()]).unwrap();
        let node_dir = dir.join(NODE_DIR);
        let client_dir = dir.join(CLIENT_DIR);
        server_config(&node_files(&node_dir)).unwrap();
        client_config(&ClientFiles::in_dir(&client_dir)).unwrap();
        assert!(matches!(init(&dir, &[]), Err(TlsError::Exists(_))));
        peer_client_config(&node_files(&node_dir)).unwrap();
        // The CA's key is in the CA's directory only.
        assert!(dir.join(CA_KEY).exists());
        assert!(!node_dir.join(CA_KEY).exists());
        assert!(!client_dir.join(CA_KEY).exists());

        let node = read_certs(&node_dir.join(NODE_CERT)).unwrap();
        let client = read_certs(&client_dir.join(CLIENT_CERT)).unwrap();
        assert!(is_node_certificate(&node[0]));
        assert_eq!(node_id_of(&node[0]), Some(id));
        assert_eq!(node_id_in(&node_dir.join(NODE_CERT)).unwrap(), id);
        assert!(!is_node_certificate(&client[0]));
        assert_eq!(node_id_of(&client[0]), None);
        assert!(node_id_in(&client_dir.join(CLIENT_CERT)).is_err());
        assert!(!is_node_certificate(&CertificateDer::from(vec![1u8, 2, 3])));

        // A second node, named by the operator, from the same CA.
        let second = dir.join("second");
        issue_node(&dir, &second, 42, &[]).unwrap();
        let cert = read_certs(&second.join(NODE_CERT)).unwrap();
        assert_eq!(node_id_of(&cert[0]), Some(42));
        assert!(matches!(
            issue_node(&dir, &second, 43, &[]),
            Err(TlsError::Exists(_))
        ));
        assert!(issue_node(&dir, &dir.join("zero"), 0, &[]).is_err());
        // Without the CA's key nothing is issued.
        assert!(issue_node(&node_dir, &dir.join("third"), 7, &[]).is_err());

        std::fs::write(client_dir.join(CLIENT_KEY), "garbage").unwrap();
        assert!(matches!(
            client_config(&ClientFiles::in_dir(&client_dir)),
            Err(TlsError::Pem { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_development_setup_keeps_no_ca_key() {
        let dir = std::env::temp_dir().join(format!("cairn-tls-dev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ensure_dev(&dir).unwrap());
        assert!(!ensure_dev(&dir).unwrap());
        assert!(!dir.join(CA_KEY).exists());
        server_config(&node_files(&dir)).unwrap();
        client_config(&ClientFiles::in_dir(&dir)).unwrap();
        assert!(node_id_in(&dir.join(NODE_CERT)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
