//! The service table: validated names and addresses, and the pure name lookup.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Error;

/// The TTL of every answer unless [`DnsTableBuilder::ttl`] says otherwise, in seconds.
///
/// Short on purpose (CoreDNS's Kubernetes plugin uses 5 s too): dnsrr answers are reshuffled on
/// every query and tasks come and go, so caches must not pin an old answer for long.
pub const DEFAULT_TTL: u32 = 5;

/// The longest label DNS allows (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// The longest name in text form without the final dot (255 octets on the wire).
const MAX_NAME_TEXT: usize = 253;
/// The prefix under which every service's task IPs are published, as Docker does.
pub const TASKS_LABEL: &str = "tasks";

/// A validated service name: one DNS label.
///
/// 1 to 63 characters of ASCII letters, digits, `-` and `_` (Compose and stacks name services
/// `stack_web`), not starting or ending with `-`. Stored lowercase: DNS names compare
/// case-insensitively, so `Vote` and `vote` are the same service.
///
/// # Examples
///
/// ```
/// use vipmesh_dns::ServiceName;
/// assert_eq!(ServiceName::new("Stack_Web")?.as_str(), "stack_web");
/// assert!(ServiceName::new("web.1").is_err());
/// # Ok::<(), vipmesh_dns::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates `name` as a service name.
    ///
    /// # Errors
    /// [`Error::InvalidName`] with `field = "service name"` and the reason.
    pub fn new(name: &str) -> Result<ServiceName, Error> {
        check_label(name).map_err(|reason| Error::InvalidName {
            field: "service name",
            value: name.to_owned(),
            reason,
        })?;
        Ok(ServiceName(name.to_ascii_lowercase()))
    }

    /// The name, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks one label of a service name or zone.
fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > MAX_LABEL {
        return Err("label longer than 63 bytes");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("only ASCII letters, digits, '-' and '_' are allowed in a label");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label must not start or end with '-'");
    }
    Ok(())
}

/// The addresses of one answer set, split by family (A and AAAA), in the given order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Addrs {
    pub(crate) v4: Vec<Ipv4Addr>,
    pub(crate) v6: Vec<Ipv6Addr>,
}

impl Addrs {
    fn collect<I, A>(service: &ServiceName, field: &'static str, addrs: I) -> Result<Addrs, Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<IpAddr>,
    {
        let mut out = Addrs::default();
        for addr in addrs {
            let addr = addr.into();
            let dup = match addr {
                IpAddr::V4(a) if out.v4.contains(&a) => true,
                IpAddr::V6(a) if out.v6.contains(&a) => true,
                IpAddr::V4(a) => {
                    out.v4.push(a);
                    false
                }
                IpAddr::V6(a) => {
                    out.v6.push(a);
                    false
                }
            };
            if dup {
                return Err(Error::DuplicateAddress {
                    service: service.to_string(),
                    field,
                    addr,
                });
            }
        }
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// How a service's name answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// The name answers its VIP(s), in the given order.
    Vip(Addrs),
    /// The name answers the task IPs, shuffled per query.
    DnsRr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Service {
    mode: Mode,
    /// Answered, shuffled, under `tasks.<name>` (and under `<name>` in dnsrr mode).
    tasks: Addrs,
}

impl Service {
    /// What the service's own name answers.
    fn answer(&self) -> Lookup<'_> {
        match &self.mode {
            Mode::Vip(vips) => Lookup::Found(vips, Order::Fixed),
            Mode::DnsRr => Lookup::Found(&self.tasks, Order::Shuffled),
        }
    }
}

/// In which order an answer's records go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// As configured (VIPs).
    Fixed,
    /// A fresh random permutation per query (task IPs).
    Shuffled,
}

/// The outcome of looking a query name up in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup<'t> {
    /// Not our name: outside the zone and not a bare service name.
    Refused,
    /// In our authority, but no such name.
    NxDomain,
    /// The name exists but has no address records (zone apex, `tasks` alone).
    NoData,
    /// The name's addresses; each family may be empty (then A or AAAA is NODATA).
    Found(&'t Addrs, Order),
}

/// An immutable, validated service table: what the DNS server answers.
///
/// Build it with [`DnsTable::builder`], hand it to
/// [`DnsServer::spawn`](crate::DnsServer::spawn), replace it whole with
/// [`DnsServer::update`](crate::DnsServer::update).
///
/// Names answered, for a service `web` in zone `mesh.local.`:
///
/// | query name                        | answer                                               |
/// |-----------------------------------|------------------------------------------------------|
/// | `web.` and `web.mesh.local.`      | VIP mode: the VIP(s), in order. dnsrr: task IPs, shuffled per query |
/// | `tasks.web.`, `tasks.web.mesh.local.` | the task IPs, shuffled per query (both modes, as Docker) |
/// | `mesh.local.`, `tasks.mesh.local.`| NOERROR, no records (the names exist, with no address) |
/// | other names under `mesh.local.`, unknown bare names | NXDOMAIN                        |
/// | anything else                     | REFUSED (the server never recurses)                  |
///
/// A and AAAA come from the IPv4 and IPv6 addresses respectively; any other query type for an
/// existing name, and a family with no address, answer NOERROR with no records (NODATA).
/// A dnsrr service with no task answers NODATA. Names compare case-insensitively and answers
/// keep the case of the question. With a one-label zone (`local.`), a service of the same name
/// answers at the apex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTable {
    /// Lowercase labels of the zone, most specific first (`["mesh", "local"]`).
    zone: Vec<String>,
    /// The zone in text form, with the final dot.
    zone_text: String,
    ttl: u32,
    services: BTreeMap<ServiceName, Service>,
}

