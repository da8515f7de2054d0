//! A real `moto_server` (PyPI `moto[server]`, an S3-compatible server) on a
//! spare 127.0.0.1 port, for tests of S3-backed features.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Access key id `moto_server` accepts (any works; tests use this one).
pub const MOTO_ACCESS_KEY_ID: &str = "testing";
/// Secret access key paired with [`MOTO_ACCESS_KEY_ID`].
pub const MOTO_SECRET_ACCESS_KEY: &str = "testing";

/// A running `moto_server`, killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

/// The `moto_server` executable: `MOTO_SERVER_BIN`, else the one in
/// `<target>/py-venv` (which `cargo xtask ci` installs), else `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("py-venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

impl MotoServer {
    /// Starts `moto_server` and waits until it accepts connections.
    ///
    /// Panics with instructions when the executable is missing (`cargo xtask ci`
    /// installs it from `tests/python/requirements.txt`), or when it does not
    /// listen within 60 seconds.
    #[allow(clippy::panic, reason = "test support: a missing tool must fail the test loudly")]
    pub fn start() -> MotoServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let bin = binary();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install it with `pip install 'moto[server]'` or run `cargo xtask ci`, \
                     which sets up target/py-venv, or set MOTO_SERVER_BIN",
                    bin.display()
                )
            });
        let mut server = MotoServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&server.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto_server exited early with {status}");
            }
            assert!(Instant::now() < deadline, "moto_server did not listen within 60 s");
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `http://127.0.0.1:<port>`, the S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
