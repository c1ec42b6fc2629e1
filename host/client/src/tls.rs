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
    KeyUsagePurpose,
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

/// Creates a CA, a node certificate valid for `names` (DNS names or IP
/// addresses; `localhost` and `127.0.0.1` are always included) and a client
/// certificate, in `dir`. Refuses to overwrite an existing CA.
pub fn init(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    if dir.join(CA_CERT).exists() {
        return Err(TlsError::Exists(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let ca_key = KeyPair::generate()?;
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
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

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
    let node_key = KeyPair::generate()?;
    let mut node_params = CertificateParams::new(sans)?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, "Cairn node");
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node_params.signed_by(&node_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "Cairn client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    write(dir, CA_KEY, &ca_key.serialize_pem(), true)?;
    write(dir, NODE_CERT, &node_cert.pem(), false)?;
    write(dir, NODE_KEY, &node_key.serialize_pem(), true)?;
    write(dir, CLIENT_CERT, &client_cert.pem(), false)?;
    write(dir, CLIENT_KEY, &client_key.serialize_pem(), true)?;
    // The CA certificate last: its presence marks a complete directory.
    write(dir, CA_CERT, &ca_cert.pem(), false)?;
    Ok(())
}

/// Creates the development setup in `dir` unless it is already there.
/// Returns whether it was created.
pub fn ensure_dev(dir: &Path) -> Result<bool, TlsError> {
    if dir.join(CA_CERT).exists() {
        return Ok(false);
    }
    init(dir, &[])?;
    Ok(true)
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
        init(&dir, &["node-a.example".into()]).unwrap();
        server_config(&node_files(&dir)).unwrap();
        client_config(&ClientFiles::in_dir(&dir)).unwrap();
        assert!(matches!(init(&dir, &[]), Err(TlsError::Exists(_))));
        assert!(!ensure_dev(&dir).unwrap());
        peer_client_config(&node_files(&dir)).unwrap();
        let node = read_certs(&dir.join(NODE_CERT)).unwrap();
        let client = read_certs(&dir.join(CLIENT_CERT)).unwrap();
        assert!(is_node_certificate(&node[0]));
        assert!(!is_node_certificate(&client[0]));
        assert!(!is_node_certificate(&CertificateDer::from(vec![1u8, 2, 3])));
        std::fs::write(dir.join(CLIENT_KEY), "garbage").unwrap();
        assert!(matches!(
            client_config(&ClientFiles::in_dir(&dir)),
            Err(TlsError::Pem { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
