//! A certificate authority of a test's own, made with the `openssl` command
//! line tool (Debian's `openssl` package): a CA, and server or client
//! certificates it signs, as PEM files in a temporary directory.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::temp_dir;

/// A CA: `ca.pem` (its certificate) and `ca.key` in [`TestCa::dir`].
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

/// A certificate the CA signed: PEM files of the certificate and of its
/// unencrypted PKCS#8 key, and one with both (key first) for servers that
/// read a single file (Apache Kafka's PEM key store).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub key_and_cert: PathBuf,
}

impl TestCa {
    /// A new CA, valid for a day.
    pub fn new(name: &str) -> Self {
        let ca = Self {
            dir: temp_dir(&format!("ca-{name}")),
        };
        openssl(
            &ca.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN=coupon-engine test CA {name}"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        ca
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's certificate: what a client trusts.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name`, valid for `localhost` and `127.0.0.1`
    /// (server and client use both).
    pub fn issue(&self, name: &str) -> Issued {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let cert = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        let both = self.dir.join(format!("{name}-key-and-cert.pem"));
        let mut pem = std::fs::read(self.dir.join(&key)).unwrap();
        pem.extend(std::fs::read(self.dir.join(&cert)).unwrap());
        std::fs::write(&both, pem).unwrap();
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
            key_and_cert: both,
        }
    }

    /// Gives the files to `user` (a server that runs as another user, such
    /// as PostgreSQL under `runuser`); keys stay readable by their owner only.
    pub fn give_to(&self, user: &str) {
        let status = Command::new("chown")
            .args(["-R", user, &self.dir.display().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "chown {user}");
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
