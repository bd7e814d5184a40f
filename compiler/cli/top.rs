//! `skpc top --metrics ADDR`: a live view of a running `skpc run --metrics ADDR`, per
//! rule messages/s and bytes/s, refreshing like bpftop.
//!
//! It scrapes `http://ADDR/metrics` every `--interval`, parses the lines skpc's own
//! exposition writes (metrics.rs; a general Prometheus parser would be a dependency for
//! five metric names), and computes each rule's rates over the last interval. On a
//! terminal it draws a full-screen table (ratatui on crossterm); otherwise, or with
//! `--once`, it prints the table once, as text or (`-j`) as a JSON document.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::json::{self, ReloadsJson, TopDoc, TopRuleJson};

#[derive(Args)]
pub struct TopArgs {
    /// The address `skpc run --metrics ADDR` serves (HOST:PORT, e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: String,
    /// Seconds between scrapes; the rates are over this interval.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// Scrape twice, `--interval` apart, print the table once and exit (also what
    /// happens when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// Print the table once as a JSON document (docs/json.md) instead.
    #[arg(short = 'j', long)]
    pub json: bool,
}

/// One scrape of skpc's exposition.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Scrape {
    pub policy: String,
    pub version: u32,
    pub hash: String,
    pub sockets: u64,
    pub untouched_sockets: u64,
    pub reloads: (u64, u64),
    pub rules: Vec<RuleSample>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RuleSample {
    pub line: u32,
    pub action: String,
    pub rule: String,
    pub messages: u64,
    pub bytes: u64,
}

/// One row of the table: totals, and rates over the last interval (None on the first
/// scrape).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub sample: RuleSample,
    pub messages_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
}

/// Parses the exposition `skpc run --metrics` writes. Lines of other metrics are
/// ignored; a body without `skpc_policy_info` is not skpc's.
pub(crate) fn parse(text: &str) -> Result<Scrape, String> {
    let mut s = Scrape::default();
    let mut info = false;
    let mut rules: Vec<RuleSample> = Vec::new();
    let mut index: HashMap<(u32, String, String), usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line}", n + 1);
        let (name, labels, value) = sample(line).map_err(|e| bad(&e))?;
        let label = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let count = || -> Result<u64, String> {
            if value.is_finite() && value >= 0.0 {
                Ok(value as u64)
            } else {
                Err(bad("not a count"))
            }
        };
        match name {
            "skpc_rule_messages_total" | "skpc_rule_bytes_total" => {
                if s.policy.is_empty() {
                    s.policy = label("policy");
                }
                let line_no = label("line").parse().unwrap_or(0);
                let key = (line_no, label("action"), label("rule"));
                let i = *index.entry(key.clone()).or_insert_with(|| {
                    rules.push(RuleSample {
                        line: key.0,
                        action: key.1,
                        rule: key.2,
                        messages: 0,
                        bytes: 0,
                    });
                    rules.len() - 1
                });
                if name == "skpc_rule_messages_total" {
                    rules[i].messages = count()?;
                } else {
                    rules[i].bytes = count()?;
                }
            }
            "skpc_policy_info" => {
                info = true;
                s.policy = label("policy");
                s.version = label("version").parse().unwrap_or(0);
                s.hash = label("hash");
            }
            "skpc_sockets" => s.sockets = count()?,
            "skpc_untouched_sockets_total" => s.untouched_sockets = count()?,
            "skpc_policy_reloads_total" => match label("result").as_str() {
                "ok" => s.reloads.0 = count()?,
                "error" => s.reloads.1 = count()?,
                _ => {}
            },
            _ => {}
        }
    }
    if !info {
        return Err("no skpc_policy_info metric".into());
    }
    // The exposition sorts by label values; the table goes in file order, with the
    // implicit default (line 0) last.
    rules.sort_by_key(|r| (r.line == 0, r.line));
    s.rules = rules;
    Ok(s)
}

type Labels = Vec<(String, String)>;

/// `name{k="v",...} value [timestamp]`, label values unescaped (`\\`, `\"`, `\n`).
fn sample(line: &str) -> Result<(&str, Labels, f64), String> {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(end);
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut after = None;
        loop {
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    after = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("a label value without quotes".into());
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => break,
                    },
                    c => value.push(c),
                }
            }
            if !closed {
                return Err("an unterminated label value".into());
            }
            labels.push((key.trim().to_string(), value));
        }
        let Some(after) = after else {
            return Err("labels without a closing }".into());
        };
        rest = &r[after..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|_| "a value that is not a number".to_string())?;
    Ok((name, labels, value))
}

