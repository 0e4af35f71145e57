//! Typed iptables rules rendered to iptables-restore text, applied atomically, owning only VIPMESH- chains.
#![deny(missing_docs)]
