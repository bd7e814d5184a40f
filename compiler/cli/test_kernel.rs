//! `skpc test --kernel`: the same test cases on the real kernel, over loopback TCP.
//!
//! Each case becomes a real connection: a listener on the case's remote address and
//! port, a client bound to its local address and port, the client put under the policy
//! (a sockmap slot; for a reply, the sockhash under its own key), one `send` of the
//! case's payload. A pass must deliver the bytes, a drop must fail the send with EACCES,
//! a discard must send every byte while the peer receives none of them, a reply must send
//! every byte while the peer receives none and the client reads exactly the reply, and
//! the connection must still work after it (the same send is answered again, bytes from
//! the peer arrive). Cases a loopback run cannot reproduce are
//! skipped, each with the reason: addresses off the loopback, a policy that reads the
//! sender's uid/gid/pid/cgroup/comm (the run's own process has other values), a `len`
//! beyond the payload of a policy that reads bytes (the kernel would read bytes the case
//! does not give), and verdicts one send cannot show (redirects, cork, `for N`).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use skpc::compile::Compiled;
use skpc::hir::{self, Decision, IntField, Test, Verdict};
use skpc_runtime::{Enforcement, Policy};

/// The sockmap slot the test client is put in (the last one: the least likely to be a
/// redirect target of the policy).
const CLIENT_SLOT: u32 = skpc_abi::SOCKMAP_SLOTS - 1;

/// How long the peer waits for bytes a discard must have swallowed: loopback delivers
/// within microseconds, so nothing after this means nothing at all.
const DISCARD_WAIT: Duration = Duration::from_millis(200);

/// The verdicts one send can show.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect<'a> {
    Pass,
    Drop,
    Discard,
    Reply(&'a [u8]),
}

/// What the kernel did with one case.
pub enum Outcome {
    Ok,
    Failed(String),
    Skipped(String),
}

/// Enforces the policy and runs every case; the outcome per case.
pub fn run(
    c: &Compiled,
    file: &str,
    source: &str,
    cases: &[&hir::TestCase],
) -> anyhow::Result<Vec<Outcome>> {
    let object = skpc::compile::runtime_object(c, file, source);
    let policy = Policy::new(
        object,
        c.policy.counters.iter().map(|x| x.name.clone()).collect(),
    );
    let mut enforcement = Enforcement::new(&policy)?;
    let reads = reads(&c.policy);
    Ok(cases
        .iter()
        .map(|case| run_case(&mut enforcement, case, reads))
        .collect())
}

