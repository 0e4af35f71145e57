//! Service-discovery DNS: service names resolve to their VIP, or to shuffled task IPs (dnsrr).
#![deny(missing_docs)]
