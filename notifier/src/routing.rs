//! Routing: preferences × kind × quiet hours × devices → an ordered channel plan with
//! fallbacks. Pure: the clock is a parameter.

use time::{Duration, OffsetDateTime, UtcOffset};

use crate::model::{Channel, Device, NotificationRequest, Preferences};

/// Who to reach on each channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Push { devices: Vec<Device> },
    Sms { phone: String },
    Email { address: String },
    InApp,
}

impl Target {
    pub fn channel(&self) -> Channel {
        match self {
            Target::Push { .. } => Channel::Push,
            Target::Sms { .. } => Channel::Sms,
            Target::Email { .. } => Channel::Email,
            Target::InApp => Channel::InApp,
        }
    }
}

/// One step of the plan; `fallback` runs when the step reaches nobody.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub target: Target,
    pub fallback: Option<Target>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Send now, steps in order; `skipped` lists channels with nobody to reach and why.
    Send {
        steps: Vec<Step>,
        skipped: Vec<(Channel, &'static str)>,
    },
    /// Quiet hours: try again at `until`.
    Defer { until: OffsetDateTime },
}

/// Plans a request for a customer who is not known to be online.
pub fn plan(
    request: &NotificationRequest,
    prefs: &Preferences,
    devices: &[Device],
    now: OffsetDateTime,
) -> Decision {
    plan_with_presence(request, prefs, devices, now, false)
}

/// Plans a request; `online` says the customer's app holds a live WebSocket right now.
pub fn plan_with_presence(
    request: &NotificationRequest,
    prefs: &Preferences,
    devices: &[Device],
    now: OffsetDateTime,
    online: bool,
) -> Decision {
    let rule = prefs.rule(request.kind);
    let phone = request.phone.clone().or_else(|| prefs.phone.clone());
    let email = request.email.clone().or_else(|| prefs.email.clone());
    let sms_target = phone.map(|phone| Target::Sms { phone });
    let mut steps: Vec<Step> = Vec::new();
    let mut skipped = Vec::new();
    let channels = if rule.channels.is_empty() {
        vec![Channel::InApp]
    } else {
        rule.channels.clone()
    };
    let leaves_platform = channels.iter().any(|c| *c != Channel::InApp);
    if leaves_platform
        && !request.kind.ignores_quiet_hours()
        && let Some(until) = quiet_until(prefs, now)
    {
        return Decision::Defer { until };
    }
    let planned = |steps: &[Step], channel: Channel| {
        steps.iter().any(|s| {
            s.target.channel() == channel
                || s.fallback.as_ref().is_some_and(|f| f.channel() == channel)
        })
    };
    for channel in channels {
        if planned(&steps, channel) {
            continue;
        }
        let fallback = if rule.fallback_sms && !planned(&steps, Channel::Sms) {
            sms_target.clone()
        } else {
            None
        };
        match channel {
            Channel::Push if online && rule.in_app_when_online => {
                if !planned(&steps, Channel::InApp) {
                    steps.push(Step {
                        target: Target::InApp,
                        fallback: None,
                    });
                }
            }
            Channel::Push if devices.is_empty() => match fallback {
                Some(sms) => steps.push(Step {
                    target: sms,
                    fallback: None,
                }),
                None => skipped.push((Channel::Push, "no_device")),
            },
            Channel::Push => steps.push(Step {
                target: Target::Push {
                    devices: devices.to_vec(),
                },
                fallback,
            }),
            Channel::Sms => match &sms_target {
                Some(sms) => steps.push(Step {
                    target: sms.clone(),
                    fallback: None,
                }),
                None => skipped.push((Channel::Sms, "no_phone")),
            },
            Channel::Email => match &email {
                Some(address) => steps.push(Step {
                    target: Target::Email {
                        address: address.clone(),
                    },
                    fallback: None,
                }),
                None => skipped.push((Channel::Email, "no_email")),
            },
            Channel::InApp => steps.push(Step {
                target: Target::InApp,
                fallback: None,
            }),
        }
    }
    // Later channels only run if a step listed before them is not the same channel.
    steps.dedup_by(|a, b| a.target.channel() == b.target.channel());
    Decision::Send { steps, skipped }
}

