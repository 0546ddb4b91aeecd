//! Text output shared by every command: the `out!` line printer, byte sizes for people,
//! pretty JSON, and the progress bar (drawn only when stderr is a terminal, so scripts and logs
//! never see it).

use anyhow::Result;
use cairn::ops::progress::{NoProgress, Progress};
use std::io::{IsTerminal, Write};

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`), and
/// prints one line: control characters in it (file, tensor, branch names, messages: all of
/// them can come from strangers) are escaped by [`escape_controls`], so no value can move the
/// cursor, retitle the terminal or start a forged line of output.
macro_rules! out {
    () => {{
        use std::io::Write as _;
        writeln!($crate::render::stdout())?
    }};
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($t)*);
        writeln!(
            $crate::render::stdout(),
            "{}",
            $crate::render::escape_controls(&line)
        )?
    }};
}
pub(crate) use out;

/// `s` with every control character but tab written as an escape (`\n`, `\x1b`, `\u{9b}`),
/// borrowed when there is none.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Sizes in binary units with one decimal (`1.5 MiB`); exact below 1 KiB.
pub fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = stdout();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Standard output, whose "broken pipe" errors say they are stdout's: a reader that closed it
/// early (`cairn log | head`) is not a failure, while a broken pipe anywhere else is.
pub struct Stdout(std::io::Stdout);

/// The error inside an [`std::io::Error`] of kind `BrokenPipe` when the pipe was stdout.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Standard output, for everything the commands print.
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout())
}

fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` only says that whoever read stdout stopped reading: the one error that exits 0.
pub fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn begin(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn end(&self) {
        self.0.finish_and_clear();
    }
}

/// A byte progress bar on a terminal, else nothing.
pub fn progress() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        Box::new(Bar(bar))
    } else {
        Box::new(NoProgress)
    }
}

/// The first 12 characters of a hex commit id, as `CommitId::short` prints it; anything that is
/// not a commit id is returned whole (never sliced by byte index, which panics inside a
/// multi-byte character).
pub fn short_hex(id: &str) -> String {
    id.parse::<cairn::CommitId>()
        .map(|c| c.short())
        .unwrap_or_else(|_| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_benign() {
        let closed = anyhow::Error::new(mark(std::io::ErrorKind::BrokenPipe.into()));
        assert!(stdout_closed(&closed.context("printing")));
        // A broken pipe to anything else (a child process, a socket) is a failure.
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!stdout_closed(&other.context("writing to the load test")));
    }
}