/// The rows of `cur`, with rates against `prev` taken `secs` earlier. A counter that
/// went down, a rule the previous scrape did not have, or a new policy version (a
/// reload starts the counters from zero) counts from zero, as Prometheus's `rate()`.
pub(crate) fn rates(prev: Option<&Scrape>, cur: &Scrape, secs: f64) -> Vec<Row> {
    let reset = prev.is_some_and(|p| p.version != cur.version || p.hash != cur.hash);
    cur.rules
        .iter()
        .map(|r| {
            let before = prev.filter(|_| !reset).map(|p| {
                p.rules
                    .iter()
                    .find(|q| q.line == r.line && q.rule == r.rule && q.action == r.action)
                    .map_or((0, 0), |q| (q.messages, q.bytes))
            });
            let rate = |now: u64, then: u64| {
                let delta = if now >= then { now - then } else { now };
                delta as f64 / secs.max(1e-9)
            };
            let (m, b) = match (prev, before) {
                (None, _) => (None, None),
                (Some(_), None) => (Some(rate(r.messages, 0)), Some(rate(r.bytes, 0))),
                (Some(_), Some((pm, pb))) => (Some(rate(r.messages, pm)), Some(rate(r.bytes, pb))),
            };
            Row {
                sample: r.clone(),
                messages_per_second: m,
                bytes_per_second: b,
            }
        })
        .collect()
}

/// `ADDR` as given, without an `http://` in front or a `/metrics` behind.
fn host_port(addr: &str) -> &str {
    let a = addr.strip_prefix("http://").unwrap_or(addr);
    a.strip_suffix("/metrics")
        .unwrap_or(a)
        .trim_end_matches('/')
}

fn not_skpc(addr: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "http://{addr}/metrics {why}: is {addr} the address given to `skpc run --metrics`?"
    )
}

/// GET http://ADDR/metrics, parsed.
pub(crate) fn scrape(addr: &str) -> anyhow::Result<Scrape> {
    let sockaddr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            anyhow::anyhow!("cannot resolve {addr}: give --metrics HOST:PORT, e.g. 127.0.0.1:9464")
        })?;
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout).map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => format!("nothing is listening on {addr}"),
            _ => format!("cannot connect to {addr} ({e})"),
        };
        anyhow::anyhow!("{what}: is `skpc run --metrics {addr}` running?")
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    let mut response = Vec::new();
    stream
        .write_all(request.as_bytes())
        .and_then(|_| stream.read_to_end(&mut response))
        .map_err(|e| anyhow::anyhow!("reading http://{addr}/metrics: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| not_skpc(addr, "did not answer HTTP"))?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with("HTTP/") {
        return Err(not_skpc(addr, "did not answer HTTP"));
    }
    if code != "200" {
        return Err(not_skpc(
            addr,
            &format!(
                "answered {}",
                &status[status.find(' ').unwrap_or(0)..].trim()
            ),
        ));
    }
    parse(body).map_err(|e| not_skpc(addr, &format!("is not skpc's exposition ({e})")))
}

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        anyhow::bail!("--interval must be a positive number of seconds, e.g. 1 or 0.5");
    }
    let addr = host_port(&args.metrics).to_string();
    let interval = Duration::from_secs_f64(args.interval.max(0.05));
    let first = scrape(&addr)?;
    if args.once || args.json || !std::io::stdout().is_terminal() {
        let t0 = Instant::now();
        std::thread::sleep(interval);
        let cur = scrape(&addr)?;
        let secs = t0.elapsed().as_secs_f64();
        let rows = rates(Some(&first), &cur, secs);
        let out = if args.json {
            json::line(&doc(&addr, &first, &cur, secs, &rows)) + "\n"
        } else {
            text(&addr, &cur, secs, &rows)
        };
        crate::write_stdout(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    tui::run(&addr, interval, first)?;
    Ok(ExitCode::SUCCESS)
}

fn doc<'a>(
    addr: &'a str,
    prev: &Scrape,
    cur: &'a Scrape,
    secs: f64,
    rows: &'a [Row],
) -> TopDoc<'a> {
    TopDoc {
        metrics: addr,
        policy: &cur.policy,
        version: cur.version,
        hash: &cur.hash,
        sockets: cur.sockets,
        untouched_sockets: cur.untouched_sockets,
        reloads: ReloadsJson {
            ok: cur.reloads.0,
            error: cur.reloads.1,
        },
        interval_seconds: secs,
        reset: prev.version != cur.version || prev.hash != cur.hash,
        rules: rows
            .iter()
            .map(|r| TopRuleJson {
                line: r.sample.line,
                action: &r.sample.action,
                rule: &r.sample.rule,
                messages: r.sample.messages,
                bytes: r.sample.bytes,
                messages_per_second: r.messages_per_second,
                bytes_per_second: r.bytes_per_second,
            })
            .collect(),
    }
}

