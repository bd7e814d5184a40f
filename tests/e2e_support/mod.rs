//! Helpers of the end-to-end kernel tests (`mod e2e_support;`): compile a policy for the
//! runtime, make loopback TCP connections, send and receive with raw syscalls, and
//! prove that an enforcement left nothing in the kernel. For the tests of the `skpc`
//! binary (compiler/cli's): run it and prove it left nothing behind, and a redis-server
//! to run real clients against.
#![allow(dead_code)]

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skpc_runtime::{Enforcement, KernelIds, Policy};

pub use std::os::fd::BorrowedFd;

/// Compiles `src` for the runtime (shared maps pinned by name).
pub fn policy(src: &str) -> Policy {
    let c = skpc::compile::compile("test.skp", src)
        .unwrap_or_else(|d| panic!("policy does not compile: {d:?}\n{src}"));
    // The connection key as `skpc run` passes it: a reload to a policy that takes the
    // same connections keeps the SOCK_OPS program in force.
    runtime_policy(&c, "test.skp", src).with_connections(format!("{:?}", c.lowered.connections))
}

/// The runtime's policy of a compiled one (`name` and `src` for the object's line
/// info): its object and its counters' names.
pub fn runtime_policy(c: &skpc::compile::Compiled, name: &str, src: &str) -> Policy {
    let object = skpc::compile::runtime_object(c, name, src);
    Policy::new(
        object,
        c.policy.counters.iter().map(|c| c.name.clone()).collect(),
    )
}

/// Sends `payload` on `client`, inserted into `enf`'s sockmap for that one send (key 0),
/// and returns the send's result and what reached `server` (nothing for a failed send).
pub fn send_once_enforced(
    enf: &mut Enforcement,
    client: &TcpStream,
    server: &mut TcpStream,
    payload: &[u8],
) -> (Result<usize, i32>, Vec<u8>) {
    enf.insert_sock(0, client.as_fd())
        .unwrap_or_else(|e| panic!("insert the socket: {e}"));
    let got = send(client, payload);
    let arrived = if got.is_ok() {
        recv_up_to(server, payload.len(), SHORT)
    } else {
        Vec::new()
    };
    let _ = enf.remove_sock(0);
    (got, arrived)
}

/// What each counter added between two reads (`before`, then `after`): (messages,
/// bytes) per slot, as the evaluator's and the VM's counters are.
pub fn counter_delta(
    after: &[skpc_runtime::CounterValue],
    before: &[skpc_runtime::CounterValue],
) -> Vec<(u64, u64)> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.messages - b.messages, a.bytes - b.bytes))
        .collect()
}

/// An enforcement plus what is needed to prove its cleanup: call
/// [`Guard::finish`] at the end of the test (a panic drops it anyway).
pub struct Guard {
    pub enf: Option<Enforcement>,
    ids: KernelIds,
    pin_dir: PathBuf,
}

impl Guard {
    pub fn new(src: &str) -> Guard {
        let enf =
            Enforcement::new(&policy(src)).unwrap_or_else(|e| panic!("loading the policy: {e}"));
        Guard {
            ids: enf.kernel_ids(),
            pin_dir: enf.pin_dir().to_path_buf(),
            enf: Some(enf),
        }
    }

    pub fn enf(&mut self) -> &mut Enforcement {
        self.enf.as_mut().expect("live")
    }

    /// Drops the enforcement and asserts that its programs, maps and pins are gone.
    pub fn finish(mut self) {
        let enf = self.enf.take().expect("live");
        let ids = enf.kernel_ids();
        drop(enf);
        assert_gone(&ids, &self.pin_dir);
        let _ = &self.ids;
    }
}