impl DnsTable {
    /// Starts a table for `zone` (e.g. `"mesh.local."`; the final dot is optional).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use vipmesh_dns::DnsTable;
    ///
    /// let table = DnsTable::builder("mesh.local.")?
    ///     .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])?
    ///     .dnsrr("web", [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)])?
    ///     .build();
    /// assert_eq!(table.zone(), "mesh.local.");
    /// assert_eq!(table.len(), 2);
    /// # Ok::<(), vipmesh_dns::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidZone`] when the zone is empty, the root, longer than 253 characters, or
    /// has a label that is not 1–63 characters of letters, digits, `-` and `_`.
    pub fn builder(zone: &str) -> Result<DnsTableBuilder, Error> {
        let invalid = |reason| Error::InvalidZone {
            value: zone.to_owned(),
            reason,
        };
        let trimmed = zone.strip_suffix('.').unwrap_or(zone);
        if trimmed.is_empty() {
            return Err(invalid("the zone must not be empty or the root"));
        }
        if trimmed.len() > MAX_NAME_TEXT {
            return Err(invalid("name longer than 253 characters"));
        }
        let mut labels = Vec::new();
        for label in trimmed.split('.') {
            check_label(label).map_err(invalid)?;
            labels.push(label.to_ascii_lowercase());
        }
        let zone_text = format!("{}.", labels.join("."));
        Ok(DnsTableBuilder {
            table: DnsTable {
                zone: labels,
                zone_text,
                ttl: DEFAULT_TTL,
                services: BTreeMap::new(),
            },
        })
    }

    /// The zone, lowercase, with the final dot (`"mesh.local."`).
    pub fn zone(&self) -> &str {
        &self.zone_text
    }

    /// The TTL of answers, in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when the table has no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service names, sorted.
    pub fn service_names(&self) -> impl Iterator<Item = &ServiceName> {
        self.services.keys()
    }

    fn service(&self, label: &[u8]) -> Option<&Service> {
        if label.len() > MAX_LABEL {
            return None;
        }
        let mut buf = [0u8; MAX_LABEL];
        let lower = buf.get_mut(..label.len())?;
        lower.copy_from_slice(label);
        lower.make_ascii_lowercase();
        let name = std::str::from_utf8(lower).ok()?;
        // `ServiceName: Borrow<str>`, and its Ord is the inner string's.
        self.services.get(name)
    }