fn run_case(enf: &mut Enforcement, case: &hir::TestCase, reads: Reads) -> Outcome {
    let m = &case.message;
    let expect =
        match case.expect {
            Decision {
                verdict: Verdict::Pass,
                apply_bytes: None,
            } => Expect::Pass,
            Decision {
                verdict: Verdict::Drop,
                apply_bytes: None,
            } => Expect::Drop,
            Decision {
                verdict: Verdict::Discard,
                apply_bytes: None,
            } => Expect::Discard,
            Decision {
                verdict: Verdict::Reply(ref bytes),
                apply_bytes: None,
            } => Expect::Reply(bytes),
            _ => return Outcome::Skipped(
                "one send shows only pass, drop, discard or reply (not redirect, cork, `for N`)"
                    .into(),
            ),
        };
    if reads.process_fields {
        return Outcome::Skipped("the policy reads uid/gid/pid/cgroup/comm, which this run's process cannot take from the case".into());
    }
    if reads.bytes && m.len as usize > m.payload.len() {
        return Outcome::Skipped(format!(
            "len {} is larger than the {}-byte payload: the kernel would read bytes the case does not give",
            m.len,
            m.payload.len()
        ));
    }
    if !m.local_ip.is_loopback() && !is_mapped_loopback(&m.local_ip)
        || !m.remote_ip.is_loopback() && !is_mapped_loopback(&m.remote_ip)
    {
        return Outcome::Skipped(format!(
            "{} -> {} is not a loopback connection",
            m.local_ip, m.remote_ip
        ));
    }
    if m.local_port == 0 || m.remote_port == 0 {
        return Outcome::Skipped("port 0 cannot be bound to".into());
    }
    let remote = SocketAddr::new(m.remote_ip, m.remote_port);
    let local = SocketAddr::new(m.local_ip, m.local_port);
    let listener = match TcpListener::bind(remote) {
        Ok(l) => l,
        Err(e) => return Outcome::Skipped(format!("cannot listen on {remote}: {e}")),
    };
    let client = match skpc_runtime::net::connect_from(local, remote) {
        Ok(c) => c,
        Err(e) => return Outcome::Skipped(format!("cannot connect from {local} to {remote}: {e}")),
    };
    let Ok((mut server, _)) = listener.accept() else {
        return Outcome::Skipped(format!("no connection arrived on {remote}"));
    };
    // A reply goes to the sender's own sockhash entry: the client is put there (only
    // there: a socket under the program in one map cannot join another, EBUSY).
    let inserted = match expect {
        Expect::Reply(_) => enf.insert_peer(std::os::fd::AsFd::as_fd(&client)).map(Some),
        _ => enf
            .insert_sock(CLIENT_SLOT, std::os::fd::AsFd::as_fd(&client))
            .map(|()| None),
    };
    let peer_key = match inserted {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Failed(format!(
                "cannot put the client under the policy: {:#}",
                anyhow::Error::from(e)
            ))
        }
    };
    // The case's bytes; a longer `len` is filled with 'x' (bytes the case leaves unseen).
    let mut bytes = m.payload.clone();
    bytes.resize(m.len as usize, b'x');
    let sent = skpc_runtime::net::send_once(&client, &bytes);
    let outcome = match (sent, expect) {
        (Err(e), Expect::Drop) if e.raw_os_error() == Some(libc::EACCES) => Outcome::Ok,
        (Ok(n), Expect::Discard) if n == bytes.len() => received_nothing(&mut server),
        (Ok(n), Expect::Reply(reply)) if n == bytes.len() => {
            replied(&client, &mut server, &bytes, reply)
        }
        (Ok(n), Expect::Reply(_)) => Outcome::Failed(format!(
            "expected a reply, the send took {n} of {} bytes",
            bytes.len()
        )),
        (Ok(n), Expect::Discard) => Outcome::Failed(format!(
            "expected a discard, the send took {n} of {} bytes",
            bytes.len()
        )),
        (Ok(n), Expect::Pass) => {
            let _ = server.set_read_timeout(Some(Duration::from_secs(2)));
            let mut got = vec![0u8; n];
            match server.read_exact(&mut got) {
                Ok(()) if got == bytes[..n] && n == bytes.len() => Outcome::Ok,
                Ok(()) => Outcome::Failed(format!(
                    "the peer received other bytes than the {} sent",
                    bytes.len()
                )),
                Err(e) => Outcome::Failed(format!(
                    "the send passed but the peer did not receive the bytes: {e}"
                )),
            }
        }
        (Ok(n), Expect::Drop) => Outcome::Failed(format!(
            "expected a drop (EACCES), the kernel passed {n} bytes"
        )),
        (Err(e), Expect::Pass) => Outcome::Failed(format!("expected a pass, the send failed: {e}")),
        (Err(e), Expect::Discard) => Outcome::Failed(format!(
            "expected a discard (the send succeeds), the send failed: {e}"
        )),
        (Err(e), Expect::Reply(_)) => Outcome::Failed(format!(
            "expected a reply (the send succeeds), the send failed: {e}"
        )),
        (Err(e), Expect::Drop) => Outcome::Failed(format!(
            "expected a drop (EACCES), the send failed otherwise: {e}"
        )),
    };
    match peer_key {
        Some(k) => {
            let _ = enf.remove_peer(&k);
        }
        None => {
            let _ = enf.remove_sock(CLIENT_SLOT);
        }
    }
    outcome
}

