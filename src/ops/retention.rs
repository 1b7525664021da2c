//! Retention policies (`forget --keep-…`, `mount --every … --keep-…`): which
//! snapshots to keep, each with the reasons it is kept. Pure: no I/O.
//!
//! The rules are restic's: `keep_last N` keeps the N newest; `keep_hourly N` keeps
//! the newest snapshot of each of the N newest hours that have one (likewise daily,
//! weekly, monthly); `keep_within D` keeps everything newer than now - D. Held
//! snapshots are always kept.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Generation;
use crate::error::{Error, Result};

/// How many snapshots to keep, by rule. All zero / `None` is an empty policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// Keep every snapshot younger than this many seconds.
    pub keep_within_secs: Option<u64>,
}

impl Policy {
    /// True when no rule keeps anything (such a policy is refused: it would forget all).
    pub fn is_empty(&self) -> bool {
        self.keep_last + self.keep_hourly + self.keep_daily + self.keep_weekly + self.keep_monthly == 0
            && self.keep_within_secs.is_none()
    }
}

/// One snapshot's fate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Decision {
    pub name: String,
    /// Why it is kept; empty when it is to be forgotten.
    pub reasons: Vec<String>,
}

/// Parses "90s", "15m", "2h", "7d", "4w" into seconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        Error::InvalidArgument(format!("bad duration {text:?}: use e.g. 90s, 15m, 2h, 7d, 4w"))
    })?;
    let scale = match unit {
        "s" => 1,
        "m" | "" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "bad duration unit in {text:?}: use s, m, h, d or w"
            )))
        }
    };
    if n == 0 {
        return Err(Error::InvalidArgument(format!(
            "duration {text:?} must be more than zero"
        )));
    }
    Ok(n * scale)
}

/// Applies `policy` to `snapshots` (frozen generations, any order) at time `now_ns`;
/// returns a decision per snapshot, newest first.
pub fn decide(snapshots: &[Generation], policy: &Policy, now_ns: i64) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::InvalidArgument(
            "an empty policy would forget every snapshot; give --keep-last, --keep-hourly, --keep-daily, \
             --keep-weekly, --keep-monthly or --keep-within"
                .into(),
        ));
    }
    let mut snaps: Vec<&Generation> = snapshots
        .iter()
        .filter(|g| g.name.is_some() && g.frozen_ns.is_some())
        .collect();
    snaps.sort_by_key(|g| std::cmp::Reverse((g.frozen_ns, g.id)));
    let mut decisions: Vec<Decision> = snaps
        .iter()
        .map(|g| Decision {
            name: g.name.clone().unwrap_or_default(),
            reasons: Vec::new(),
        })
        .collect();
    let time = |g: &Generation| DateTime::<Utc>::from_timestamp_nanos(g.frozen_ns.unwrap_or(0));
    for (i, g) in snaps.iter().enumerate() {
        if g.held {
            decisions[i].reasons.push("held".into());
        }
        if (i as u32) < policy.keep_last {
            decisions[i].reasons.push(format!("last {}", policy.keep_last));
        }
        if let Some(within) = policy.keep_within_secs {
            if now_ns - g.frozen_ns.unwrap_or(0) <= within as i64 * 1_000_000_000 {
                decisions[i].reasons.push(format!("within {within}s"));
            }
        }
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let rules: [(u32, &str, Bucket); 4] = [
        (policy.keep_hourly, "hourly", |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        (policy.keep_daily, "daily", |t| (t.year(), t.ordinal(), 0, 0)),
        (policy.keep_weekly, "weekly", |t| {
            (t.iso_week().year(), t.iso_week().week(), 0, 0)
        }),
        (policy.keep_monthly, "monthly", |t| (t.year(), t.month(), 0, 0)),
    ];
    for (count, label, bucket) in rules {
        let mut seen = Vec::new();
        for (i, g) in snaps.iter().enumerate() {
            if seen.len() as u32 >= count {
                break;
            }
            let b = bucket(&time(g));
            if !seen.contains(&b) {
                seen.push(b);
                decisions[i].reasons.push(format!("{label} {count}"));
            }
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::GenId;

    fn snap(id: i64, secs: i64, held: bool) -> Generation {
        Generation {
            id: GenId(id),
            name: Some(format!("@s{id}")),
            label: None,
            created_ns: 0,
            frozen_ns: Some(secs * 1_000_000_000),
            held,
        }
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        d.iter()
            .filter(|d| !d.reasons.is_empty())
            .map(|d| d.name.as_str())
            .collect()
    }

    #[test]
    fn empty_policy_is_refused() {
        assert!(decide(&[snap(1, 0, false)], &Policy::default(), 0).is_err());
    }

    #[test]
    fn keep_last_keeps_the_newest_and_held_ones() {
        let snaps: Vec<_> = (1..=5).map(|i| snap(i, i * 10, i == 1)).collect();
        let d = decide(
            &snaps,
            &Policy {
                keep_last: 2,
                ..Default::default()
            },
            100,
        )
        .unwrap();
        assert_eq!(kept(&d), vec!["@s5", "@s4", "@s1"]);
        assert_eq!(d.iter().find(|d| d.name == "@s1").unwrap().reasons, vec!["held"]);
    }

    #[test]
    fn keep_hourly_keeps_the_newest_per_hour() {
        // Two snapshots in hour 0, two in hour 1, one in hour 2.
        let snaps = vec![
            snap(1, 100, false),
            snap(2, 200, false),
            snap(3, 3700, false),
            snap(4, 3800, false),
            snap(5, 7300, false),
        ];
        let d = decide(
            &snaps,
            &Policy {
                keep_hourly: 2,
                ..Default::default()
            },
            8000,
        )
        .unwrap();
        assert_eq!(kept(&d), vec!["@s5", "@s4"]);
        let d = decide(
            &snaps,
            &Policy {
                keep_hourly: 5,
                ..Default::default()
            },
            8000,
        )
        .unwrap();
        assert_eq!(kept(&d), vec!["@s5", "@s4", "@s2"]);
    }

    #[test]
    fn keep_daily_weekly_monthly_and_within() {
        let day = 86_400;
        let snaps: Vec<_> = (0..60).map(|i| snap(i + 1, i * day, false)).collect();
        let d = decide(
            &snaps,
            &Policy {
                keep_daily: 3,
                ..Default::default()
            },
            60 * day,
        )
        .unwrap();
        assert_eq!(kept(&d), vec!["@s60", "@s59", "@s58"]);
        let d = decide(
            &snaps,
            &Policy {
                keep_monthly: 2,
                ..Default::default()
            },
            60 * day,
        )
        .unwrap();
        assert_eq!(kept(&d).len(), 2);
        let d = decide(
            &snaps,
            &Policy {
                keep_weekly: 4,
                ..Default::default()
            },
            60 * day,
        )
        .unwrap();
        assert_eq!(kept(&d).len(), 4);
        let d = decide(
            &snaps,
            &Policy {
                keep_within_secs: Some(2 * day as u64),
                ..Default::default()
            },
            60 * day * 1_000_000_000,
        )
        .unwrap();
        assert_eq!(kept(&d), vec!["@s60", "@s59"]);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
