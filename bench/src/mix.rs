//! The mix of `bench mixed`: the kinds of operation of a day, their weights
//! (`login=5,read=60,...`, parsed with errors that name the culprit) and the order they are
//! sent in: one cycle of a smooth weighted round robin, so kinds interleave and every cycle
//! holds exactly the weights.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;

/// What one operation of the day is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Login,
    Read,
    Payment,
    Incoming,
    Notification,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Login,
        Kind::Read,
        Kind::Payment,
        Kind::Incoming,
        Kind::Notification,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Read => "read",
            Kind::Payment => "payment",
            Kind::Incoming => "incoming",
            Kind::Notification => "notification",
        }
    }

    /// The sink phase whose frames carry this kind's change ids.
    pub(crate) fn phase(self) -> usize {
        match self {
            Kind::Incoming => 1,
            Kind::Notification => 2,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("`{0}` is not `kind=weight`")]
    NotAPair(String),
    #[error("unknown kind `{0}` (login, read, payment, incoming, notification)")]
    UnknownKind(String),
    #[error("weight of `{0}` is not a whole number from 0 to 10000")]
    BadWeight(String),
    #[error("`{0}` is given twice")]
    Repeated(String),
    #[error("every weight is zero")]
    Empty,
}

/// Weights per kind; the sequence repeats every `total` operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub weights: BTreeMap<Kind, u32>,
    #[serde(skip)]
    sequence: Vec<Kind>,
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(text: &str) -> Result<Self, MixError> {
        let mut weights = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = pair
                .split_once('=')
                .ok_or_else(|| MixError::NotAPair(pair.to_owned()))?;
            let name = name.trim();
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| MixError::UnknownKind(name.to_owned()))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= 10_000)
                .ok_or_else(|| MixError::BadWeight(name.to_owned()))?;
            if weights.insert(kind, weight).is_some() {
                return Err(MixError::Repeated(name.to_owned()));
            }
        }
        weights.retain(|_, w| *w > 0);
        if weights.is_empty() {
            return Err(MixError::Empty);
        }
        let sequence = smooth_round_robin(&weights);
        Ok(Self { weights, sequence })
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// One cycle of a smooth weighted round robin: each kind appears exactly its weight times,
/// spread through the cycle rather than in runs.
fn smooth_round_robin(weights: &BTreeMap<Kind, u32>) -> Vec<Kind> {
    let total: i64 = weights.values().map(|w| i64::from(*w)).sum();
    let mut current: Vec<(Kind, i64, i64)> = weights
        .iter()
        .map(|(k, w)| (*k, i64::from(*w), 0))
        .collect();
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for entry in &mut current {
            entry.2 += entry.1;
        }
        let best = current
            .iter_mut()
            .max_by_key(|e| (e.2, std::cmp::Reverse(e.0)))
            .expect("weights are not empty");
        best.2 -= total;
        sequence.push(best.0);
    }
    sequence
}

impl Mix {
    /// The kind of operation `i`.
    pub fn kind_of(&self, i: u64) -> Kind {
        self.sequence[(i % self.sequence.len() as u64) as usize]
    }

    pub fn total(&self) -> u32 {
        self.weights.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::Schedule;

    #[test]
    fn mixes_parse_with_clear_errors() {
        let mix: Mix = "login=5, read=60,payment=20,incoming=10,notification=5"
            .parse()
            .unwrap();
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.weights[&Kind::Read], 60);
        assert_eq!(
            mix.to_string(),
            "login=5,read=60,payment=20,incoming=10,notification=5"
        );
        let zero: Mix = "read=1,login=0".parse().unwrap();
        assert_eq!(zero.weights.len(), 1);
        for (text, error) in [
            ("read", MixError::NotAPair("read".into())),
            ("reads=3", MixError::UnknownKind("reads".into())),
            ("read=-1", MixError::BadWeight("read".into())),
            ("read=x", MixError::BadWeight("read".into())),
            ("read=20000", MixError::BadWeight("read".into())),
            ("read=1,read=2", MixError::Repeated("read".into())),
            ("read=0", MixError::Empty),
            ("", MixError::Empty),
        ] {
            assert_eq!(text.parse::<Mix>(), Err(error), "{text}");
        }
        assert!(
            MixError::UnknownKind("x".into())
                .to_string()
                .contains("login, read, payment, incoming, notification")
        );
    }

    #[test]
    fn the_schedule_keeps_proportions_and_interleaves_kinds() {
        let mix: Mix = "login=5,read=60,payment=20,incoming=10,notification=5"
            .parse()
            .unwrap();
        let mut counts: BTreeMap<Kind, u32> = BTreeMap::new();
        for i in 0..1000 {
            *counts.entry(mix.kind_of(i)).or_default() += 1;
        }
        assert_eq!(counts[&Kind::Read], 600);
        assert_eq!(counts[&Kind::Payment], 200);
        assert_eq!(counts[&Kind::Login], 50);
        // Interleaved: reads never run longer than 2 in a row at 60 %, and at 20 % a payment
        // comes at least every 7 operations (never in bursts with long gaps).
        let kinds: Vec<Kind> = (0..100).map(|i| mix.kind_of(i)).collect();
        let longest = |kind: Kind| {
            kinds
                .split(|k| *k != kind)
                .map(<[Kind]>::len)
                .max()
                .unwrap_or(0)
        };
        assert!(longest(Kind::Read) <= 2, "{kinds:?}");
        assert!(
            kinds
                .split(|k| *k == Kind::Payment)
                .skip(1)
                .all(|gap| gap.len() <= 6),
            "{kinds:?}"
        );
        // Open-loop times: operation i at start + i / rate.
        let schedule = Schedule::new(1_000, 100.0);
        assert_eq!(schedule.at(0), 1_000);
        assert_eq!(schedule.at(100), 1_000 + 1_000_000_000);
    }
}
