//! Who is looking: their language and their time zone. Every time the console shows is in the
//! viewer's zone (named in the header), in their language's date format, and every time typed
//! into a form is read in that same zone. The zone is the browser's (console.js keeps the `tz`
//! cookie equal to `Intl.DateTimeFormat().resolvedOptions().timeZone`); UTC until it is known.

use axum::http::{HeaderMap, header};
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use maud::{Markup, html};

use super::page::Lang;
use crate::domain::Millis;

pub struct Viewer {
    pub lang: Lang,
    zone_name: String,
    zone: TimeZone,
}

impl Viewer {
    pub fn of(headers: &HeaderMap) -> Viewer {
        let named = headers
            .get(header::COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| super::session::cookie_value(c, "tz"))
            .filter(|name| name.len() <= 64)
            .and_then(|name| Some((name.to_owned(), jiff::tz::db().get(name).ok()?)));
        let (zone_name, zone) = named.unwrap_or_else(|| ("UTC".to_owned(), TimeZone::UTC));
        Viewer {
            lang: Lang::of(headers),
            zone_name,
            zone,
        }
    }

    /// A viewer in `zone` (tests).
    #[cfg(test)]
    fn in_zone(lang: Lang, zone: &str) -> Viewer {
        Viewer {
            lang,
            zone_name: zone.to_owned(),
            zone: jiff::tz::db()
                .get(zone)
                .unwrap_or_else(|e| panic!("{zone}: {e}")),
        }
    }

    fn zoned(&self, ms: Millis) -> Option<jiff::Zoned> {
        Timestamp::from_millisecond(ms)
            .ok()
            .map(|t| t.to_zoned(self.zone.clone()))
    }

    /// `7 Dec 2026 09:30:00` / `2026年12月7日 09:30:00`, in the viewer's zone.
    pub fn when(&self, ms: Millis) -> String {
        let format = match self.lang {
            Lang::En => "%-d %b %Y %H:%M:%S",
            Lang::Zh => "%Y年%-m月%-d日 %H:%M:%S",
        };
        self.zoned(ms)
            .map_or_else(|| ms.to_string(), |z| z.strftime(format).to_string())
    }

    /// A time as the page shows it; the machine-readable instant and the UTC time ride along.
    pub fn time(&self, ms: Millis) -> Markup {
        let instant = Timestamp::from_millisecond(ms).ok();
        let iso = instant.map_or_else(String::new, |t| {
            t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        });
        let utc = instant.map_or_else(String::new, |t| {
            t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
        });
        html! { time datetime=(iso) title=(utc) { (self.when(ms)) } }
    }

    /// The zone as the header names it: `Asia/Shanghai (UTC+08:00)`.
    pub fn zone_label(&self) -> String {
        let seconds = self.zone.to_offset(Timestamp::now()).seconds();
        let sign = if seconds < 0 { '-' } else { '+' };
        let minutes = seconds.unsigned_abs() / 60;
        let offset = format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60);
        if self.zone_name == "UTC" {
            "UTC".to_owned()
        } else {
            format!("{} (UTC{offset})", self.zone_name)
        }
    }

    /// A datetime-local field's `2026-12-01T09:30` (seconds optional) in the viewer's zone, as
    /// Unix milliseconds; empty is None. A time a clock change repeats is its earlier reading,
    /// one it skips is read with the offset from before the change (jiff's "compatible" rule,
    /// as RFC 5545 and the browsers' Temporal do).
    pub fn parse_local(&self, field: &str, value: &str) -> Result<Option<Millis>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        let civil: DateTime = value
            .parse()
            .map_err(|e| format!("{field}: {value:?} is not a date and time ({e})"))?;
        let zoned = civil
            .to_zoned(self.zone.clone())
            .map_err(|e| format!("{field}: {e}"))?;
        Ok(Some(zoned.timestamp().as_millisecond()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_YEAR_UTC: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn times_show_in_the_viewers_zone_and_language() {
        let shanghai = Viewer::in_zone(Lang::Zh, "Asia/Shanghai");
        assert_eq!(shanghai.when(NEW_YEAR_UTC), "2026年1月1日 08:00:00");
        assert_eq!(
            shanghai.time(NEW_YEAR_UTC).into_string(),
            "<time datetime=\"2026-01-01T00:00:00Z\" title=\"2026-01-01 00:00:00 UTC\">2026年1月1日 08:00:00</time>"
        );
        let berlin = Viewer::in_zone(Lang::En, "Europe/Berlin");
        assert_eq!(berlin.when(NEW_YEAR_UTC), "1 Jan 2026 01:00:00");
        // Summer time: the offset of the time shown, not of today.
        assert_eq!(
            berlin.when(NEW_YEAR_UTC + 181 * 86_400_000),
            "1 Jul 2026 02:00:00"
        );
    }

    #[test]
    fn a_typed_time_is_read_in_the_same_zone() {
        let shanghai = Viewer::in_zone(Lang::En, "Asia/Shanghai");
        assert_eq!(
            shanghai.parse_local("expires", "2026-01-01T08:00"),
            Ok(Some(NEW_YEAR_UTC))
        );
        assert_eq!(shanghai.parse_local("expires", " "), Ok(None));
        let bad = shanghai.parse_local("expires", "tomorrow");
        assert!(
            bad.as_ref().is_err_and(|e| e.starts_with("expires: ")),
            "{bad:?}"
        );
        // 02:30 on 29 March 2026 does not exist in Berlin (clocks jump 02:00 → 03:00).
        let berlin = Viewer::in_zone(Lang::En, "Europe/Berlin");
        assert!(berlin.parse_local("since", "2026-03-29T02:30").is_ok());
    }

    #[test]
    fn an_unknown_zone_is_utc() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "tz=Mars/Olympus".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        let viewer = Viewer::of(&headers);
        assert_eq!(viewer.zone_label(), "UTC");
        assert_eq!(viewer.when(NEW_YEAR_UTC), "1 Jan 2026 00:00:00");
    }
}