    /// Looks up a query name given as wire labels (most specific first, root excluded).
    pub(crate) fn lookup(&self, labels: &[&[u8]]) -> Lookup<'_> {
        let zone_len = self.zone.len();
        let in_zone = labels.len() >= zone_len
            && labels
                .iter()
                .skip(labels.len() - zone_len)
                .zip(&self.zone)
                .all(|(l, z)| l.eq_ignore_ascii_case(z.as_bytes()));
        let rel = if in_zone {
            labels.get(..labels.len() - zone_len).unwrap_or_default()
        } else {
            labels
        };
        let outside = if in_zone {
            Lookup::NxDomain
        } else {
            Lookup::Refused
        };
        match rel {
            [] => match labels {
                // A bare service name that happens to be a one-label zone: the service wins
                // (the apex has no address records anyway).
                [only] if in_zone => self.service(only).map_or(Lookup::NoData, Service::answer),
                _ if in_zone => Lookup::NoData,
                _ => Lookup::Refused,
            },
            [name] => match self.service(name) {
                Some(s) => s.answer(),
                // `tasks.<svc>` exists, so `tasks` is an empty non-terminal.
                None if name.eq_ignore_ascii_case(TASKS_LABEL.as_bytes())
                    && !self.services.is_empty() =>
                {
                    Lookup::NoData
                }
                None => Lookup::NxDomain,
            },
            [tasks, name] if tasks.eq_ignore_ascii_case(TASKS_LABEL.as_bytes()) => {
                match self.service(name) {
                    Some(s) => Lookup::Found(&s.tasks, Order::Shuffled),
                    None => outside,
                }
            }
            _ => outside,
        }
    }
}

impl std::borrow::Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Builds a [`DnsTable`]; every step validates its input, so a built table is valid.
#[derive(Debug, Clone)]
pub struct DnsTableBuilder {
    table: DnsTable,
}

