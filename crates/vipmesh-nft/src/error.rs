//! The crate's single error type.

/// Everything that can go wrong in `vipmesh-nft`.
///
/// Validation errors ([`Error::InvalidValue`], [`Error::InvalidTable`]) are raised while values
/// are built, before anything reaches the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A single value (network id, chain/map name, interface, priority, key …) is malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidValue {
        /// Which field was being built (`"network id"`, `"map name"`, `"element key"` …).
        field: &'static str,
        /// The offending input, verbatim.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Values are valid one by one but not together (a rule that names a missing map, a key
    /// expression whose types differ from the map's key type, a duplicate name …).
    #[error("invalid table {table}: {object}: {reason}")]
    InvalidTable {
        /// The table's name.
        table: String,
        /// The object (chain, map, rule) at fault.
        object: String,
        /// Why.
        reason: String,
    },
    /// A table with our name exists but does not carry our ownership comment; it is never
    /// written or deleted.
    #[error(
        "table {family} {table} in {netns} is not ours (no comment \"vipmesh\"): refusing to touch it"
    )]
    ForeignTable {
        /// Family (`inet`).
        family: &'static str,
        /// The table's name.
        table: String,
        /// The namespace.
        netns: String,
    },
    /// `nft` is not installed (or not executable).
    #[error("{tool} not found (install the Debian package nftables)")]
    NftMissing {
        /// The executable we tried to run.
        tool: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` is older than 1.0 (JSON listing and the syntax we render need 1.0).
    #[error("{tool} is version {found}; vipmesh-nft needs nftables 1.0 or newer")]
    NftTooOld {
        /// The executable.
        tool: String,
        /// The version it reported.
        found: String,
    },
    /// The kernel has no nf_tables (the module is missing or cannot be loaded).
    #[error("{op} in {netns}: the kernel has no nf_tables (module {module}): {stderr}")]
    KernelNoNfTables {
        /// What we were doing.
        op: &'static str,
        /// The namespace.
        netns: String,
        /// The module to load.
        module: &'static str,
        /// nft's stderr, trimmed.
        stderr: String,
    },
    /// The kernel lacks an expression a rule needs (EOPNOTSUPP): nothing was applied.
    #[error("{netns}: the kernel does not support line {line} ({text:?}): load {}: {stderr}", modules.join(", "))]
    KernelUnsupported {
        /// The namespace.
        netns: String,
        /// 1-based line in the script.
        line: usize,
        /// The failing line.
        text: String,
        /// Kernel modules the failing statement needs (`nft_fib_inet`, `nft_ct` …).
        modules: Vec<&'static str>,
        /// nft's stderr, trimmed.
        stderr: String,
    },
    /// The transaction was rejected (syntax, a missing or duplicate element …). nft
    /// transactions are atomic, so nothing was applied. `line`/`text` name the first failing
    /// line of the script (an element, when the kernel rejected an element).
    #[error("nft -f rejected the transaction in {netns} at line {}: {stderr}{}", line.map_or_else(|| "?".to_owned(), |l| l.to_string()), if text.is_empty() { String::new() } else { format!("\n> {text}") })]
    TransactionFailed {
        /// The namespace.
        netns: String,
        /// The first failing line nft reported (1-based), if any.
        line: Option<usize>,
        /// That line of the script, trimmed (empty when unknown).
        text: String,
        /// The errno text nft reported (`File exists`, `No such file or directory` …), or
        /// empty (a syntax error).
        kernel_error: String,
        /// nft's stderr, trimmed.
        stderr: String,
    },
    /// Another `nft` invocation failed.
    #[error("{op} in {netns}: {tool} exited with {status}: {stderr}")]
    CommandFailed {
        /// What we were doing.
        op: &'static str,
        /// The namespace.
        netns: String,
        /// The executable.
        tool: String,
        /// Exit status as text.
        status: String,
        /// nft's stderr, trimmed.
        stderr: String,
    },
    /// Spawning or talking to `nft` failed.
    #[error("{op}: running {tool} failed")]
    Spawn {
        /// What we were doing.
        op: &'static str,
        /// The executable.
        tool: String,
        /// The I/O error (errno kept).
        #[source]
        source: std::io::Error,
    },
    /// Entering the namespace failed.
    #[error("{op}: network namespace {netns}")]
    Netns {
        /// What we were doing.
        op: &'static str,
        /// The namespace.
        netns: String,
        /// The netns crate's error (errno kept), boxed to keep this enum small.
        #[source]
        source: Box<vipmesh_netns::Error>,
    },
    /// `nft -j list table` output could not be understood (only structure errors: unknown
    /// expressions in our table are kept as unparsed objects, not errors).
    #[error("nft JSON at {path}: {reason}")]
    Parse {
        /// Where in the document (`nftables[3].rule.expr[0]`).
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The process lacks CAP_NET_ADMIN.
    #[error("{op} in {netns}: permission denied (CAP_NET_ADMIN is required): {stderr}")]
    PermissionDenied {
        /// What we were doing.
        op: &'static str,
        /// The namespace.
        netns: String,
        /// nft's stderr, trimmed.
        stderr: String,
    },
}

impl Error {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidValue {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn parse(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// True when `nft` itself is missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NftMissing { .. })
    }

    /// True when the error is caused by missing privileges.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::PermissionDenied { .. })
    }

    /// True for a rejected transaction (nothing was applied).
    pub fn is_rejected(&self) -> bool {
        matches!(
            self,
            Error::TransactionFailed { .. } | Error::KernelUnsupported { .. }
        )
    }
}
