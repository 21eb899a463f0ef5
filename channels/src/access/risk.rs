//! When a login with the right password still needs a second factor (pure, data-driven
//! tested). Any signal is enough; the answer to the client never says which one (it says
//! `risk`, or `new_device` for an unknown device), the audit log does.
//!
//! Signals:
//! - `new_device`: the device was never confirmed for this customer;
//! - `trust_expired`: it was, but longer ago than the trust lifetime (90 days): trust is
//!   renewed by passing a second factor again;
//! - `new_network`: the login comes from an IP network (IPv4 /24, IPv6 /64) the customer
//!   never completed a login from, when the customer has such a history at all (the first
//!   network is learned, not flagged);
//! - `recent_failures`: the login has 3 or more failed password attempts since its last
//!   complete success (the lockout counter, which the shell clears only after the second
//!   factor; a lockout that has ended still counts, since a success right after one is what
//!   a patient guesser looks like);
//! - `antifraud`: an antifraud flag on the customer that has not ended (set by the security
//!   staff, `PUT /staff/v1/customers/{id}/risk-flag`).

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    NewDevice,
    TrustExpired,
    NewNetwork,
    RecentFailures,
    Antifraud,
}

impl Signal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Signal::NewDevice => "new_device",
            Signal::TrustExpired => "trust_expired",
            Signal::NewNetwork => "new_network",
            Signal::RecentFailures => "recent_failures",
            Signal::Antifraud => "antifraud",
        }
    }
}

/// The rule's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiskPolicy {
    /// How long a device stays trusted after its last second factor.
    pub trust_lifetime_s: i64,
    /// Failed password attempts on the login that make a success risky.
    pub failures_threshold: u32,
}

impl Default for RiskPolicy {
    fn default() -> Self {
        Self {
            trust_lifetime_s: 90 * 24 * 3600,
            failures_threshold: 3,
        }
    }
}

/// What is known about one login with the right password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginFacts<'a> {
    /// When the device was last trusted (Unix seconds), if ever.
    pub device_trusted_at: Option<i64>,
    /// The network the login comes from (see [`network_of`]).
    pub network: &'a str,
    /// Networks the customer completed a login from.
    pub known_networks: &'a [String],
    /// Failed password attempts on the login since its last success.
    pub failures: u32,
    pub antifraud_flagged: bool,
    pub now: i64,
}

/// Every signal present, in a fixed order; empty means no second factor is needed.
pub fn assess(policy: &RiskPolicy, facts: &LoginFacts) -> Vec<Signal> {
    let mut signals = Vec::new();
    match facts.device_trusted_at {
        None => signals.push(Signal::NewDevice),
        Some(at) if facts.now - at > policy.trust_lifetime_s => signals.push(Signal::TrustExpired),
        Some(_) => {}
    }
    if !facts.known_networks.is_empty() && !facts.known_networks.iter().any(|n| n == facts.network)
    {
        signals.push(Signal::NewNetwork);
    }
    if facts.failures >= policy.failures_threshold {
        signals.push(Signal::RecentFailures);
    }
    if facts.antifraud_flagged {
        signals.push(Signal::Antifraud);
    }
    signals
}

/// The network of an address: IPv4 /24 (`10.1.2.0/24`), IPv6 /64 (`2001:db8:1:2::/64`);
/// an IPv4-mapped IPv6 address counts as IPv4. Anything unparsable is its own "network"
/// (`unknown`), so it is never confused with a real one.
pub fn network_of(ip: &str) -> String {
    match ip.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 24 * 3600;

    #[test]
    fn networks() {
        for (ip, network) in [
            ("10.1.2.3", "10.1.2.0/24"),
            ("10.1.2.254", "10.1.2.0/24"),
            ("10.1.3.3", "10.1.3.0/24"),
            ("::ffff:10.1.2.3", "10.1.2.0/24"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::9", "2001:db8:1:3::/64"),
            ("::1", "::/64"),
            ("", "unknown"),
            ("not an ip", "unknown"),
        ] {
            assert_eq!(network_of(ip), network, "{ip}");
        }
    }

    /// Each case: (name, device trusted days ago, known networks, failures, flagged,
    /// expected signals). The login comes from 10.1.2.0/24.
    #[test]
    fn rules() {
        use Signal::*;
        const HERE: &str = "10.1.2.0/24";
        let here = HERE;
        type Case = (
            &'static str,
            Option<i64>,
            &'static [&'static str],
            u32,
            bool,
            Vec<Signal>,
        );
        let cases: Vec<Case> = vec![
            (
                "trusted device, known network",
                Some(1),
                &[HERE],
                0,
                false,
                vec![],
            ),
            (
                "first network ever is learned",
                Some(1),
                &[],
                0,
                false,
                vec![],
            ),
            ("new device", None, &[HERE], 0, false, vec![NewDevice]),
            (
                "trusted device, new network",
                Some(1),
                &["10.9.9.0/24"],
                0,
                false,
                vec![NewNetwork],
            ),
            (
                "known among several",
                Some(1),
                &["10.9.9.0/24", HERE],
                0,
                false,
                vec![],
            ),
            (
                "trust at 90 days holds",
                Some(90),
                &[HERE],
                0,
                false,
                vec![],
            ),
            (
                "trust older than 90 days",
                Some(91),
                &[HERE],
                0,
                false,
                vec![TrustExpired],
            ),
            ("two failures are fine", Some(1), &[HERE], 2, false, vec![]),
            (
                "three failures",
                Some(1),
                &[HERE],
                3,
                false,
                vec![RecentFailures],
            ),
            ("antifraud flag", Some(1), &[HERE], 0, true, vec![Antifraud]),
            (
                "everything at once",
                None,
                &["10.9.9.0/24"],
                7,
                true,
                vec![NewDevice, NewNetwork, RecentFailures, Antifraud],
            ),
        ];
        for (name, trusted_days_ago, known, failures, flagged, expected) in cases {
            let known: Vec<String> = known.iter().map(|n| n.to_string()).collect();
            let facts = LoginFacts {
                device_trusted_at: trusted_days_ago.map(|days| NOW - days * DAY),
                network: here,
                known_networks: &known,
                failures,
                antifraud_flagged: flagged,
                now: NOW,
            };
            assert_eq!(assess(&RiskPolicy::default(), &facts), expected, "{name}");
        }
    }
}
