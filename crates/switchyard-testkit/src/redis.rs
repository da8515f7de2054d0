//! A real `redis-server` (the Debian package) on a spare 127.0.0.1 port,
//! without persistence, that tests can stop and start again on the same port;
//! optionally speaking TLS only, with a certificate of its own test CA.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// The TLS server's certificates: its CA's, and its own with its key.
    tls: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts `redis-server` (`REDIS_SERVER_BIN`, else from `PATH`) on a free
    /// port and waits until it accepts connections.
    ///
    /// Panics with instructions when the executable is missing.
    pub fn start() -> RedisServer {
        RedisServer::start_on(None)
    }

    /// Starts the server on a free port, speaking TLS with the certificates
    /// in `tls` when given.
    #[allow(clippy::panic, reason = "test support: a missing tool must fail the test loudly")]
    fn start_on(tls: Option<tempfile::TempDir>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut server = RedisServer { child: None, port, tls };
        server.restart();
        server
    }

    /// Like [`RedisServer::start`], speaking TLS only, with a certificate
    /// for `localhost` and 127.0.0.1 signed by a CA made for it (with the
    /// `openssl` command). A client trusts it through [`RedisServer::ca_file`]
    /// (for rustls' native roots: `SSL_CERT_FILE`).
    #[allow(clippy::panic, reason = "test support: a missing tool must fail the test loudly")]
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temporary directory: {e}"));
        make_certificates(dir.path());
        RedisServer::start_on(Some(dir))
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://localhost:PORT` for a TLS server.
    pub fn url(&self) -> String {
        if self.tls.is_some() {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|dir| dir.path().join("ca.crt"))
    }

    /// Kills the server (as a crash would) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    #[allow(clippy::panic, reason = "test support: a missing tool must fail the test loudly")]
    pub fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let port = self.port.to_string();
        let mut command = Command::new(&bin);
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(dir) => {
                let file = |name: &str| dir.path().join(name).display().to_string();
                command.args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-cert-file",
                    &file("server.crt"),
                    "--tls-key-file",
                    &file("server.key"),
                    "--tls-ca-cert-file",
                    &file("ca.crt"),
                    "--tls-auth-clients",
                    "no",
                ])
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {bin} ({e}): install the redis-server package (`.ci/run` does), or set REDIS_SERVER_BIN"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                panic!("redis-server did not listen on port {} within 30 s", self.port);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes `ca.crt`, and `server.crt`/`server.key` for `localhost` and
/// 127.0.0.1 signed by it, into `dir` (P-256 keys, valid for two days).
#[allow(clippy::panic, reason = "test support: a missing tool must fail the test loudly")]
fn make_certificates(dir: &Path) {
    let ext = dir.join("server.ext");
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", ext.display()));
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &key[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=switchyard test CA",
            ][..],
        ]
        .concat(),
        [
            &["req"][..],
            &key[..],
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"][..],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ];
    for args in steps {
        let output = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install the openssl package (`.ci/run` does)"));
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
