//! TLS for `rediss://` nodes, with rustls (ring provider), behind the `tls`
//! feature: the client configuration built once per manager from the
//! builder's settings, and a blocking stream over a `TcpStream`.
//!
//! Certificates are always verified: against the CA file given, or the
//! system's roots. The server name is the node's host (an IP literal is
//! checked against the certificate's IP addresses) unless the builder sets
//! one.
//!
//! The stream uses rustls's buffered connection. Its unbuffered API was
//! meant to make the steady state allocation-free, but in rustls 0.23 it
//! still copies each decrypted record into a new `Vec` (and encrypting
//! allocates too), so it would cost a second state machine of our own for
//! nothing; `tests/no_alloc.rs` counts what a TLS cycle allocates.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::error::{Error, Failure, Result};

/// What the builder was told about TLS.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    pub(crate) server_name: Option<String>,
    pub(crate) config: Option<Arc<ClientConfig>>,
}

impl TlsSettings {
    /// Whether any setting was given.
    pub(crate) fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.client_cert.is_some()
            || self.server_name.is_some()
            || self.config.is_some()
    }

    /// Reads the files and builds the client configuration, once.
    pub(crate) fn connector(&self) -> Result<TlsConnector> {
        let server_name = match &self.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                Error::invalid(format!("tls_server_name {name:?} is not a valid host name"))
            })?),
        };
        if let Some(config) = &self.config {
            if self.ca_file.is_some() || self.client_cert.is_some() {
                return Err(Error::invalid(
                    "tls_config replaces tls_ca_file and tls_client_cert: give one or the other",
                ));
            }
            return Ok(TlsConnector {
                config: Arc::clone(config),
                server_name,
            });
        }
        let roots = match &self.ca_file {
            Some(path) => roots_from(path)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid(format!("tls: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs_from(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::invalid(format!(
                        "tls_client_cert: no private key read from {}: {e}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::invalid(format!("tls_client_cert: {e}")))?
            }
        };
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// Every certificate in a PEM file; none is an error.
fn certs_from(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = |e: &dyn fmt::Display| {
        Error::invalid(format!(
            "tls: cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    Ok(certs)
}

fn roots_from(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from(path)? {
        roots
            .add(cert)
            .map_err(|e| Error::invalid(format!("tls_ca_file {}: {e}", path.display())))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(Error::invalid(
            "tls: no CA certificate found in the system's store; give one with tls_ca_file",
        ));
    }
    Ok(roots)
}

/// The client configuration, shared by every connection of a manager.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Runs the handshake on a connected socket (its timeouts bound it).
    pub(crate) fn handshake(&self, host: &str, sock: TcpStream) -> Result<TlsStream, Failure> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| Failure::Tls(format!("{host:?} is not a valid server name").into()))?,
        };
        let conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| Failure::Tls(e.to_string().into()))?;
        let mut stream = TlsStream { conn, sock };
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }
}

/// A TLS session over a blocking socket. Its socket's timeouts apply to
/// each read and write; a timeout leaves the session consistent (rustls
/// keeps partial records), though `Conn` closes the connection anyway.
pub(crate) struct TlsStream {
    conn: ClientConnection,
    sock: TcpStream,
}

impl TlsStream {
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Sends whatever rustls has encrypted.
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Decrypted bytes already here, if any: `None` when more must be read.
    fn plaintext(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self.conn.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            other => Some(other),
        }
    }

    /// One read of TLS records from the socket, processed; an alert or
    /// a bad record is an `InvalidData` error carrying rustls's error.
    fn read_records(&mut self) -> io::Result<()> {
        loop {
            match self.conn.read_tls(&mut self.sock) {
                // At the end of the stream (0 bytes) the reader then says
                // whether the close was clean.
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let processed = self.conn.process_new_packets();
        // Key updates, and the alert that tells the server why we stop.
        let flushed = self.flush_tls();
        if let Err(e) = processed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        flushed
    }
}

impl Read for TlsStream {
    /// Decrypted bytes if any are here; else one read of the socket. When
    /// that brought only part of a record, `Interrupted`: the caller, who
    /// knows its deadline, reads again with the time it has left (a second
    /// read here would wait the socket's whole timeout again).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(result) = self.plaintext(buf) {
            return result;
        }
        self.read_records()?;
        match self.plaintext(buf) {
            Some(result) => result,
            None => Err(io::ErrorKind::Interrupted.into()),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// Encrypts and sends `buf` in pieces as rustls takes them (it buffers
    /// at most 64 KiB before it must be flushed).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut rest = buf;
        while !rest.is_empty() {
            let taken = self.conn.writer().write(rest)?;
            self.flush_tls()?;
            if taken == 0 && self.conn.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "tls session takes no more data",
                ));
            }
            rest = &rest[taken..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

/// Splits a session for the subscriber: one thread reads, others write.
/// The session sits behind a lock that the reader never holds while it
/// waits for bytes (it peeks at the socket first).
pub(crate) fn split(stream: TlsStream) -> io::Result<(Reader, Writer)> {
    let peek = stream.sock.try_clone()?;
    let shut = stream.sock.try_clone()?;
    let shared = Arc::new(Mutex::new(stream));
    Ok((
        Reader {
            shared: Arc::clone(&shared),
            peek,
        },
        Writer { shared, shut },
    ))
}

pub(crate) struct Reader {
    shared: Arc<Mutex<TlsStream>>,
    peek: TcpStream,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(result) = self.shared.lock().plaintext(buf) {
                return result;
            }
            // Wait (up to the socket's read timeout) for bytes to arrive,
            // without the lock; then the one read below does not block.
            self.peek.peek(&mut [0u8; 1])?;
            self.shared.lock().read_records()?;
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Mutex<TlsStream>>,
    shut: TcpStream,
}

impl Writer {
    pub(crate) fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.shared.lock().write_all(buf)
    }

    pub(crate) fn shutdown(&self) -> io::Result<()> {
        self.shut.shutdown(Shutdown::Both)
    }
}

/// A rustls error inside an I/O error that is about certificates (ours or
/// the server's), told as a [`Failure::Tls`]: a setting or a certificate
/// must change. Other TLS trouble (a corrupt record, an alert mid-session)
/// stays an I/O error, which may pass.
pub(crate) fn failure_of(e: &io::Error) -> Option<Failure> {
    use rustls::AlertDescription as Alert;
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let hint = match tls {
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            " (the server wants a client certificate: see tls_client_cert)"
        }
        rustls::Error::AlertReceived(
            Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => " (the server refused our client certificate)",
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            " (not signed by a CA we trust: see tls_ca_file)"
        }
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => " (see tls_server_name)",
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::AlertReceived(Alert::HandshakeFailure | Alert::ProtocolVersion) => "",
        _ => return None,
    };
    Some(Failure::Tls(format!("{tls}{hint}").into()))
}