impl DnsTableBuilder {
    /// Sets the TTL of every answer, in seconds (default [`DEFAULT_TTL`]).
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.table.ttl = seconds;
        self
    }

    fn insert(
        mut self,
        name: &str,
        mode_vips: Option<Vec<IpAddr>>,
        tasks: Vec<IpAddr>,
    ) -> Result<Self, Error> {
        let service = ServiceName::new(name)?;
        if self.table.services.contains_key(&service) {
            return Err(Error::DuplicateService {
                name: service.to_string(),
            });
        }
        let mode = match mode_vips {
            Some(vips) => {
                let vips = Addrs::collect(&service, "vips", vips)?;
                if vips.is_empty() {
                    return Err(Error::EmptyAddresses {
                        service: service.to_string(),
                        field: "vips",
                    });
                }
                Mode::Vip(vips)
            }
            None => Mode::DnsRr,
        };
        let tasks = Addrs::collect(&service, "tasks", tasks)?;
        self.table.services.insert(service, Service { mode, tasks });
        Ok(self)
    }

    /// Adds a VIP-mode service: `name` answers its VIP(s) (A for IPv4, AAAA for IPv6), in the
    /// order given.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::DuplicateService`], [`Error::EmptyAddresses`] when
    /// `vips` is empty, [`Error::DuplicateAddress`].
    pub fn vip<I, A>(self, name: &str, vips: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<IpAddr>,
    {
        let vips = vips.into_iter().map(Into::into).collect();
        self.insert(name, Some(vips), Vec::new())
    }

    /// Adds a DNS round-robin service: `name` answers the task IPs, shuffled per query.
    ///
    /// An empty list is allowed: the name then exists and answers NOERROR with no records.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::DuplicateService`], [`Error::DuplicateAddress`].
    pub fn dnsrr<I, A>(self, name: &str, tasks: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<IpAddr>,
    {
        let tasks = tasks.into_iter().map(Into::into).collect();
        self.insert(name, None, tasks)
    }

    /// Sets the task IPs of an already declared service, answered (shuffled) under
    /// `tasks.<name>` — and, for a dnsrr service, under `<name>` too (this replaces the list
    /// given to [`dnsrr`](Self::dnsrr)).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::UnknownService`] when the service was not declared
    /// before, [`Error::DuplicateAddress`].
    pub fn tasks<I, A>(mut self, name: &str, tasks: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<IpAddr>,
    {
        let service = ServiceName::new(name)?;
        let tasks = Addrs::collect(&service, "tasks", tasks)?;
        match self.table.services.get_mut(&service) {
            Some(s) => s.tasks = tasks,
            None => {
                return Err(Error::UnknownService {
                    field: "tasks",
                    service: service.to_string(),
                });
            }
        }
        Ok(self)
    }

    /// Finishes the table.
    pub fn build(self) -> DnsTable {
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str) -> Vec<&[u8]> {
        name.trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::as_bytes)
            .collect()
    }

    fn table() -> DnsTable {
        DnsTable::builder("Mesh.Local")
            .unwrap()
            .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])
            .unwrap()
            .tasks("vote", [Ipv4Addr::new(10, 0, 0, 20)])
            .unwrap()
            .dnsrr(
                "web",
                [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
            )
            .unwrap()
            .dnsrr("empty", Vec::<IpAddr>::new())
            .unwrap()
            .build()
    }

    #[test]
    fn zone_is_normalised() {
        let t = table();
        assert_eq!(t.zone(), "mesh.local.");
        assert_eq!(DnsTable::builder("a.b.").unwrap().build().zone(), "a.b.");
    }

    #[test]
    fn invalid_zones_are_typed_errors() {
        for bad in ["", ".", "a..b", "-a.b", "a b", "é.local", &"a".repeat(64)] {
            match DnsTable::builder(bad) {
                Err(Error::InvalidZone { value, .. }) => assert_eq!(value, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(matches!(
            DnsTable::builder(&long),
            Err(Error::InvalidZone { .. })
        ));
    }

    #[test]
    fn invalid_service_names_name_field_and_value() {
        for bad in ["", "a.b", "-web", "web-", "we b", "wéb", &"x".repeat(64)] {
            let err = DnsTable::builder("mesh.local")
                .unwrap()
                .vip(bad, [Ipv4Addr::LOCALHOST])
                .unwrap_err();
            match err {
                Error::InvalidName { field, value, .. } => {
                    assert_eq!(field, "service name");
                    assert_eq!(value, bad);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(ServiceName::new("stack_web-1").is_ok());
        assert!(ServiceName::new(&"x".repeat(63)).is_ok());
    }

    #[test]
    fn duplicates_are_rejected_case_insensitively() {
        let err = DnsTable::builder("mesh.local")
            .unwrap()
            .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])
            .unwrap()
            .dnsrr("VOTE", [Ipv4Addr::new(10, 0, 0, 10)])
            .unwrap_err();
        assert!(
            matches!(err, Error::DuplicateService { ref name } if name == "vote"),
            "{err}"
        );

        let err = DnsTable::builder("mesh.local")
            .unwrap()
            .dnsrr(
                "web",
                [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 10)],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            Error::DuplicateAddress { field: "tasks", .. }
        ));
        let err = DnsTable::builder("mesh.local")
            .unwrap()
            .vip("web", Vec::<IpAddr>::new())
            .unwrap_err();
        assert!(matches!(err, Error::EmptyAddresses { field: "vips", .. }));
        let err = DnsTable::builder("mesh.local")
            .unwrap()
            .tasks("nope", [Ipv4Addr::LOCALHOST])
            .unwrap_err();
        assert!(matches!(err, Error::UnknownService { .. }));
    }

    #[test]
    fn lookup_table() {
        let t = table();
        let vote = Addrs {
            v4: vec![Ipv4Addr::new(10, 0, 0, 9)],
            v6: vec![],
        };
        let vote_tasks = Addrs {
            v4: vec![Ipv4Addr::new(10, 0, 0, 20)],
            v6: vec![],
        };
        for n in ["vote.", "VOTE.", "vote.mesh.local.", "Vote.MESH.local."] {
            assert_eq!(
                t.lookup(&labels(n)),
                Lookup::Found(&vote, Order::Fixed),
                "{n}"
            );
        }
        for n in ["tasks.vote.", "tasks.vote.mesh.local.", "TASKS.Vote."] {
            assert_eq!(
                t.lookup(&labels(n)),
                Lookup::Found(&vote_tasks, Order::Shuffled),
                "{n}"
            );
        }
        assert!(matches!(
            t.lookup(&labels("web.")),
            Lookup::Found(a, Order::Shuffled) if a.v4.len() == 2
        ));
        assert!(matches!(
            t.lookup(&labels("empty.mesh.local.")),
            Lookup::Found(a, Order::Shuffled) if a.is_empty()
        ));
        for (n, want) in [
            ("mesh.local.", Lookup::NoData),
            ("tasks.", Lookup::NoData),
            ("tasks.mesh.local.", Lookup::NoData),
            ("nope.", Lookup::NxDomain),
            ("nope.mesh.local.", Lookup::NxDomain),
            ("a.vote.mesh.local.", Lookup::NxDomain),
            ("tasks.nope.mesh.local.", Lookup::NxDomain),
            ("x.tasks.vote.mesh.local.", Lookup::NxDomain),
            (".", Lookup::Refused),
            ("local.", Lookup::NxDomain),
            ("example.com.", Lookup::Refused),
            ("vote.example.com.", Lookup::Refused),
            ("tasks.nope.", Lookup::Refused),
            ("mesh.local.evil.", Lookup::Refused),
        ] {
            assert_eq!(t.lookup(&labels(n)), want, "{n}");
        }
        // Overlong and non-ASCII labels are simply unknown.
        let long = vec![b'a'; 200];
        assert_eq!(t.lookup(&[&long]), Lookup::NxDomain);
        assert_eq!(t.lookup(&[&[0xff, 0x00][..]]), Lookup::NxDomain);
    }

    #[test]
    fn a_service_named_like_a_one_label_zone_wins_over_the_apex() {
        let t = DnsTable::builder("local")
            .unwrap()
            .vip("local", [Ipv4Addr::new(10, 0, 0, 1)])
            .unwrap()
            .build();
        for n in ["local.", "LOCAL.", "local.local."] {
            assert!(matches!(t.lookup(&labels(n)), Lookup::Found(..)), "{n}");
        }
        let t = DnsTable::builder("local").unwrap().build();
        assert_eq!(t.lookup(&labels("local.")), Lookup::NoData);
    }

    #[test]
    fn empty_table_has_no_tasks_node() {
        let t = DnsTable::builder("mesh.local").unwrap().build();
        assert!(t.is_empty());
        assert_eq!(t.lookup(&labels("tasks.")), Lookup::NxDomain);
        assert_eq!(t.lookup(&labels("mesh.local.")), Lookup::NoData);
    }

    proptest::proptest! {
        /// Validation never panics; what it accepts is found by lookup under both forms,
        /// whatever the case of the query.
        #[test]
        fn validation_never_panics_and_accepted_names_resolve(
            zone in "\\PC{0,70}",
            name in "\\PC{0,70}",
            ascii_zone in "[A-Za-z0-9_-]{1,20}(\\.[A-Za-z0-9_-]{1,20}){0,3}\\.?",
            ascii_name in "[A-Za-z0-9_-]{1,70}",
        ) {
            let _ = DnsTable::builder(&zone).and_then(|b| b.vip(&name, [Ipv4Addr::LOCALHOST]));
            let Ok(b) = DnsTable::builder(&ascii_zone) else {
                return Ok(());
            };
            let Ok(b) = b.dnsrr(&ascii_name, [Ipv4Addr::LOCALHOST]) else {
                return Ok(());
            };
            let t = b.build();
            let upper = ascii_name.to_ascii_uppercase();
            let full = format!("{upper}.{}", t.zone());
            for query in [format!("{upper}."), full] {
                proptest::prop_assert!(
                    matches!(t.lookup(&labels(&query)), Lookup::Found(a, _) if a.v4.len() == 1),
                    "{} in {}",
                    query,
                    t.zone()
                );
            }
        }
    }
}