/// A reply's checks: the client reads exactly `reply`, the peer nothing; the connection
/// still works: the same send is answered the same way, and bytes from the peer arrive.
fn replied(
    client: &std::net::TcpStream,
    server: &mut std::net::TcpStream,
    sent: &[u8],
    reply: &[u8],
) -> Outcome {
    let mut client = match client.try_clone() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot read the client: {e}")),
    };
    let read_reply = |client: &mut std::net::TcpStream| -> Result<(), String> {
        let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
        let mut got = vec![0u8; reply.len()];
        client
            .read_exact(&mut got)
            .map_err(|e| format!("expected a reply, the client read no reply: {e}"))?;
        if got != reply {
            return Err(format!(
                "expected a reply, the client read {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        match received_nothing(client) {
            Outcome::Ok => Ok(()),
            _ => Err("expected a reply, the client read more than the reply".into()),
        }
    };
    if let Err(e) = read_reply(&mut client) {
        return Outcome::Failed(e);
    }
    if let Outcome::Failed(e) = received_nothing(server) {
        return Outcome::Failed(e.replace("discard", "reply"));
    }
    // Nothing stuck to the socket: the same send is answered again.
    match skpc_runtime::net::send_once(&client, sent) {
        Ok(n) if n == sent.len() => {}
        Ok(n) => return Outcome::Failed(format!("after the reply, a send took {n} bytes")),
        Err(e) => return Outcome::Failed(format!("after the reply, a send failed: {e}")),
    }
    if let Err(e) = read_reply(&mut client) {
        return Outcome::Failed(format!("after the reply: {e}"));
    }
    // And the peer can still talk to the client.
    if let Err(e) = std::io::Write::write_all(server, b"ok") {
        return Outcome::Failed(format!("after the reply, the peer cannot write: {e}"));
    }
    let mut ok = [0u8; 2];
    match client.read_exact(&mut ok) {
        Ok(()) if &ok == b"ok" => Outcome::Ok,
        Ok(()) => Outcome::Failed("after the reply, the client read other bytes".into()),
        Err(e) => Outcome::Failed(format!("after the reply, the client read nothing: {e}")),
    }
}

/// A discard's check on the peer: no byte arrives within [`DISCARD_WAIT`].
fn received_nothing(server: &mut std::net::TcpStream) -> Outcome {
    if let Err(e) = server.set_read_timeout(Some(DISCARD_WAIT)) {
        return Outcome::Failed(format!("cannot wait on the peer: {e}"));
    }
    let mut buf = [0u8; 4096];
    match server.read(&mut buf) {
        Ok(0) => Outcome::Failed("expected a discard, the connection was closed".into()),
        Ok(n) => Outcome::Failed(format!("expected a discard, the peer received {n} bytes")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(format!("expected a discard, reading the peer failed: {e}")),
    }
}

fn is_mapped_loopback(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// Whether any rule reads a field of the sending process.
/// What of a message the policy reads that a loopback run cannot reproduce from a case.
#[derive(Clone, Copy)]
struct Reads {
    /// uid/gid/pid/cgroup/comm: the run's own process has other values.
    process_fields: bool,
    /// Payload bytes or protocol fields: a case whose `len` is larger than its payload
    /// leaves bytes the kernel would read unsaid (the run pads them with `x`).
    bytes: bool,
}

fn reads(p: &hir::Policy) -> Reads {
    let any = |f: fn(&Test) -> bool| p.rules.iter().any(|r| r.cond.any_test(f));
    Reads {
        process_fields: any(|t| {
            matches!(
                t,
                Test::Int {
                    field: IntField::Uid | IntField::Gid | IntField::Pid | IntField::Cgroup,
                    ..
                } | Test::Comm { .. }
            )
        }),
        bytes: any(|t| {
            matches!(
                t,
                Test::Int {
                    field: IntField::PayloadByte(_),
                    ..
                } | Test::Payload { .. }
                    | Test::Proto(_)
                    | Test::Text { .. }
            )
        }),
    }
}
