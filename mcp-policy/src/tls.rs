//! TLS to https upstreams, for the gateway and `check --server`: rustls on aws-lc-rs
//! (no OpenSSL), the system's root certificates, plus a private CA when one is given, and
//! certificate errors a person can act on.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, RootCertStore};

/// The client TLS settings: the system's roots and, with `ca`, the certificates of a
/// PEM file (a private CA, or a self-signed server's own certificate). HTTP/1.1 only,
/// as the gateway's upstream connections are.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for cert in system.certs {
        // A system certificate rustls cannot read is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the CA file {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!(
                    "a certificate in the CA file {} is not usable: {e}",
                    path.display()
                )
            })?;
        }
    }
    // aws-lc-rs, explicitly: the process may have no default provider installed.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Why a TLS connection to `host` failed, in words, when `error`'s chain holds a
/// rustls error; `None` for other errors. `flag` is the option that adds a CA
/// (`--upstream-ca`, `--server-ca`), named in the advice.
pub fn explain(
    host: &str,
    error: &(dyn std::error::Error + 'static),
    flag: &str,
) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(describe(host, tls, flag));
        }
        // An io::Error's source() skips the error it wraps (which may be another
        // io::Error: the TLS connector wraps tokio-rustls's); get_ref() does not.
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            return explain(host, inner, flag);
        }
        next = error.source();
    }
    None
}

/// Why a TLS handshake with the server at `url` (an `https://` URL) fails under
/// `config`, in words; `None` when it succeeds or the URL is not https. For clients
/// that keep only an error's text (the MCP SDK's), this tells what they cannot.
pub async fn diagnose(url: &str, config: rustls::ClientConfig, flag: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
    let port = uri.port_u16().unwrap_or(443);
    let connect = tokio::net::TcpStream::connect((host, port));
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(name, stream).await {
        Ok(_) => None,
        Err(err) => explain(host, &err, flag),
    }
}

fn describe(host: &str, error: &rustls::Error, flag: &str) -> String {
    let hint =
        format!("; if it is signed by a private CA, pass that CA's certificate with {flag} FILE");
    match error {
        rustls::Error::InvalidCertificate(why) => {
            let why = match why {
                CertificateError::UnknownIssuer => {
                    format!("is signed by an authority this machine does not trust{hint}")
                }
                CertificateError::BadSignature => format!("has a bad signature{hint}"),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "has expired".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet (is this machine's clock right?)".to_owned()
                }
                CertificateError::Revoked => "has been revoked".to_owned(),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!(
                        "is not valid for the name {host:?} (use the name the certificate is for)"
                    )
                }
                other => format!("is not accepted ({other:?})"),
            };
            format!("the TLS certificate of {host} {why}")
        }
        other => format!("TLS with {host} failed: {other}"),
    }
}
