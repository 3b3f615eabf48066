//! rustls client configuration per https provider: webpki roots plus an optional private CA.

use std::sync::Arc;

use monoio_rustls::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::Provider;

/// What a worker needs to open TLS to one provider. Cheap to clone (Arc inside).
#[derive(Clone)]
pub struct Tls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

/// A rustls client configuration trusting the webpki roots plus the PEM certificates of
/// `ca_file` (a private CA), if any. Also used for the ledger-shipping store (`ledger/ship/`).
pub fn client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the TLS settings for an https provider.
pub fn for_provider(p: &Provider) -> Result<Tls, String> {
    let config = client_config(p.ca_file.as_deref())?;
    let server_name =
        ServerName::try_from(p.host.clone()).map_err(|e| format!("{}: {e}", p.host))?;
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}