/// Waits (the kernel frees programs and maps after an RCU grace period) until none of
/// `ids` exists, and asserts the pin directory is gone.
pub fn assert_gone(ids: &KernelIds, pin_dir: &std::path::Path) {
    assert!(
        !pin_dir.exists(),
        "pin directory {} is left",
        pin_dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = ids.still_alive();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "still in the kernel after the drop: {alive:?} (of {ids:?}); map fds held: {:?}",
                held_map_ids()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listener on loopback (`v6` = ::1) on an ephemeral port.
pub fn listener(v6: bool) -> TcpListener {
    TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).expect("bind loopback")
}

/// A connected pair: (client, accepted server side).
pub fn connect(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (s, _) = l.accept().expect("accept");
    for x in [&c, &s] {
        x.set_nodelay(true).unwrap();
        x.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    (c, s)
}

/// A pair whose client is bound to `local` first (to choose the client's port).
pub fn connect_from(l: &TcpListener, local: SocketAddr) -> (TcpStream, TcpStream) {
    let remote = l.local_addr().unwrap();
    let c = skpc_runtime::net::connect_from(local, remote)
        .unwrap_or_else(|e| panic!("connect from {local} to {remote}: {e}"));
    let (s, _) = l.accept().expect("accept");
    for x in [&c, &s] {
        x.set_nodelay(true).unwrap();
        x.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    (c, s)
}

/// One send(2) call; the errno on failure (EACCES for a drop).
pub fn send(s: &impl AsRawFd, buf: &[u8]) -> Result<usize, i32> {
    skpc_runtime::net::send_once(s, buf).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// One writev(2) call with `parts` as iovecs.
pub fn writev(s: &impl AsRawFd, parts: &[&[u8]]) -> Result<usize, i32> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: every iovec points to a live buffer.
    let n = unsafe { libc::writev(s.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
    if n < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n as usize)
    }
}

/// sendfile(2) of `len` bytes of `file` from offset 0.
pub fn sendfile(s: &impl AsRawFd, file: &std::fs::File, len: usize) -> Result<usize, i32> {
    let mut off: libc::off_t = 0;
    // SAFETY: valid descriptors; off is a valid offset pointer.
    let n = unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
    if n < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n as usize)
    }
}

/// Reads until `want` bytes arrived or nothing came for `quiet`.
pub fn recv_up_to(s: &mut TcpStream, want: usize, quiet: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while out.len() < want {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    out
}

/// Whatever arrives within `quiet` (for "nothing arrives" checks).
pub fn recv_any(s: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    recv_up_to(s, usize::MAX, quiet)
}

/// The fd of a stream as a BorrowedFd.
pub fn fd(s: &TcpStream) -> BorrowedFd<'_> {
    s.as_fd()
}

pub const EACCES: i32 = libc::EACCES;
pub const SHORT: Duration = Duration::from_millis(200);
pub const LONG: Duration = Duration::from_secs(2);

/// Debug: map ids this process holds descriptors of.
pub fn held_map_ids() -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        if let Ok(t) = std::fs::read_to_string(e.path()) {
            for l in t.lines() {
                if let Some(v) = l.strip_prefix("map_id:") {
                    out.push(v.trim().parse().unwrap());
                }
            }
        }
    }
    out
}

/// The message one send of `payload` on the connected socket `c` is, as the evaluator
/// takes it: the socket's family, addresses and ports, the payload as `len`; every
/// other field at its test-case default.
pub fn loopback_message(c: &TcpStream, payload: &[u8]) -> skpc::hir::Message {
    let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
    skpc::hir::Message {
        family: if local.is_ipv6() {
            skpc_abi::AF_INET6
        } else {
            skpc_abi::AF_INET
        },
        local_ip: local.ip(),
        remote_ip: remote.ip(),
        local_port: local.port(),
        remote_port: remote.port(),
        len: payload.len() as u32,
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// What the process helpers return for the calling thread (the sender): its uid, gid,
/// pid (the thread group), comm and cgroup (the inode of its cgroup v2 directory).
pub fn process_fields(m: &mut skpc::hir::Message) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: no preconditions.
    unsafe {
        m.uid = libc::getuid();
        m.gid = libc::getgid();
        m.pid = libc::getpid() as u32;
    }
    let comm = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
    m.comm = comm.trim_end_matches('\n').as_bytes().to_vec();
    let path = std::fs::read_to_string("/proc/self/cgroup")
        .expect("/proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup v2 line");
    let root = skpc_runtime::cgroup2_mount().expect("cgroup2 mounted");
    let dir = root.join(path.trim_start_matches('/'));
    m.cgroup = std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .ino();
}

/// The `skpc` binary. Cargo names it only to the tests of the package that builds it
/// (compiler/cli), so the other tests that share this module never call this.
pub fn skpc_bin() -> &'static str {
    match option_env!("CARGO_BIN_EXE_skpc") {
        Some(path) => path,
        None => panic!("only compiler/cli's tests run the skpc binary"),
    }
}