/// The end of the current quiet period, if `now` is inside one.
pub fn quiet_until(prefs: &Preferences, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let quiet = prefs.quiet_hours?;
    if quiet.start == quiet.end {
        return None;
    }
    let offset = UtcOffset::from_whole_seconds(i32::from(prefs.utc_offset_minutes) * 60).ok()?;
    let local = now.to_offset(offset);
    let minute = u16::from(local.hour()) * 60 + u16::from(local.minute());
    let inside = if quiet.start < quiet.end {
        minute >= quiet.start && minute < quiet.end
    } else {
        minute >= quiet.start || minute < quiet.end
    };
    if !inside {
        return None;
    }
    let midnight = local.replace_time(time::Time::MIDNIGHT);
    let mut end = midnight + Duration::minutes(i64::from(quiet.end));
    if end <= local {
        end += Duration::days(1);
    }
    Some(end.to_offset(UtcOffset::UTC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, KindRule, Language, Platform, QuietHours};
    use kernel::CustomerId;
    use time::macros::datetime;

    fn request(kind: Kind) -> NotificationRequest {
        NotificationRequest::new(
            "r",
            CustomerId::parse("c1").unwrap(),
            kind,
            serde_json::json!({}),
        )
    }
    fn device() -> Device {
        Device {
            platform: Platform::Android,
            token: "t".into(),
            language: Some(Language::En),
        }
    }
    fn prefs() -> Preferences {
        Preferences {
            phone: Some("+79990000001".into()),
            email: Some("a@b.c".into()),
            utc_offset_minutes: 180,
            quiet_hours: Some(QuietHours {
                start: 22 * 60,
                end: 8 * 60,
            }),
            ..Preferences::default()
        }
    }
    fn channels(d: &Decision) -> Vec<(Channel, Option<Channel>)> {
        match d {
            Decision::Send { steps, .. } => steps
                .iter()
                .map(|s| (s.target.channel(), s.fallback.as_ref().map(Target::channel)))
                .collect(),
            Decision::Defer { .. } => vec![],
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn plans_by_kind_devices_and_preferences() {
        let noon = datetime!(2026-12-04 09:00 UTC); // 12:00 local
        let p = prefs();
        let cases: Vec<(Kind, Vec<Device>, Vec<(Channel, Option<Channel>)>)> = vec![
            (Kind::Code, vec![device()], vec![(Channel::Sms, None)]),
            (
                Kind::Transaction,
                vec![device()],
                vec![(Channel::Push, Some(Channel::Sms))],
            ),
            (Kind::Transaction, vec![], vec![(Channel::Sms, None)]),
            (Kind::Offer, vec![device()], vec![(Channel::InApp, None)]),
            (Kind::Mail, vec![], vec![(Channel::Email, None)]),
        ];
        for (kind, devices, expected) in cases {
            assert_eq!(
                channels(&plan(&request(kind), &p, &devices, noon)),
                expected,
                "{kind:?}"
            );
        }
        let mut custom = prefs();
        custom.kinds.insert(
            Kind::Transaction,
            KindRule {
                channels: vec![Channel::Push, Channel::Email, Channel::Sms],
                fallback_sms: true,
                in_app_when_online: false,
            },
        );
        // Online with the rule: the in-app event replaces push and its SMS fallback.
        let mut online_rule = prefs();
        online_rule.kinds.insert(
            Kind::Transaction,
            KindRule {
                channels: vec![Channel::Push],
                fallback_sms: true,
                in_app_when_online: true,
            },
        );
        let online = |is_online| {
            channels(&plan_with_presence(
                &request(Kind::Transaction),
                &online_rule,
                &[device()],
                noon,
                is_online,
            ))
        };
        assert_eq!(online(true), vec![(Channel::InApp, None)]);
        assert_eq!(online(false), vec![(Channel::Push, Some(Channel::Sms))]);
        // SMS is already the push fallback: not planned twice.
        assert_eq!(
            channels(&plan(
                &request(Kind::Transaction),
                &custom,
                &[device()],
                noon
            )),
            vec![(Channel::Push, Some(Channel::Sms)), (Channel::Email, None)]
        );
        let mut nophone = prefs();
        nophone.phone = None;
        let d = plan(&request(Kind::Transaction), &nophone, &[], noon);
        assert!(
            matches!(d, Decision::Send { ref steps, ref skipped } if steps.is_empty() && skipped == &[(Channel::Push, "no_device")])
        );
        let mut with_phone = request(Kind::Code);
        with_phone.phone = Some("+79990000002".into());
        let d = plan(&with_phone, &Preferences::default(), &[], noon);
        assert!(
            matches!(d, Decision::Send { ref steps, .. } if steps[0].target == Target::Sms { phone: "+79990000002".into() })
        );
    }

    #[test]
    fn quiet_hours_defer_all_but_codes_and_alerts() {
        let p = prefs();
        let late = datetime!(2026-12-04 20:30 UTC); // 23:30 local
        assert_eq!(
            plan(&request(Kind::Transaction), &p, &[device()], late),
            Decision::Defer {
                until: datetime!(2026-12-05 05:00 UTC)
            }
        );
        let early = datetime!(2026-12-05 04:59 UTC); // 07:59 local
        assert!(matches!(
            plan(&request(Kind::Transaction), &p, &[device()], early),
            Decision::Defer { .. }
        ));
        let morning = datetime!(2026-12-05 05:00 UTC);
        assert!(matches!(
            plan(&request(Kind::Transaction), &p, &[device()], morning),
            Decision::Send { .. }
        ));
        for kind in [Kind::Code, Kind::SecurityAlert, Kind::Offer] {
            assert!(
                matches!(
                    plan(&request(kind), &p, &[device()], late),
                    Decision::Send { .. }
                ),
                "{kind:?}"
            );
        }
        let mut day = prefs();
        day.quiet_hours = Some(QuietHours {
            start: 13 * 60,
            end: 14 * 60,
        });
        assert_eq!(
            quiet_until(&day, datetime!(2026-12-04 10:10 UTC)),
            Some(datetime!(2026-12-04 11:00 UTC))
        );
        assert_eq!(quiet_until(&day, datetime!(2026-12-04 11:00 UTC)), None);
    }
}
