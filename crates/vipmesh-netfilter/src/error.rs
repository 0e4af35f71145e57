//! The crate's single error type.

use std::path::PathBuf;

use crate::model::{Family, Table};

/// Everything that can go wrong in `vipmesh-netfilter`.
///
/// Validation errors ([`Error::InvalidValue`], [`Error::InvalidRule`]) are raised before anything
/// touches the kernel, so a ruleset that fails validation is never partly applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A single value (CIDR, port, chain name, comment, interface …) is malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidValue {
        /// Which field was being parsed (`"cidr"`, `"port"`, `"chain name"` …).
        field: &'static str,
        /// The offending input, verbatim.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A rule is well-formed value by value, but not valid as a whole in its place
    /// (e.g. `DNAT` in the mangle table, `--dport` without `-p tcp`, an IPv6 CIDR in an IPv4 ruleset).
    #[error("invalid rule in {family} {table} {chain}: {reason} (rule: {rule})")]
    InvalidRule {
        /// Family of the ruleset.
        family: Family,
        /// Table the rule was added to.
        table: Table,
        /// Chain the rule was added to.
        chain: String,
        /// The rule, rendered.
        rule: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A required tool (`iptables-restore`, `iptables-save`) is not installed.
    #[error("{tool} not found (is iptables installed?)")]
    ToolMissing {
        /// The executable we tried to run.
        tool: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// The network namespace path does not exist or is not a network namespace.
    #[error("network namespace {path} not found")]
    NetnsNotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// Opening or entering the network namespace failed for another reason.
    #[error("{op}: network namespace {netns}")]
    Netns {
        /// What we were doing.
        op: &'static str,
        /// The namespace.
        netns: String,
        /// The netns crate's error (errno kept).
        #[source]
        source: Box<vipmesh_netns::Error>,
    },
    /// The process lacks `CAP_NET_ADMIN` (or the kernel refused with EPERM).
    #[error("{op}: permission denied (CAP_NET_ADMIN is required){}", detail_suffix(.detail))]
    PermissionDenied {
        /// What we were doing.
        op: &'static str,
        /// Extra detail, e.g. the tool's stderr.
        detail: String,
    },
    /// Spawning or talking to a child process failed.
    #[error("{op}: running {tool} failed")]
    Spawn {
        /// What we were doing.
        op: &'static str,
        /// The executable.
        tool: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `iptables-restore` rejected the batch. `line` is the 1-based line in `input`.
    #[error("{tool} failed at line {}: {stderr}\n{context}", line.map_or_else(|| "?".to_owned(), |l| l.to_string()))]
    RestoreFailed {
        /// The restore binary.
        tool: String,
        /// The line iptables-restore reported, when it reported one.
        line: Option<usize>,
        /// The failing line with two lines of context on each side (`>` marks the failing line).
        context: String,
        /// The tool's stderr, trimmed.
        stderr: String,
    },
    /// `iptables-restore` rejected the batch because the kernel lacks a match or target
    /// extension (its module is missing and could not be loaded), e.g. `-m ipvs` without
    /// `xt_ipvs`. See `iptables-extensions(8)`.
    #[error(
        "{tool}: the kernel does not support the iptables extension {extension:?} (module {} missing or not loadable); the batch failed at line {}: {stderr}\n{context}",
        extension_module(extension),
        line.map_or_else(|| "?".to_owned(), |l| l.to_string())
    )]
    MissingExtension {
        /// The restore binary.
        tool: String,
        /// The extension as iptables names it (`ipvs`, `MASQUERADE`); its module is
        /// [`extension_module`] of it.
        extension: String,
        /// The line iptables-restore reported, when it reported one.
        line: Option<usize>,
        /// The failing line with two lines of context on each side (`>` marks it).
        context: String,
        /// The tool's stderr, trimmed.
        stderr: String,
    },
    /// Another iptables tool exited with an error.
    #[error("{tool} exited with {status}: {stderr}")]
    CommandFailed {
        /// The executable.
        tool: String,
        /// Exit status as text.
        status: String,
        /// The tool's stderr, trimmed.
        stderr: String,
    },
    /// The `iptables-save` output could not be understood (only structural errors; foreign rules
    /// are never an error).
    #[error("iptables-save line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// The packet tracer (feature `test-util`) cannot evaluate a rule.
    #[error("trace in {chain}: {reason}: {spec}")]
    Trace {
        /// The chain.
        chain: String,
        /// The rule spec, if any.
        spec: String,
        /// Why.
        reason: String,
    },
    /// After an apply, the kernel's state differs from what was requested.
    #[error("verification after apply failed for {family} {table}: {detail}")]
    Verify {
        /// Family.
        family: Family,
        /// Table.
        table: Table,
        /// What differs.
        detail: String,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl Error {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        Error::InvalidValue {
            field,
            value: value.into(),
            reason,
        }
    }

    /// True when the error is caused by missing privileges.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::PermissionDenied { .. })
    }

    /// True when a network namespace or a tool was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NetnsNotFound { .. } | Error::ToolMissing { .. }
        )
    }
}

/// The kernel module that provides an iptables extension: `xt_<name>` (`ipvs` → `xt_ipvs`,
/// `MASQUERADE` → `xt_MASQUERADE`), but `SNAT`/`DNAT` are `xt_nat`.
///
/// ```
/// assert_eq!(vipmesh_netfilter::extension_module("ipvs"), "xt_ipvs");
/// assert_eq!(vipmesh_netfilter::extension_module("DNAT"), "xt_nat");
/// ```
pub fn extension_module(extension: &str) -> String {
    match extension {
        "SNAT" | "DNAT" => "xt_nat".to_owned(),
        e => format!("xt_{e}"),
    }
}
