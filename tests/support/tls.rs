//! Test certificates, made at test time with rcgen: a CA, a server
//! certificate it signed for `localhost` and 127.0.0.1, an expired one, one
//! for another name, one signed by a CA the client does not know, and a
//! client certificate. Written as PEM files into a directory of their own.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};

use super::RedisServer;

/// A set of PEM files for one test.
pub struct Certs {
    pub dir: PathBuf,
}

/// Which server certificate a TLS server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// Signed by the CA, for `localhost` and 127.0.0.1, valid now.
    Good,
    /// Signed by the CA, expired last year.
    Expired,
    /// Signed by the CA, for `redis.other.example` only.
    OtherName,
    /// Valid, but signed by a CA the client was not given.
    UnknownCa,
}

impl ServerCert {
    fn stem(self) -> &'static str {
        match self {
            ServerCert::Good => "server",
            ServerCert::Expired => "expired",
            ServerCert::OtherName => "othername",
            ServerCert::UnknownCa => "stranger",
        }
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("self-sign the ca").pem();
    (params, key, pem)
}

fn leaf(
    names: &[&str],
    issuer: &Issuer<'_, KeyPair>,
    expired: bool,
    client: bool,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "redlease test");
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, issuer).expect("sign the leaf");
    (cert.pem(), key.serialize_pem())
}

impl Certs {
    /// Makes every certificate the TLS tests use, in a new directory.
    pub fn make() -> Certs {
        let dir = super::temp_dir("certs");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect(name);

        let (ca_params, ca_key, ca_pem) = ca("redlease test CA");
        write("ca.pem", &ca_pem);
        let issuer = Issuer::new(ca_params, ca_key);
        let localhost = ["localhost", "127.0.0.1"];
        for (stem, names, expired, client) in [
            ("server", &localhost[..], false, false),
            ("expired", &localhost[..], true, false),
            ("othername", &["redis.other.example"][..], false, false),
            ("client", &["redlease client"][..], false, true),
        ] {
            let (cert, key) = leaf(names, &issuer, expired, client);
            write(&format!("{stem}.pem"), &cert);
            write(&format!("{stem}.key"), &key);
        }
        let (other_params, other_key, other_pem) = ca("some other CA");
        write("other-ca.pem", &other_pem);
        let other = Issuer::new(other_params, other_key);
        let (cert, key) = leaf(&localhost, &other, false, false);
        write("stranger.pem", &cert);
        write("stranger.key", &key);
        let (cert, key) = leaf(&["redlease client"], &other, false, true);
        write("stranger-client.pem", &cert);
        write("stranger-client.key", &key);
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `redis-server` arguments for a TLS port presenting `cert`, trusting
    /// our CA for client certificates, requiring one when `auth_clients`.
    pub fn server_args(&self, tls_port: u16, cert: ServerCert, auth_clients: bool) -> Vec<String> {
        let p = |name: String| self.dir.join(name).display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            p(format!("{}.pem", cert.stem())),
            "--tls-key-file".into(),
            p(format!("{}.key", cert.stem())),
            "--tls-ca-cert-file".into(),
            p("ca.pem".into()),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` with a TLS port beside its plain one (which the
/// fixture uses to check it is up and to look at keys).
pub struct TlsServer {
    pub server: RedisServer,
    pub tls_port: u16,
}

impl TlsServer {
    pub fn start(certs: &Certs, cert: ServerCert, auth_clients: bool) -> TlsServer {
        let tls_port = super::free_port();
        let args = certs.server_args(tls_port, cert, auth_clients);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::start_with(&args);
        TlsServer { server, tls_port }
    }

    /// `rediss://host:tls_port`.
    pub fn url(&self, host: &str) -> String {
        format!("rediss://{host}:{}", self.tls_port)
    }
}
