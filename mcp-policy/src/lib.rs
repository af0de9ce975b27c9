//! The `mcp-policy` command as a library: `check`, `explain`, `gateway`, and the
//! start-up the gateway and the demo server share (`serving`: logging, the policy, its
//! counters, metrics, the listener). `src/main.rs` is only the command line.
//!
//! The commands sit behind the default `commands` feature; without it the library is
//! `serving` alone, which is all the demo server (`demo/`) needs.
//!
//! Exit codes: 0 fine, 1 an error (a policy that does not load, a server that cannot
//! be reached), 2 warnings under `--strict`, or a usage error.

/// Appends a line to the report `out` (printed at the end; see [`print()`]).
#[cfg(feature = "commands")]
macro_rules! say {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

pub mod approvals;
#[cfg(feature = "commands")]
pub mod check;
#[cfg(feature = "commands")]
pub mod explain;
#[cfg(feature = "commands")]
pub mod gateway;
#[cfg(feature = "commands")]
pub mod grant;
#[cfg(feature = "commands")]
pub mod pin;
pub mod serving;
#[cfg(feature = "commands")]
pub mod tls;
#[cfg(feature = "commands")]
pub mod wrap;

/// What a check or an explanation found: exit code 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Fine,
    /// Exit code 1: an error.
    Error,
    /// Exit code 2: warnings under `--strict`.
    Warnings,
}

impl From<Outcome> for std::process::ExitCode {
    fn from(outcome: Outcome) -> std::process::ExitCode {
        match outcome {
            Outcome::Fine => std::process::ExitCode::SUCCESS,
            Outcome::Error => std::process::ExitCode::from(1),
            Outcome::Warnings => std::process::ExitCode::from(2),
        }
    }
}

/// Prints a report. A closed pipe (`mcp-policy schema | head`) ends the output quietly
/// instead of panicking.
pub fn print(report: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(err) = written
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("mcp-policy: cannot write the report: {err}");
    }
}

/// A policy's path as the user wrote it, for messages.
#[cfg(feature = "commands")]
pub(crate) fn shown(path: &std::path::Path) -> String {
    path.display().to_string()
}