/// The cgroup and pin directories a skpc process with this pid would create.
pub fn leftovers(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("skpc-{pid}-");
    let roots = [
        skpc_runtime::cgroup2_mount().ok(),
        skpc_runtime::bpffs_mount().ok(),
    ];
    roots
        .into_iter()
        .flatten()
        .flat_map(|r| std::fs::read_dir(r).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Runs skpc to completion; asserts it left nothing behind.
pub fn skpc(args: &[&str]) -> Output {
    skpc_with_stdin(args, Stdio::null())
}

/// [`skpc`] with the command's standard input (`skpc exec` passes its own on).
pub fn skpc_with_stdin(args: &[&str], stdin: impl Into<Stdio>) -> Output {
    let child = Command::new(skpc_bin())
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        leftovers(pid),
        Vec::<PathBuf>::new(),
        "skpc {args:?} left these behind"
    );
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback port nobody listens on right now (for servers that take a port number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until `ready` holds; panics naming `what` after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the process `cmd` starts get SIGKILL when the thread that started it ends: a
/// server a test starts is stopped by its owner's Drop, and by this if the test process
/// itself was killed (no Drop runs then).
pub fn dies_with_the_test(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl, which is async-signal-safe, and allocates
    // nothing (it runs in the forked child before exec).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A redis-server on a free loopback port, outside any skpc cgroup; killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// The redis-cli binary.
    pub cli: PathBuf,
}

impl Redis {
    /// A redis-server (with redis-cli) for test `test`; none when the Debian packages are
    /// missing (skipped, or a failure with SKP_REQUIRE_KERNEL=1: `common::tool_or_skip`).
    pub fn start_or_skip(test: &str) -> Option<Redis> {
        let server = crate::common::tool_or_skip(test, "redis-server", "redis-server")?;
        let cli = crate::common::tool_or_skip(test, "redis-cli", "redis-tools")?;
        Some(Redis::start(&server, cli))
    }

    pub fn start(server: &Path, cli: PathBuf) -> Redis {
        let port = free_port();
        let child = dies_with_the_test(&mut Command::new(server))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", "/tmp", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis { child, port, cli };
        wait_until("redis-server", 10, || r.cli(&["PING"]).0 == "PONG");
        r
    }

    /// redis-cli outside skpc: (stdout trimmed, exit code).
    pub fn cli(&self, args: &[&str]) -> (String, i32) {
        let out = Command::new(&self.cli)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            text(&out.stdout).trim().to_string(),
            out.status.code().unwrap_or(-1),
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child's output stream (a `skpc run`'s stderr), read line by line on a thread so
/// that a test can wait for what it says.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<String>,
}

impl Lines {
    pub fn of(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in io::BufRead::lines(io::BufReader::new(stream)).map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        Lines { rx, reader }
    }

    /// The next line that contains `what` (waiting 10 s at most; panics naming it).
    pub fn expect(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("never said {what:?}"),
            }
        }
    }

    /// Everything the stream said, once it has ended.
    pub fn all(self) -> String {
        self.reader.join().unwrap_or_default()
    }
}

/// `skpc run FILE --cgroup CGROUP` with metrics on an ephemeral port (interval 0.2 s):
/// the child, its stderr, and the metrics address it printed (`host:port`).
pub fn run_with_metrics(file: &Path, cgroup: &Path) -> (std::process::Child, Lines, String) {
    let mut run = std::process::Command::new(skpc_bin())
        .arg("run")
        .arg(file)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--metrics", "127.0.0.1:0", "--interval", "0.2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skpc run starts");
    let stderr = Lines::of(run.stderr.take().expect("piped stderr"));
    let line = stderr.expect("metrics on http://");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.strip_suffix("/metrics"))
        .expect("an address")
        .to_string();
    (run, stderr, addr)
}

/// Sends `msg` on a new connection to 127.0.0.1:`port` from a python3 process in
/// `cgroup`: "ok", or "EACCES" when the send was refused (the policy dropped it).
pub fn send_from_cgroup(python: &Path, port: u16, cgroup: &Path, msg: &str) -> String {
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import socket,sys\nc=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\ntry:\n c.send(sys.argv[2].encode()); print('ok')\nexcept PermissionError: print('EACCES')",
        &port.to_string(),
        msg,
    ]);
    skpc_runtime::process::join_cgroup_on_exec(&mut cmd, cgroup).expect("joining the cgroup");
    text(&cmd.output().expect("python3 runs").stdout)
        .trim()
        .to_string()
}

/// (messages, bytes) of the counter `name`; panics listing them all if there is none.
pub fn counter(counters: &[skpc_runtime::CounterValue], name: &str) -> (u64, u64) {
    counters
        .iter()
        .find(|x| x.name == name)
        .map(|x| (x.messages, x.bytes))
        .unwrap_or_else(|| panic!("no counter {name}: {counters:?}"))
}

/// A redis-cli session inside `cg`, its commands written one at a time (stdin piped) and
/// its replies read line by line, so that a test can look at the maps while it is open.
pub struct CliSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: Lines,
}

impl CliSession {
    pub fn open(redis: &Redis, cg: &skpc_runtime::TempCgroup) -> CliSession {
        let mut cmd = Command::new(&redis.cli);
        cmd.args(["-p", &redis.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        skpc_runtime::process::join_cgroup_on_exec(&mut cmd, cg.path()).unwrap();
        let mut child = dies_with_the_test(&mut cmd)
            .spawn()
            .expect("redis-cli runs");
        let stdin = child.stdin.take().expect("piped");
        let out = Lines::of(child.stdout.take().expect("piped"));
        CliSession { child, stdin, out }
    }

    /// Sends one command line and returns the next reply line containing `expect`.
    pub fn say(&mut self, command: &str, expect: &str) -> String {
        io::Write::write_all(&mut self.stdin, format!("{command}\n").as_bytes()).unwrap();
        io::Write::flush(&mut self.stdin).unwrap();
        self.out.expect(expect)
    }

    pub fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// `reply` to a redis `*3` command (SET) on the given ports: the policy of the reload
/// tests below.
pub fn guard_ports(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "reply \"-ERR guarded by skpc\\r\\n\" if port in {{{}}} and payload[0..2] == \"*3\";",
        ports.join(", ")
    )
}