fn header(addr: &str, s: &Scrape) -> String {
    format!(
        "policy {}  version {} ({})  sockets {} ({} untouched)  reloads {} ok, {} error  [http://{addr}/metrics]",
        s.policy, s.version, s.hash, s.sockets, s.untouched_sockets, s.reloads.0, s.reloads.1
    )
}

const COLUMNS: [&str; 7] = [
    "LINE", "ACTION", "MSGS/S", "BYTES/S", "MESSAGES", "BYTES", "RULE",
];

fn cells(r: &Row) -> [String; 7] {
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    [
        r.sample.line.to_string(),
        r.sample.action.clone(),
        rate(r.messages_per_second),
        rate(r.bytes_per_second),
        r.sample.messages.to_string(),
        r.sample.bytes.to_string(),
        r.sample.rule.clone(),
    ]
}

/// The plain-text table: a header line, then one line per rule.
fn text(addr: &str, cur: &Scrape, secs: f64, rows: &[Row]) -> String {
    let mut out = format!("{}  rates over {secs:.2} s\n", header(addr, cur));
    let body: Vec<[String; 7]> = rows.iter().map(cells).collect();
    let mut widths = COLUMNS.map(str::len);
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut put = |r: &[String; 7]| {
        let mut l = String::new();
        for (i, c) in r.iter().enumerate() {
            match i {
                1 => l.push_str(&format!("{c:<w$}  ", w = widths[i])),
                6 => l.push_str(c),
                _ => l.push_str(&format!("{c:>w$}  ", w = widths[i])),
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    put(&COLUMNS.map(String::from));
    for r in &body {
        put(r);
    }
    out
}

mod tui {
    use super::*;
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use crossterm::terminal::{
        disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
    };
    use crossterm::{cursor, execute};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::text::Line;
    use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Table};
    use ratatui::{backend::CrosstermBackend, Terminal};

    /// Puts the terminal back (main screen, cooked mode, cursor) however `top` ends.
    fn restore() {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    }

    struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            restore();
        }
    }

    pub(super) fn run(addr: &str, interval: Duration, first: Scrape) -> anyhow::Result<()> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        enable_raw_mode()
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        let _guard = Guard;
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        let mut prev: Option<(Scrape, Instant)> = None;
        let mut cur = (first, Instant::now());
        let mut error: Option<String> = None;
        let mut next = Instant::now() + interval;
        loop {
            let secs = prev
                .as_ref()
                .map_or(0.0, |p| cur.1.duration_since(p.1).as_secs_f64());
            let rows = rates(prev.as_ref().map(|p| &p.0), &cur.0, secs);
            terminal.draw(|f| draw(f, addr, &cur.0, secs, &rows, error.as_deref()))?;
            let now = Instant::now();
            if event::poll(next.saturating_duration_since(now))? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                    {
                        return Ok(());
                    }
                }
                continue;
            }
            next = Instant::now() + interval;
            match scrape(addr) {
                Ok(s) => {
                    prev = Some(std::mem::replace(&mut cur, (s, Instant::now())));
                    error = None;
                }
                Err(e) => error = Some(format!("{e:#}")),
            }
        }
    }

    fn draw(
        f: &mut ratatui::Frame,
        addr: &str,
        s: &Scrape,
        secs: f64,
        rows: &[Row],
        error: Option<&str>,
    ) {
        let [top, main, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        f.render_widget(Paragraph::new(Line::from(header(addr, s))), top);
        let body = rows.iter().map(|r| TRow::new(cells(r).map(Cell::from)));
        let widths = [
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(14),
            Constraint::Min(10),
        ];
        let table = Table::new(body, widths)
            .header(
                TRow::new(COLUMNS.map(Cell::from))
                    .style(Style::default().add_modifier(Modifier::REVERSED)),
            )
            .block(Block::default().borders(Borders::TOP));
        f.render_widget(table, main);
        let status = match error {
            Some(e) => format!("scrape failed (showing the last one): {e}"),
            None if secs > 0.0 => format!("rates over {secs:.2} s   q/Esc: quit"),
            None => "rates after the next scrape   q/Esc: quit".to_string(),
        };
        f.render_widget(Paragraph::new(Line::from(status)), bottom);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{encode, Counter, Snapshot};

    fn snapshot(version: u32, messages: u64, bytes: u64) -> Snapshot {
        Snapshot {
            policy: "guard.skp".into(),
            version,
            hash: format!("hash{version}"),
            reloads: ReloadsJson {
                ok: version as u64 - 1,
                error: 2,
            },
            sockets: 3,
            untouched_sockets: 6,
            run_seconds: 0.0,
            runs: 0,
            counters: vec![
                Counter {
                    line: 0,
                    rule: "default pass (implicit)".into(),
                    action: "pass".into(),
                    messages: 100,
                    bytes: 1000,
                },
                Counter {
                    line: 12,
                    rule: "drop if payload starts with \"x\\y\";".into(),
                    action: "drop".into(),
                    messages,
                    bytes,
                },
                Counter {
                    line: 3,
                    rule: "count big if len > 10;".into(),
                    action: "count".into(),
                    messages: 1,
                    bytes: 11,
                },
            ],
        }
    }

    fn scrape_of(s: &Snapshot) -> Scrape {
        parse(&String::from_utf8(encode(s).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn skpcs_own_exposition_parses_back() {
        let s = scrape_of(&snapshot(2, 7, 700));
        assert_eq!(s.policy, "guard.skp");
        assert_eq!((s.version, s.hash.as_str()), (2, "hash2"));
        assert_eq!((s.sockets, s.untouched_sockets, s.reloads), (3, 6, (1, 2)));
        let lines: Vec<u32> = s.rules.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 12, 0], "file order, the default last");
        assert_eq!(
            s.rules[1],
            RuleSample {
                line: 12,
                action: "drop".into(),
                rule: "drop if payload starts with \"x\\y\";".into(),
                messages: 7,
                bytes: 700,
            }
        );
    }

    #[test]
    fn other_expositions_and_broken_lines_are_errors() {
        assert!(parse("# HELP up\nup 1\n")
            .unwrap_err()
            .contains("skpc_policy_info"));
        assert!(parse("skpc_policy_info{policy=\"a 1\n").is_err());
        assert!(parse("skpc_sockets{} x\nskpc_policy_info{} 1\n").is_err());
        let s = parse("skpc_policy_info{version=\"4\"} 1 1700000000\nskpc_sockets 2\n").unwrap();
        assert_eq!((s.version, s.sockets), (4, 2));
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let a = scrape_of(&snapshot(1, 10, 1000));
        let b = scrape_of(&snapshot(1, 30, 5000));
        assert!(rates(None, &a, 1.0)
            .iter()
            .all(|r| r.messages_per_second.is_none()));
        let rows = rates(Some(&a), &b, 0.5);
        let drop = &rows[1];
        assert_eq!(drop.messages_per_second, Some(40.0));
        assert_eq!(drop.bytes_per_second, Some(8000.0));
        assert_eq!((drop.sample.messages, drop.sample.bytes), (30, 5000));
        assert_eq!(
            rows[2].messages_per_second,
            Some(0.0),
            "the default did not move"
        );
    }

    #[test]
    fn a_reload_resets_the_rates_to_count_from_zero() {
        let a = scrape_of(&snapshot(1, 500, 50_000));
        // Version 2 started from zero: 20 messages since, not 20 - 500.
        let b = scrape_of(&snapshot(2, 20, 2000));
        let rows = rates(Some(&a), &b, 2.0);
        assert_eq!(rows[1].messages_per_second, Some(10.0));
        assert_eq!(rows[1].bytes_per_second, Some(1000.0));
        // The default's 100 too: it restarted as well.
        assert_eq!(rows[2].messages_per_second, Some(50.0));
        // A counter that went down without a version change is a reset as well.
        let c = scrape_of(&snapshot(2, 4, 40));
        assert_eq!(rates(Some(&b), &c, 1.0)[1].messages_per_second, Some(4.0));
    }

    #[test]
    fn the_text_table_has_a_header_and_a_row_per_rule() {
        let a = scrape_of(&snapshot(1, 10, 1000));
        let b = scrape_of(&snapshot(1, 30, 5000));
        let out = text("127.0.0.1:9464", &b, 0.5, &rates(Some(&a), &b, 0.5));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with(
            "policy guard.skp  version 1 (hash1)  sockets 3 (6 untouched)  reloads 0 ok, 2 error"
        ));
        assert!(lines[1].starts_with("LINE  ACTION"), "{out}");
        assert!(
            lines[3].contains("   40.0 ")
                && lines[3].ends_with("drop if payload starts with \"x\\y\";"),
            "{out}"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn addresses_may_be_given_as_urls() {
        assert_eq!(host_port("http://127.0.0.1:9464/metrics"), "127.0.0.1:9464");
        assert_eq!(host_port("127.0.0.1:9464"), "127.0.0.1:9464");
    }
}
