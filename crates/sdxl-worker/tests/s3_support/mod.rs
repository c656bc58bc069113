//! A real S3 server for tests: `s3s-fs` (the `s3s` S3 protocol implementation over a temp
//! directory) served by hyper on 127.0.0.1 with SigV4 authentication, on its own thread and
//! runtime. Include with `#[path = "s3_support/mod.rs"] mod s3_support;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::host::SingleDomain;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// The access key id the server accepts.
pub const KEY_ID: &str = "AKIDS3SUPPORTTEST";
/// The secret the server accepts.
pub const SECRET: &str = "s3-support-secret-7d1e0c9b";
/// The bucket every server starts with.
pub const BUCKET: &str = "results";
/// The base domain of virtual-hosted servers (`<bucket>.s3.test:<port>`).
pub const VIRTUAL_DOMAIN: &str = "s3.test";

/// A running server; stopped and its directory removed on drop.
pub struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl S3Server {
    /// A server that takes path-style requests: `http://127.0.0.1:<port>/<bucket>/<key>`.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// A server that also takes virtual-hosted requests for `<bucket>.s3.test:<port>` (the client
    /// must resolve that name to [`addr`](Self::addr)).
    pub fn start_virtual_hosted() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(virtual_hosted: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();

        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(KEY_ID, SECRET));
        if virtual_hosted {
            let domain = format!("{VIRTUAL_DOMAIN}:{}", addr.port());
            builder.set_host(SingleDomain::new(&domain).unwrap());
        }
        let service = builder.build();

        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let conn = http
                                .serve_connection(TokioIo::new(socket), service.clone())
                                .into_owned();
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        });
        S3Server {
            addr,
            root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/results`: the path-style `BUCKET_ENDPOINT_URL`.
    pub fn path_style_endpoint(&self) -> String {
        format!("http://{}/{BUCKET}", self.addr)
    }

    /// `http://results.s3.test:<port>`: the virtual-hosted `BUCKET_ENDPOINT_URL`.
    pub fn virtual_hosted_endpoint(&self) -> String {
        format!("http://{BUCKET}.{VIRTUAL_DOMAIN}:{}", self.addr.port())
    }

    /// The directory holding the bucket's objects (`<root>/<bucket>/<key>`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// The stored bytes of an object, if it exists.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.bucket_dir().join(key)).ok()
    }

    /// Every object key in the bucket, sorted (s3s-fs keeps metadata outside the bucket dir).
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        walk(&self.bucket_dir(), &self.bucket_dir(), &mut keys);
        keys.sort();
        keys
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(base, &path, out);
        } else {
            let rel = path.strip_prefix(base).unwrap().to_string_lossy();
            out.push(rel.replace('\\', "/"));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
